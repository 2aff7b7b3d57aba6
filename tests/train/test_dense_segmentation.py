"""A dense (segmentation) run end to end on a small `digit_scenes`: bitwise resume, the
`segmentation` evaluator's metrics and PNG, and one-line errors for bad input."""

from __future__ import annotations

import contextlib
import io
import os
import signal

import pytest

from vitx import config as config_lib
from vitx import experiment
from vitx.train import preemption
from vitx.utils import checkpoints

pytestmark = pytest.mark.usefixtures("compile_cache")
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PP = "decode(channels=1)|resize(16)|resize_mask(16)|value_range(-1,1)|keep('image', 'mask')"
STOP = 2


def tiny(data_dir: str, *extra: str):
    c = config_lib.load_config(os.path.join(REPO, "configs", "segmentation_digits.py"))
    config_lib.apply_overrides(c, [
        f"data_dir={data_dir}", "model.encoder_cfg.variant=mu/4", "model.encoder_cfg.width=16",
        "model.encoder_cfg.depth=1", "model.encoder_cfg.mlp_dim=32",
        "model.encoder_cfg.num_heads=2", f"input.pp={PP}", "input.batch_size=4",
        "input.shuffle_buffer=48", f"evals.test.pp={PP}", "evals.test.batch_size=16",
        "total_steps=4", "schedule.warmup_steps=1", "log_every_steps=1", "eval_every_steps=0",
        "checkpoint.every_steps=0", "checkpoint.async_save=False", *extra])
    return c


def _run(config, workdir: str) -> dict:
    with contextlib.redirect_stdout(io.StringIO()):
        return experiment.train(config, workdir)


@pytest.fixture(scope="module")
def runs(scenes_dir, tmp_path_factory):
    base = tmp_path_factory.mktemp("seg")
    a, b = str(base / "a"), str(base / "b")
    ra = _run(tiny(scenes_dir), a)

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
        assert _run(tiny(scenes_dir), b) == {}
    finally:
        preemption.StopFlag = original
    rb = _run(tiny(scenes_dir), b)
    return a, b, ra, rb


def test_resumed_dense_run_is_bitwise_identical(runs, bitwise_equal):
    a, b, ra, rb = runs
    assert ra["step"] == rb["step"] == 4
    for k in ("test/mIoU", "test/pixel_accuracy", "test/loss"):
        assert ra[k] == rb[k]
    pa, _ = checkpoints.load_params(a)
    pb, _ = checkpoints.load_params(b)
    bitwise_equal(pa, pb)
    assert set(pa) == {"encoder", "seg"} and pa["seg"]["proj"]["kernel"].shape == (16, 4 * 4 * 11)


def test_segmentation_eval_metrics_and_png(runs):
    a, _, ra, _ = runs
    assert 0.0 <= ra["test/mIoU"] <= 1.0 and 0.0 < ra["test/pixel_accuracy"] <= 1.0
    with open(os.path.join(a, "test_masks.png"), "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_dense_task_on_a_dataset_without_masks(data_dir, tmp_path):
    pp = "decode(channels=1)|resize(16)|value_range(-1,1)|keep('image', 'label')"
    c = tiny(data_dir, "input.dataset=digits", f"input.pp={pp}", "evals={}")
    with pytest.raises(config_lib.ConfigError) as e:
        _run(c, str(tmp_path / "w"))
    msg = str(e.value)
    assert "\n" not in msg and "task.labels='mask'" in msg and "input.pp" in msg
