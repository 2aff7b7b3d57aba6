"""End-to-end tests of the train loop (`vitx.experiment.train` and `vitx train`).

A tiny ViT (width 32, depth 2, 16x16 inputs) trains for 20 steps on the digits scans. Runs are
shared through module-scoped fixtures, and a persistent XLA compilation cache (in a temporary
dir, module-scoped) lets repeated `train()` calls and the `vitx train` subprocesses skip
recompiling identical programs.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import queue
import shutil
import signal
import subprocess
import threading
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from vitx import cli, experiment
from vitx import config as config_lib
from vitx.train import preemption
from vitx.utils import checkpoints

pytestmark = pytest.mark.usefixtures("compile_cache")
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG_FILE = os.path.join(REPO, "configs", "vit_digits.py")
PP_16 = "decode(channels=1)|resize(16)|value_range(-1,1)|onehot(10)"
# The tiny, fast variant of configs/vit_digits.py (as `--config.` override strings).
TINY = [
    "model.variant=pico/4", "model.width=32", "model.depth=2", "model.mlp_dim=64",
    "model.num_heads=2", f"input.pp={PP_16}", "input.batch_size=32",
    f"evals.test.pp={PP_16}", "evals.test.batch_size=120",
    "total_steps=20", "schedule.warmup_steps=2", "lr=0.003", "log_every_steps=1",
    "eval_every_steps=0", "checkpoint.every_steps=5", "checkpoint.keep=2",
    "checkpoint.async_save=True",
]
STOP_STEP = 12  # where run B is interrupted (not a multiple of checkpoint.every_steps)


def tiny_config(data_dir: str, *extra: str):
    config = config_lib.load_config(CONFIG_FILE)
    config_lib.apply_overrides(config, [*TINY, f"data_dir={data_dir}", *extra])
    return config


def run_train(config, workdir: str) -> tuple[dict, str]:
    """`trainer.train` with its stdout captured: (results, stdout)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        results = experiment.train(config, workdir)
    return results, out.getvalue()


def stop_flag_after(n_checks: int) -> type:
    """A `StopFlag` whose `signum` reads as SIGTERM from the `n_checks`-th check on (the loop
    checks it once after every step), as if the signal had arrived during step `n_checks`."""

    class StopAfter(preemption.StopFlag):
        def __init__(self) -> None:
            self.checks = 0
            super().__init__()

        @property
        def signum(self):
            self.checks += 1
            return signal.SIGTERM if self.checks >= n_checks else self._signum

        @signum.setter
        def signum(self, value) -> None:
            self._signum = value

    return StopAfter


def read_metrics(workdir: str) -> list[dict]:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def train_losses(workdir: str) -> list[tuple[int, float]]:
    return [(m["step"], m["loss"]) for m in read_metrics(workdir) if "loss" in m]


def restore_state(workdir: str, step: int):
    """The whole train state (params, opt_state, step, rng) of a checkpoint, on host."""
    path = os.path.join(workdir, "checkpoints", str(step), "state")
    with ocp.StandardCheckpointer() as ckptr:
        return jax.device_get(ckptr.restore(path))


def checkpoint_steps(workdir: str) -> list[int]:
    return sorted(int(d) for d in os.listdir(os.path.join(workdir, "checkpoints"))
                  if d.isdigit())


def snapshot(workdir: str) -> dict[str, str]:
    """{relative path: sha256} of every file under `workdir`."""
    out = {}
    for root, _, files in os.walk(workdir):
        for name in files:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, workdir)] = hashlib.sha256(f.read()).hexdigest()
    return out


@pytest.fixture(scope="module")
def run_a(data_dir, tmp_path_factory):
    """Run A: 20 uninterrupted steps. Returns (workdir, results, stdout)."""
    workdir = str(tmp_path_factory.mktemp("run_a"))
    results, stdout = run_train(tiny_config(data_dir), workdir)
    return workdir, results, stdout


@pytest.fixture(scope="module")
def run_b(data_dir, tmp_path_factory):
    """Run B: stopped (as if by SIGTERM) after step STOP_STEP, then resumed to step 20.

    Returns (workdir, (results, stdout) of the stopped run, (results, stdout) of the resumed run,
    (checkpoint steps on disk, state saved at STOP_STEP) after the stop).
    """
    workdir = str(tmp_path_factory.mktemp("run_b"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(preemption, "StopFlag", stop_flag_after(STOP_STEP))
        first = run_train(tiny_config(data_dir), workdir)
    after_stop = checkpoint_steps(workdir), restore_state(workdir, STOP_STEP)
    second = run_train(tiny_config(data_dir), workdir)
    return workdir, first, second, after_stop


# ------------------------------------------------------------------------------------------------
# 1. A short run learns and writes its outputs.


def test_short_run_learns_and_writes_outputs(run_a, bitwise_equal):
    workdir, results, stdout = run_a
    losses = train_losses(workdir)
    assert [s for s, _ in losses] == list(range(1, 21))  # log_every_steps=1
    values = [v for _, v in losses]
    assert all(np.isfinite(values))
    assert np.mean(values[-5:]) < np.mean(values[:5]), values

    with open(os.path.join(workdir, "config.json")) as f:
        saved_config = json.load(f)
    assert saved_config["total_steps"] == 20
    assert saved_config["model"]["width"] == 32
    assert saved_config["input"]["pp"] == PP_16

    with open(os.path.join(workdir, "results.json")) as f:
        on_disk = json.load(f)
    assert on_disk == pytest.approx(results)
    assert on_disk["step"] == 20 and on_disk["total_steps"] == 20
    assert 0.0 <= on_disk["test/accuracy"] <= 1.0
    assert on_disk["test/loss"] < np.log(10)  # better than chance on the test split
    # The final eval is also logged to metrics.jsonl.
    assert any(m["step"] == 20 and "test/accuracy" in m for m in read_metrics(workdir))
    assert "[step 20]" in stdout and "vitx: done." in stdout

    # Periodic saves at 5, 10, 15 and the final one at 20; keep=2.
    assert checkpoint_steps(workdir) == [15, 20]
    params, meta = checkpoints.load_params(workdir)
    assert meta["step"] == 20 and meta["examples_seen"] == 20 * 32
    assert meta["config"]["model"]["width"] == 32
    state = restore_state(workdir, 20)
    assert int(state["step"]) == 20
    bitwise_equal(params, state["params"])


# ------------------------------------------------------------------------------------------------
# 2. Stop + resume continues bit-for-bit.


def test_stopped_run_saves_and_says_how_to_resume(run_b):
    _, (results, stdout), _, (steps_after_stop, state) = run_b
    assert results == {}
    assert f"vitx: stopped at step {STOP_STEP}/20" in stdout
    assert "run the same command again to resume" in stdout
    assert steps_after_stop == [10, STOP_STEP]  # periodic 5, 10 (keep=2), then the stop save
    assert int(state["step"]) == STOP_STEP


def test_resume_is_bitwise_identical_to_uninterrupted_run(run_a, run_b, bitwise_equal):
    workdir_a, results_a, _ = run_a
    workdir_b, _, (results_b, stdout_b), _ = run_b

    # The second run of B resumed at STOP_STEP and did steps STOP_STEP+1..20 only.
    assert f"vitx: resumed from {workdir_b}/checkpoints/{STOP_STEP}" in stdout_b
    assert f"[step {STOP_STEP + 1}]" in stdout_b and f"[step {STOP_STEP}]" not in stdout_b
    losses_b = train_losses(workdir_b)
    assert [s for s, _ in losses_b] == list(range(1, 21))  # no step repeated or skipped
    assert losses_b == train_losses(workdir_a)  # same batches, same updates, every step
    assert results_b["step"] == 20
    assert results_b["test/accuracy"] == results_a["test/accuracy"]
    assert results_b["test/loss"] == results_a["test/loss"]

    params_a, _ = checkpoints.load_params(workdir_a)
    params_b, _ = checkpoints.load_params(workdir_b)
    bitwise_equal(params_a, params_b)
    # ...and the optimizer state, step and RNG too.
    bitwise_equal(restore_state(workdir_a, 20), restore_state(workdir_b, 20))


def test_stop_on_a_periodic_checkpoint_step(data_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(preemption, "StopFlag", stop_flag_after(5))  # checkpoint.every_steps=5
    results, stdout = run_train(tiny_config(data_dir), str(tmp_path))
    assert results == {}
    assert "vitx: stopped at step 5/20" in stdout
    assert checkpoint_steps(str(tmp_path)) == [5]


# ------------------------------------------------------------------------------------------------
# 3. A real SIGTERM to `vitx train`, then the same command again.


class _Proc:
    """A subprocess whose merged stdout/stderr lines are collected by a thread."""

    def __init__(self, cmd: list[str], env: dict) -> None:
        self.proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, bufsize=1)
        self.lines: queue.Queue = queue.Queue()
        self.seen: list[str] = []
        self._pump = threading.Thread(target=self._read, daemon=True)
        self._pump.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.seen.append(line)
            self.lines.put(line)
        self.lines.put(None)

    def wait_for_line(self, prefix: str, timeout: float) -> str | None:
        """The first line starting with `prefix`; None at exit or after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(deadline - time.monotonic(), 0.01))
            except queue.Empty:
                return None
            if line is None or line.startswith(prefix):
                return line

    def finish(self, timeout: float) -> tuple[int, str]:
        """Wait for exit (killing it after `timeout` s): (exit status, all its output)."""
        try:
            self.proc.wait(timeout=timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            self._pump.join(timeout=30)
        return self.proc.returncode, "".join(self.seen)


def test_sigterm_saves_and_the_same_command_resumes(data_dir, tmp_path, compile_cache,
                                                     warm_vitx):
    total = 400
    workdir = str(tmp_path / "wd")
    cmd = [os.path.join(warm_vitx, "vitx"), "train", "--config", CONFIG_FILE,
           "--workdir", workdir,
           *(f"--config.{o}" for o in TINY),
           f"--config.data_dir={data_dir}", f"--config.total_steps={total}",
           "--config.log_every_steps=50", "--config.checkpoint.every_steps=0"]
    env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=compile_cache,
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", TF_CPP_MIN_LOG_LEVEL="2",
               PYTHONUNBUFFERED="1")

    proc = _Proc(cmd, env)
    try:
        first_step = proc.wait_for_line("[step", timeout=180)
        assert first_step is not None, "".join(proc.seen)[-4000:]
        proc.proc.send_signal(signal.SIGTERM)
    finally:
        rc, out1 = proc.finish(timeout=120)
    assert rc == 0, f"exit status {rc}; output:\n{out1[-4000:]}"
    assert f"got signal {int(signal.SIGTERM)}" in out1
    assert "run the same command again to resume" in out1, out1[-4000:]
    steps = checkpoint_steps(workdir)
    assert len(steps) == 1 and 1 <= steps[0] < total, (steps, out1[-4000:])
    stopped = steps[0]
    assert f"vitx: stopped at step {stopped}/{total}" in out1
    assert not os.path.exists(os.path.join(workdir, "results.json"))
    n_logged = len(read_metrics(workdir))

    rc, out2 = _Proc(cmd, env).finish(timeout=240)
    assert rc == 0, f"exit status {rc}; output:\n{out2[-4000:]}"
    assert f"vitx: resumed from {workdir}/checkpoints/{stopped}" in out2, out2[-4000:]
    logged = [m["step"] for m in read_metrics(workdir)[n_logged:] if "loss" in m]
    assert logged[0] == stopped + 1 and logged[-1] == total, logged
    with open(os.path.join(workdir, "results.json")) as f:
        assert json.load(f)["step"] == total
    assert checkpoint_steps(workdir)[-1] == total


# ------------------------------------------------------------------------------------------------
# 4. A failed start leaves a finished run's files alone.


BAD_STARTS = {
    # name: (overrides, where train() rejects it)
    "unknown_model": ["model_name=vitt"],  # models.get_model_module
    "patch_does_not_divide_image": ["model.variant=pico/5"],  # vit.check_input
    "no_length": ["total_steps=0"],  # total_steps_of: neither total_steps nor total_epochs
}


@pytest.fixture
def finished_copy(run_a, tmp_path) -> str:
    workdir = str(tmp_path / "finished")
    shutil.copytree(run_a[0], workdir)
    return workdir


@pytest.mark.parametrize("bad", sorted(BAD_STARTS))
def test_failed_start_keeps_checkpoints_and_results(data_dir, finished_copy, bad):
    before = snapshot(finished_copy)
    with pytest.raises(config_lib.ConfigError):
        run_train(tiny_config(data_dir, *BAD_STARTS[bad]), finished_copy)
    after = snapshot(finished_copy)
    assert after == before  # nothing new (e.g. no new checkpoint, no event file)


@pytest.mark.parametrize("bad", sorted(BAD_STARTS))
def test_failed_start_keeps_config_json(data_dir, finished_copy, bad):
    path = os.path.join(finished_copy, "config.json")
    with open(path, "rb") as f:
        before = f.read()
    with pytest.raises(config_lib.ConfigError):
        run_train(tiny_config(data_dir, *BAD_STARTS[bad]), finished_copy)
    with open(path, "rb") as f:
        assert f.read() == before


def test_cli_bad_override_exits_2_and_keeps_files(data_dir, finished_copy, capsys):
    before = snapshot(finished_copy)
    rc = cli.main(["train", "--config", CONFIG_FILE, "--workdir", finished_copy,
                   f"--config.data_dir={data_dir}", "--config.model.widht=64"])
    assert rc == 2
    err = capsys.readouterr().err
    assert err.startswith("vitx: error: unknown config key 'model.widht'")
    assert "did you mean 'width'" in err
    assert snapshot(finished_copy) == before


def test_model_init_loads_frozen_backbone_then_resume_wins(run_a, data_dir, tmp_path):
    """model_init (a vitx workdir) + head-only fine-tune: the frozen backbone stays bit-identical
    to the pretrained params; a second start resumes from the workdir instead of re-loading."""
    workdir = str(tmp_path / "ft")
    ft = ["total_steps=3", "checkpoint.every_steps=0", f"model_init={run_a[0]}",
          "model_load.dont_load=['head/.*']", "lr_mults=[('^head/', 1.0), ('.*', None)]"]
    results, stdout = run_train(tiny_config(data_dir, *ft), workdir)
    assert f"initialised params from {run_a[0]}" in stdout
    assert results["step"] == 3  # a fine-tune starts at step 0
    pre, _ = checkpoints.load_params(run_a[0])
    new, _ = checkpoints.load_params(workdir)
    flat_pre = dict(jax.tree_util.tree_leaves_with_path(pre))
    for path, leaf in jax.tree_util.tree_leaves_with_path(new):
        if "head" in jax.tree_util.keystr(path):
            continue
        assert np.asarray(leaf).tobytes() == np.asarray(flat_pre[path]).tobytes(), path
    assert not np.array_equal(new["head"]["kernel"], pre["head"]["kernel"])
    _, stdout2 = run_train(tiny_config(data_dir, *ft[:-1], "total_steps=4", ft[-1]), workdir)
    assert "resumed from" in stdout2 and "initialised params from" not in stdout2


def test_flexivit_compiles_one_program_per_patch_size(data_dir, tmp_path):
    from vitx.train.schedules import PatchSizeSchedule

    workdir = str(tmp_path / "flexi")
    config = tiny_config(data_dir, "total_steps=6", "checkpoint.every_steps=0")
    config.model_name = "flexivit"
    config.model.base_patch_size = (8, 8)
    config.model.posemb_grid = (4, 4)
    config.flexi = dict(patch_sizes=(2, 4, 8), schedule=dict(kind="uniform"))
    config.evals.test.type = "per_patch_size"
    config.evals.test.patch_sizes = (4, 8)
    results, _ = run_train(config, workdir)
    seen = set(PatchSizeSchedule.from_config(config.flexi, seed=0).sizes_for(range(6)).tolist())
    assert [m["patch_size"] for m in read_metrics(workdir) if "patch_size" in m] == list(
        PatchSizeSchedule.from_config(config.flexi, seed=0).sizes_for(range(6)))
    assert results["compiled_programs"] == len(seen)
    assert {"test/accuracy@4", "test/accuracy@8"} <= set(results)
    with open(os.path.join(workdir, "test_accuracy_vs_patch_size.png"), "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_flexivit_patch_sizes_not_dividing_image_are_named(data_dir, tmp_path):
    config = tiny_config(data_dir)
    config.model_name = "flexivit"
    config.model.base_patch_size = (8, 8)
    config.flexi = dict(patch_sizes=(2, 4, 8), schedule=dict(kind="uniform"))
    config.evals.test.type = "per_patch_size"
    config.evals.test.patch_sizes = (4, 5, 8)
    with pytest.raises(config_lib.ConfigError, match=r"evals.test.patch_sizes: 5 do"):
        experiment.train(config, str(tmp_path / "w"))
    config.flexi.patch_sizes = (3, 4, 6)
    with pytest.raises(config_lib.ConfigError, match=r"flexi.patch_sizes: 3, 6 do"):
        experiment.train(config, str(tmp_path / "w"))
    assert not os.path.exists(tmp_path / "w" / "config.json")


def test_export_vit_jax_npz_then_eval_gives_the_same_metrics(run_a, data_dir, tmp_path):
    workdir, results, _ = run_a
    out = str(tmp_path / "a.npz")
    assert cli.main(["export", "--checkpoint", workdir, "--output", out]) == 0
    with np.load(out) as z:
        assert "Transformer/posembed_input/pos_embedding" in z  # the vit_jax layout
    from_npz = experiment.evaluate(tiny_config(data_dir), out)
    from_ckpt = experiment.evaluate(tiny_config(data_dir), workdir)
    assert from_npz["test/accuracy"] == from_ckpt["test/accuracy"] == results["test/accuracy"]
    np.testing.assert_allclose(from_npz["test/loss"], results["test/loss"], rtol=1e-6)
