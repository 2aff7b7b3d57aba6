"""Multi-task training end to end (PolyViT on digits, moving_digits and dtmf_keys): a resumed
run replays the task schedule and every task's data bitwise; `vitx export --task` prunes."""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal

import jax
import numpy as np
import pytest

from vitx import cli, experiment, models
from vitx import config as config_lib
from vitx.train import preemption
from vitx.utils import checkpoints, npz

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STOP = 7


def tiny(data_dir: str, schedule: str = "weighted"):
    c = config_lib.load_config(os.path.join(REPO, "configs", f"polyvit_digits.py:steps=4,"
                                                           f"schedule={schedule}"))
    config_lib.apply_overrides(c, [f"data_dir={data_dir}", "model.width=32", "model.depth=2",
                                   "model.mlp_dim=64", "model.num_heads=2", "log_every_steps=1",
                                   "schedule.warmup_steps=1", "checkpoint.every_steps=5",
                                   "checkpoint.async_save=False"])
    for t in c.multitask.tasks:
        t["input"]["batch_size"] = 16
    return c


@pytest.fixture(scope="module")
def data_dir(multimodal_data_dir) -> str:
    return multimodal_data_dir  # built once per session (conftest)


def _run(config, workdir: str) -> dict:
    with contextlib.redirect_stdout(io.StringIO()):
        return experiment.train(config, workdir)


@pytest.fixture(scope="module")
def runs(data_dir, tmp_path_factory):
    base = tmp_path_factory.mktemp("mt")
    a, b = str(base / "a"), str(base / "b")
    ra = _run(tiny(data_dir), a)

    class StopAt(preemption.StopFlag):
        checks = 0

        @property
        def signum(self):
            StopAt.checks += 1
            return signal.SIGTERM if StopAt.checks >= STOP else None

        @signum.setter
        def signum(self, value) -> None:
            pass

    original = preemption.StopFlag
    preemption.StopFlag = StopAt
    try:
        assert _run(tiny(data_dir), b) == {}
    finally:
        preemption.StopFlag = original
    rb = _run(tiny(data_dir), b)
    return a, b, ra, rb


def test_resumed_multitask_run_is_bitwise_identical(runs, bitwise_equal):
    a, b, ra, rb = runs
    assert ra["step"] == rb["step"] == 16  # 4 tasks x U_j = 4
    assert checkpoints.resolve(b).step == 16
    pa, _ = checkpoints.load_params(a)
    pb, _ = checkpoints.load_params(b)
    bitwise_equal(pa, pb)
    for t in ("digits", "video_digit", "video_direction", "dtmf"):
        assert ra[f"{t}/accuracy"] == rb[f"{t}/accuracy"]


def test_every_task_trained_its_steps_and_progress_names_tasks(runs):
    a = runs[0]
    with open(os.path.join(a, "param_report.json")) as f:
        report = json.load(f)
    assert report["sum_single_task"] > report["total"] > report["shared"] > 0
    with open(os.path.join(a, "metrics.jsonl")) as f:
        steps = [json.loads(line)["step"] for line in f if '"loss"' in line]
    assert steps == list(range(1, 17))


def test_export_task_prunes_and_keeps_that_tasks_outputs(runs, tmp_path, data_dir):
    a = runs[0]
    out = str(tmp_path / "dtmf.npz")
    with contextlib.redirect_stdout(io.StringIO()):
        assert cli.main(["export", "--checkpoint", a, "--output", out, "--layout", "vitx",
                         "--task", "dtmf"]) == 0
    with open(out + ".model.json") as f:
        pruned_cfg = json.load(f)
    assert list(pruned_cfg["model"]["heads"]) == ["dtmf"]
    pruned = npz.load_npz(out)
    assert not any(k.startswith(("tokenizer_video", "tokenizer_image", "head_digits"))
                   for k in pruned)
    full, _ = checkpoints.load_params(a)
    run = checkpoints.read_run_config(a)
    x = np.random.default_rng(0).normal(size=(2, 64, 32, 1)).astype(np.float32)
    full_model = models.build_model("polyvit", None, **run["model"])
    small_model = models.build_model("polyvit", None, **pruned_cfg["model"])
    want = full_model.apply({"params": full}, x, modality="audio", task="dtmf")[0]
    got = small_model.apply({"params": pruned}, x, modality="audio", task="dtmf")[0]
    assert np.asarray(want).tobytes() == np.asarray(got).tobytes()
    assert sum(v.size for v in jax.tree.leaves(pruned)) < sum(
        v.size for v in jax.tree.leaves(full))
