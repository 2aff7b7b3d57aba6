"""FlexiViT's schedule over (patch size, stride) pairs (`flexi.patch_strides`, claim 3): one
compiled program per pair, the per-patch-size evaluator reporting each pair; bad strides named."""

from __future__ import annotations

import contextlib
import io
import json
import os

import pytest

from vitx import config as config_lib
from vitx import experiment
from vitx.train.schedules import PatchSizeSchedule
from vitx.utils.patch_sizes import check_patch_strides

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PP_16 = "decode(channels=1)|resize(16)|value_range(-1,1)|onehot(10)"
TINY = [
    "model.variant=pico/4", "model.width=16", "model.depth=1", "model.mlp_dim=32",
    "model.num_heads=2", f"input.pp={PP_16}", "input.batch_size=8", f"evals.test.pp={PP_16}",
    "evals.test.batch_size=120", "total_steps=4", "schedule.warmup_steps=1", "log_every_steps=1",
    "eval_every_steps=0", "checkpoint.every_steps=0",
]


def _config(data_dir: str):
    config = config_lib.load_config(os.path.join(REPO, "configs", "vit_digits.py"))
    config_lib.apply_overrides(config, [*TINY, f"data_dir={data_dir}"])
    config.model_name = "flexivit"
    config.model.base_patch_size = (8, 8)
    config.model.posemb_grid = (4, 4)
    config.flexi = dict(patch_sizes=(4, 8), patch_strides=(2, None),
                        schedule=dict(kind="uniform"))
    config.evals.test.type = "per_patch_size"
    config.evals.test.patch_sizes = (4, 8)
    config.evals.test.patch_strides = (2, None)
    return config


def test_flexivit_trains_on_patch_stride_pairs(data_dir, tmp_path):
    config = _config(data_dir)
    workdir = str(tmp_path / "w")
    with contextlib.redirect_stdout(io.StringIO()):
        results = experiment.train(config, workdir)
    sizes = PatchSizeSchedule.from_config(config.flexi, seed=0).sizes_for(range(4)).tolist()
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        logged = [json.loads(line) for line in f]
    assert [m["patch_size"] for m in logged if "patch_size" in m] == sizes
    assert results["compiled_programs"] == len(set(sizes))  # one per (size, stride) pair
    # 4 every 2 -> 7x7 tokens (named "4s2"), 8 not overlapping -> 2x2 (named "8", plotted)
    assert {"test/accuracy@4s2", "test/accuracy@8", "test/loss@4s2"} <= set(results)
    assert os.path.exists(os.path.join(workdir, "test_accuracy_vs_patch_size.png"))
    assert 0.0 <= results["test/accuracy@4s2"] <= 1.0


@pytest.mark.parametrize("strides,image,match", [
    ((3, None), 16, r"flexi\.patch_strides: .*\[\(4, 3\)\] have a stride that does not divide"),
    ((2,), 16, r"flexi\.patch_strides=\(2,\): 1 strides for 2 patch sizes"),
    ((4, 4), 18, r"flexi\.patch_strides: .*\(4, 4\), \(8, 4\)\] do not tile the image 18x18"),
])
def test_bad_patch_strides_are_one_line_naming_the_key(strides, image, match):
    with pytest.raises(ValueError, match=match) as e:
        check_patch_strides((4, 8), strides, image)
    assert "\n" not in str(e.value)
    assert check_patch_strides((4, 8), (2, None), 16) == (2, None)
