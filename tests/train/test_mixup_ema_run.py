"""End to end with Mixup/CutMix and the EMA on: a stopped and resumed run equals an
uninterrupted one bitwise (EMA included); evaluators report `test_ema/...`; `vitx eval --ema`
and `vitx export --ema` read the EMA weights.

A tiny ViT (width 16, depth 1, 16x16 inputs) trains for 6 steps; the runs share compiled
programs through the module's persistent compilation cache.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from vitx import cli, experiment
from vitx import config as config_lib
from vitx.train import preemption

pytestmark = pytest.mark.usefixtures("compile_cache")
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PP = "decode(channels=1)|resize(16)|value_range(-1,1)"
TINY = [
    "model.variant=pico/4", "model.width=16", "model.depth=1", "model.mlp_dim=32",
    "model.num_heads=2", f"input.pp={PP}|onehot(10, label_smoothing=0.1)",
    "input.batch_size=16", f"evals.test.pp={PP}|onehot(10)", "evals.test.batch_size=120",
    "total_steps=6", "schedule.warmup_steps=1", "lr=0.003", "log_every_steps=1",
    "eval_every_steps=0", "checkpoint.every_steps=3", "checkpoint.keep=3",
]
STOP = 4


def config(data_dir: str):
    c = config_lib.load_config(os.path.join(REPO, "configs", "vit_digits.py"))
    config_lib.apply_overrides(c, [*TINY, f"data_dir={data_dir}"])
    c.mixup = dict(mixup_alpha=0.8, cutmix_alpha=1.0, prob=1.0, switch_prob=0.5, mode="elem")
    c.ema = dict(decay=0.5, warmup_steps=1)
    return c


def train(c, workdir: str) -> tuple[dict, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        results = experiment.train(c, workdir)
    return results, out.getvalue()


def restore_state(workdir: str, step: int) -> dict:
    with ocp.StandardCheckpointer() as ckptr:
        return jax.device_get(ckptr.restore(os.path.join(workdir, "checkpoints", str(step),
                                                         "state")))


class StopAfter(preemption.StopFlag):
    """Reads as SIGTERM from the STOP-th check on (the loop checks once after every step)."""

    def __init__(self) -> None:
        self.checks = 0
        super().__init__()

    @property
    def signum(self):
        self.checks += 1
        return signal.SIGTERM if self.checks >= STOP else self._signum

    @signum.setter
    def signum(self, value) -> None:
        self._signum = value


@pytest.fixture(scope="module")
def runs(data_dir, tmp_path_factory):
    """(workdir A, results A), (workdir B, stdout of B's resumed run, results B)."""
    a = str(tmp_path_factory.mktemp("mix_ema_a"))
    results_a, _ = train(config(data_dir), a)
    b = str(tmp_path_factory.mktemp("mix_ema_b"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(preemption, "StopFlag", StopAfter)
        train(config(data_dir), b)
    results_b, stdout_b = train(config(data_dir), b)
    return (a, results_a), (b, stdout_b, results_b)


def test_resume_with_mixup_and_ema_is_bitwise(runs, bitwise_equal):
    (a, results_a), (b, stdout_b, results_b) = runs
    assert f"vitx: resumed from {b}/checkpoints/{STOP}" in stdout_b
    state_a, state_b = restore_state(a, 6), restore_state(b, 6)
    assert set(state_a) >= {"params", "opt_state", "ema"}
    bitwise_equal(state_a, state_b)  # params, optimizer state, EMA, step, rng
    assert results_a["test_ema/loss"] == results_b["test_ema/loss"]
    # The EMA (decay 0.5) lags the weights: other values, other metrics.
    kernel = ("head", "kernel")
    assert not np.array_equal(state_a["ema"]["params"][kernel[0]][kernel[1]],
                              state_a["params"][kernel[0]][kernel[1]])
    assert results_a["test_ema/loss"] != results_a["test/loss"]
    assert 0 <= results_a["test_ema/accuracy"] <= 1


def test_eval_and_export_read_the_ema(runs, data_dir, tmp_path, capsys):
    (a, results_a), _ = runs
    c = config(data_dir)
    metrics = experiment.evaluate(c, a, ema=True)
    np.testing.assert_allclose(metrics["test_ema/loss"], results_a["test_ema/loss"], rtol=1e-6)
    assert metrics["test_ema/accuracy"] == results_a["test_ema/accuracy"]
    assert "test/loss" not in metrics

    out = str(tmp_path / "ema.npz")
    assert cli.main(["export", "--checkpoint", a, "--output", out, "--layout", "vitx",
                     "--ema"]) == 0
    ema_params = restore_state(a, 6)["ema"]["params"]
    with np.load(out) as z:
        np.testing.assert_array_equal(z["head/kernel"], ema_params["head"]["kernel"])
    capsys.readouterr()
    assert cli.main(["eval", "--config", os.path.join(REPO, "configs", "vit_digits.py"),
                     "--checkpoint", out, "--ema", f"--config.data_dir={data_dir}"]) == 2
    assert "holds no EMA weights; pass a vitx workdir or drop --ema" in capsys.readouterr().err
    with open(os.path.join(a, "results.json")) as f:
        assert "test_ema/accuracy" in json.load(f)
