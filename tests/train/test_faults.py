"""Faults, broken on purpose: NaN/inf during training, damaged checkpoints, a changed config on
resume, an unwritable workdir or data_dir, a full disk.

A tiny ViT (width 32, depth 2, 16x16 inputs; the TINY overrides of test_trainer.py) trains for a
few steps on the digits scans. NaN is injected through the data: the test pp op
`test_nan_one_in(n)` turns an example's image into NaN with probability 1/n (a pure function of
the example's seed), so the steps whose batch holds one are known in advance (`nan_steps`).
"""

from __future__ import annotations

import contextlib
import errno
import glob
import io
import json
import os
import shutil
import types

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
import tensorflow as tf

from vitx import cli, experiment
from vitx import config as config_lib
from vitx.data import pipeline
from vitx.data import pp as preprocess
from vitx.train import optim, steps
from vitx.utils import TrainingDiverged, checkpoints

pytestmark = pytest.mark.usefixtures("compile_cache")
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG_FILE = os.path.join(REPO, "configs", "vit_digits.py")
PP_16 = "decode(channels=1)|resize(16)|value_range(-1,1)|onehot(10)"
TINY = [
    "model.variant=pico/4", "model.width=32", "model.depth=2", "model.mlp_dim=64",
    "model.num_heads=2", f"input.pp={PP_16}", "input.batch_size=32",
    f"evals.test.pp={PP_16}", "evals.test.batch_size=120",
    "total_steps=10", "schedule.warmup_steps=2", "lr=0.003", "log_every_steps=1",
    "eval_every_steps=0", "checkpoint.every_steps=5", "checkpoint.keep=3",
    "checkpoint.async_save=True",
]


if "test_nan_one_in" not in preprocess.registered_ops():
    @preprocess.register("test_nan_one_in")
    def _nan_one_in(n: int):
        """The image becomes all-NaN for about one example in `n` (decided by its seed)."""
        def op(data: dict) -> dict:
            out = dict(data)
            seed = tf.cast(data[preprocess.SEED_KEY][0], tf.int64)
            bad = tf.equal(tf.math.floormod(seed, n), 0)
            out["image"] = tf.where(bad, tf.fill(tf.shape(data["image"]), np.float32("nan")),
                                    data["image"])
            return out
        return op


def nan_pp(n: int) -> str:
    return f"decode(channels=1)|resize(16)|value_range(-1,1)|test_nan_one_in({n})|onehot(10)"


def tiny_config(data_dir: str, *extra: str):
    config = config_lib.load_config(CONFIG_FILE)
    config_lib.apply_overrides(config, [*TINY, f"data_dir={data_dir}", *extra])
    return config


def tiny_argv(data_dir: str, workdir: str, *extra: str) -> list[str]:
    return ["train", "--config", CONFIG_FILE, "--workdir", workdir,
            *(f"--config.{o}" for o in [*TINY, f"data_dir={data_dir}", *extra])]


def run_train(config, workdir: str) -> tuple[dict, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        results = experiment.train(config, workdir)
    return results, out.getvalue()


def nan_steps(data_dir: str, n: int, total: int) -> list[int]:
    """The train steps (1-based) whose batch holds a NaN image under `nan_pp(n)`."""
    config = tiny_config(data_dir)
    ds = pipeline.build_dataset(
        name="digits", split="train", data_dir=data_dir, pp=nan_pp(n),
        global_batch_size=config.input.batch_size, train=True, seed=config.seed,
        shuffle_buffer=config.input.shuffle_buffer)
    return [i + 1 for i, b in enumerate(ds.take(total).as_numpy_iterator())
            if np.isnan(b["image"]).any()]


def checkpoint_steps(workdir: str) -> list[int]:
    return sorted(int(d) for d in os.listdir(os.path.join(workdir, "checkpoints"))
                  if d.isdigit())


def restore_state(workdir: str, step: int | str):
    with ocp.StandardCheckpointer() as ckptr:
        return jax.device_get(ckptr.restore(os.path.join(workdir, "checkpoints", str(step),
                                                         "state")))


def all_finite(tree) -> bool:
    return all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(tree)
               if np.issubdtype(np.asarray(x).dtype, np.inexact))


def logged_losses(workdir: str) -> dict[int, float]:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    return {m["step"]: m["loss"] for m in rows if "loss" in m}


def snapshot(workdir: str) -> dict[str, bytes]:
    out = {}
    for root, _, files in os.walk(workdir):
        for name in files:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, workdir)] = f.read()
    return out


def one_error_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.startswith("vitx: error:")]
    assert len(lines) == 1, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    assert len(lines[0]) < 400, lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def finished(data_dir, tmp_path_factory):
    """A finished 10-step run with checkpoints 5 and 10."""
    workdir = str(tmp_path_factory.mktemp("finished"))
    run_train(tiny_config(data_dir), workdir)
    assert checkpoint_steps(workdir) == [5, 10]
    return workdir


@pytest.fixture
def finished_copy(finished, tmp_path) -> str:
    workdir = str(tmp_path / "copy")
    shutil.copytree(finished, workdir)
    return workdir


# ------------------------------------------------------------------------------------------------
# 1. The NaN guard.

NAN_ONE_IN = 300  # the first NaN batch comes after a few steps (asserted below)


def test_nan_between_log_steps_is_caught_before_the_next_save(data_dir, tmp_path):
    """Logged only at step 1, saved every 2 steps: the guard still names the first NaN step,
    writes no checkpoint at or after it, and points at the last (finite) one."""
    bad = nan_steps(data_dir, NAN_ONE_IN, 20)
    first = bad[0]
    assert 3 <= first <= 18, bad  # a checkpoint before it, the run stops before the end
    workdir = str(tmp_path / "wd")
    config = tiny_config(data_dir, f"input.pp={nan_pp(NAN_ONE_IN)}", "total_steps=20",
                         "log_every_steps=1000", "checkpoint.every_steps=2")
    with pytest.raises(TrainingDiverged) as info:
        run_train(config, workdir)
    msg = str(info.value)
    last = first - 1 if (first - 1) % 2 == 0 else first - 2
    assert f"NaN/inf at step {first};" in msg, msg
    assert f"the last checkpoint (finite params) is step {last} " in msg, msg
    assert "\n" not in msg and len(msg) < 400
    on_disk = checkpoint_steps(workdir)
    assert on_disk and max(on_disk) == last < first, on_disk
    for step in on_disk:
        assert all_finite(restore_state(workdir, step)), step
    assert set(logged_losses(workdir)) == {1}  # the NaN step itself was never logged
    assert not os.path.exists(os.path.join(workdir, "results.json"))


def test_nan_at_a_log_step_through_the_cli_exits_1(data_dir, tmp_path, capsys):
    first = nan_steps(data_dir, NAN_ONE_IN, 20)[0]
    workdir = str(tmp_path / "wd")
    rc = cli.main(tiny_argv(data_dir, workdir, f"input.pp={nan_pp(NAN_ONE_IN)}",
                            "total_steps=20", "checkpoint.every_steps=0"))
    assert rc == 1
    line = one_error_line(capsys.readouterr().err)
    assert f"training diverged: loss or gradients are NaN/inf at step {first};" in line
    assert "no checkpoint was saved" in line
    losses = logged_losses(workdir)
    assert max(losses) == first and not np.isfinite(losses[first])  # logged, then stopped
    assert all(np.isfinite(v) for s, v in losses.items() if s < first)
    assert checkpoint_steps(workdir) == []


def _nan_update_at(k: int) -> optax.GradientTransformation:
    """Multiplies the update of step `k` (1-based) by NaN: loss and gradients stay finite at
    step k, the params become NaN."""
    def init(params):
        return jnp.zeros((), jnp.int32)

    def update(updates, count, params=None):
        del params
        scale = jnp.where(count + 1 == k, jnp.nan, 1.0)
        return jax.tree.map(lambda u: u * scale, updates), count + 1
    return optax.GradientTransformation(init, update)


def test_nonfinite_params_are_never_saved(data_dir, tmp_path, monkeypatch):
    """An update that makes the params NaN while the step's loss and gradients were finite: the
    save at that step is refused (the state itself is checked before every save)."""
    make = optim.make_optimizer
    monkeypatch.setattr(optim, "make_optimizer",
                        lambda config, params: optax.chain(make(config, params),
                                                           _nan_update_at(4)))
    workdir = str(tmp_path / "wd")
    config = tiny_config(data_dir, "total_steps=6", "log_every_steps=1000",
                         "checkpoint.every_steps=2")
    with pytest.raises(TrainingDiverged, match="params or optimizer state are NaN/inf at step 4 "
                                               r"\(an update overflowed\)") as info:
        run_train(config, workdir)
    assert "the last checkpoint (finite params) is step 2 " in str(info.value)
    assert checkpoint_steps(workdir) == [2]
    assert all_finite(restore_state(workdir, 2))


def test_skip_nonfinite_updates_skips_and_counts(data_dir, tmp_path):
    n = 150
    bad = nan_steps(data_dir, n, 20)
    assert len(bad) >= 2, bad
    workdir = str(tmp_path / "wd")
    config = tiny_config(data_dir, f"input.pp={nan_pp(n)}", "total_steps=20",
                         "checkpoint.every_steps=5", "skip_nonfinite_updates=True")
    results, _ = run_train(config, workdir)
    assert results["step"] == 20 and np.isfinite(results["test/loss"])
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f if '"loss"' in line]
    assert [r["step"] for r in rows if not np.isfinite(r["loss"])] == bad
    for r in rows:  # the running count of skipped updates, logged every step
        assert r["skipped_steps"] == sum(1 for s in bad if s <= r["step"]), r
    state = restore_state(workdir, 20)
    assert all_finite(state)
    meta = checkpoints.load_params(workdir)[1]
    assert meta["skipped_steps"] == len(bad)


def test_skipped_update_keeps_the_state_bitwise():
    """Unit level: a NaN batch leaves params and optimizer state bit-identical (only the step
    advances); a finite batch updates exactly as without skipping."""
    def loss_fn(params, batch, rng):
        del rng
        return jnp.mean((batch["x"] @ params["w"] - batch["y"]) ** 2)

    tx = optax.adam(0.1)
    params = {"w": jnp.ones((3, 2))}
    state = {"params": params, "opt_state": tx.init(params), "step": jnp.zeros((), jnp.int32),
             "rng": jax.random.PRNGKey(0)}
    good = {"x": jnp.ones((4, 3)), "y": jnp.zeros((4, 2))}
    nan = {"x": good["x"].at[0, 0].set(jnp.nan), "y": good["y"]}
    skip = jax.jit(steps.build_train_step(loss_fn, tx, skip_nonfinite=True))
    plain = jax.jit(steps.build_train_step(loss_fn, tx))

    after_nan, m = skip(state, nan)
    assert int(m["skipped"]) == 1 and int(m["nonfinite_step"]) == 1
    assert int(after_nan["step"]) == 1
    for a, b in zip(jax.tree.leaves((after_nan["params"], after_nan["opt_state"])),
                    jax.tree.leaves((state["params"], state["opt_state"])), strict=True):
        assert np.asarray(a).tobytes() == np.asarray(b).tobytes()
    s1, m1 = skip(state, good)
    s2, m2 = plain(state, good)
    assert int(m1["skipped"]) == 0 and int(m1["nonfinite_step"]) == int(m2["nonfinite_step"]) == 0
    for a, b in zip(jax.tree.leaves(s1), jax.tree.leaves(s2), strict=True):
        assert np.asarray(a).tobytes() == np.asarray(b).tobytes()
    _, m3 = plain(dict(state, step=jnp.int32(6)), nan)
    assert int(m3["nonfinite_step"]) == 7  # the step's number as logged (state step + 1)


# ------------------------------------------------------------------------------------------------
# 2. A damaged latest checkpoint.


def _truncate_largest_array_file(step_dir: str) -> str:
    files = glob.glob(os.path.join(step_dir, "state", "**", "d", "*"), recursive=True)
    path = max(files, key=os.path.getsize)
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)
    return path


def _delete_state_metadata(step_dir: str) -> str:
    path = os.path.join(step_dir, "state", "_METADATA")
    os.remove(path)
    return path


@pytest.mark.parametrize("damage", [_truncate_largest_array_file, _delete_state_metadata],
                         ids=["truncated_array_file", "deleted_metadata"])
def test_damaged_latest_checkpoint_falls_back_to_the_previous(finished, finished_copy, damage,
                                                              capsys, bitwise_equal):
    ckpts = os.path.join(finished_copy, "checkpoints")
    damage(os.path.join(ckpts, "10"))
    kept = snapshot(os.path.join(ckpts, "10"))
    results, stdout = run_train(tiny_config(_data_dir_of(finished)), finished_copy)
    err = capsys.readouterr().err
    warnings = [ln for ln in err.splitlines() if ln.startswith("vitx: warning:")]
    assert len(warnings) == 1, err[-3000:]
    assert f"checkpoint {ckpts}/10 does not restore (" in warnings[0]
    assert "kept as 10.corrupt (not deleted); resuming from step 5" in warnings[0]
    assert len(warnings[0]) < 400
    assert f"vitx: resumed from {ckpts}/5" in stdout
    # The damaged checkpoint is kept as it was; steps 6..10 were redone, bit-for-bit.
    assert snapshot(os.path.join(ckpts, "10.corrupt")) == kept
    assert results["step"] == 10 and checkpoint_steps(finished_copy) == [5, 10]
    bitwise_equal(restore_state(finished_copy, 10), restore_state(finished, 10))


def _data_dir_of(workdir: str) -> str:
    with open(os.path.join(workdir, "config.json")) as f:
        return json.load(f)["data_dir"]


def test_no_checkpoint_restores_is_one_clear_error(finished_copy, capsys):
    ckpts = os.path.join(finished_copy, "checkpoints")
    for step in (5, 10):
        _truncate_largest_array_file(os.path.join(ckpts, str(step)))
    before = snapshot(finished_copy)
    rc = cli.main(tiny_argv(_data_dir_of(finished_copy), finished_copy))
    assert rc == 2
    line = one_error_line(capsys.readouterr().err)
    assert f"no checkpoint in {ckpts} restores (step 10: " in line and "step 5: " in line
    assert snapshot(finished_copy) == before  # nothing renamed, nothing written


def test_eval_of_a_damaged_checkpoint_is_one_line(finished_copy, capsys):
    _delete_state_metadata(os.path.join(finished_copy, "checkpoints", "10"))
    rc = cli.main(["eval", "--config", CONFIG_FILE, "--checkpoint", finished_copy,
                   *(f"--config.{o}" for o in [*TINY, f"data_dir={_data_dir_of(finished_copy)}"])])
    assert rc == 2
    line = one_error_line(capsys.readouterr().err)
    assert "checkpoints/10 does not restore" in line and "pass an earlier step" in line


# ------------------------------------------------------------------------------------------------
# 3. A changed config on resume.


def test_changed_model_on_resume_names_the_keys(finished_copy, capsys):
    before = snapshot(finished_copy)
    rc = cli.main(tiny_argv(_data_dir_of(finished_copy), finished_copy, "model.width=64",
                            "model.mlp_dim=128", "optax_name=adam"))
    assert rc == 2
    line = one_error_line(capsys.readouterr().err)
    assert f"workdir {finished_copy} holds checkpoints of another model or optimizer" in line
    for change in ("model.mlp_dim 64 -> 128", "model.width 32 -> 64",
                   'optax_name "adamw" -> "adam"'):
        assert change in line, line
    assert "revert these keys" in line and "new --workdir" in line
    assert "partial_restore" not in line  # orbax's own advice never surfaces
    assert snapshot(finished_copy) == before


def test_changed_input_shape_on_resume_names_arrays_and_keys(finished_copy, capsys):
    """A key outside the model's (input.pp resizes to 8x8): the checkpoint's shapes differ."""
    before = snapshot(finished_copy)
    pp8 = "decode(channels=1)|resize(8)|value_range(-1,1)|onehot(10)"
    rc = cli.main(tiny_argv(_data_dir_of(finished_copy), finished_copy, f"input.pp={pp8}",
                            f"evals.test.pp={pp8}"))
    assert rc == 2
    line = one_error_line(capsys.readouterr().err)
    assert f"checkpoint 10 in {finished_copy} does not fit this config" in line
    assert "e.g. params/pos_embedding (1, 16, 32) there, (1, 4, 32) now" in line, line
    assert "changed keys: input.pp ...|resize(16)|value_range(... -> ...|resize(8)|" in line
    assert "revert them to resume, or train in a new --workdir" in line
    assert snapshot(finished_copy) == before


def test_harmless_changes_resume(finished_copy):
    """total_steps, frequencies, lr and evals may change between runs of one workdir."""
    results, stdout = run_train(
        tiny_config(_data_dir_of(finished_copy), "total_steps=12", "log_every_steps=3",
                    "checkpoint.every_steps=0", "lr=0.001", "evals.test.batch_size=60"),
        finished_copy)
    assert f"resumed from {finished_copy}/checkpoints/10" in stdout
    assert results["step"] == 12


# ------------------------------------------------------------------------------------------------
# 4. Unwritable workdir or data_dir, a full disk.


def test_workdir_under_a_file_is_not_writable(data_dir, tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    rc = cli.main(tiny_argv(data_dir, str(blocker / "wd")))
    assert rc == 2
    line = one_error_line(capsys.readouterr().err)
    assert f"--workdir '{blocker}/wd' is not writable ({blocker}): Not a directory" in line
    assert blocker.read_text() == "x"


def test_full_disk_is_a_clear_error_before_training(finished_copy, monkeypatch):
    import vitx.utils as vu

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), kwargs.get("dir"))

    before = snapshot(finished_copy)
    monkeypatch.setattr(vu, "tempfile", types.SimpleNamespace(mkstemp=full))
    with pytest.raises(config_lib.ConfigError,
                       match=r"--workdir '.*' is not writable: no space left on device"):
        run_train(tiny_config(_data_dir_of(finished_copy)), finished_copy)
    monkeypatch.undo()
    usage = types.SimpleNamespace(free=1000)
    monkeypatch.setattr(vu, "shutil", types.SimpleNamespace(disk_usage=lambda path: usage))
    with pytest.raises(config_lib.ConfigError,
                       match=r"has 0.0 MiB free but one checkpoint needs ~[0-9.]+ MiB"):
        run_train(tiny_config(_data_dir_of(finished_copy)), finished_copy)
    assert snapshot(finished_copy) == before


def test_full_disk_during_training_is_one_line_exit_1(data_dir, tmp_path, capsys, monkeypatch):
    """orbax reports a full disk as ValueError('RESOURCE_EXHAUSTED ... No space left on device')
    (seen with a 3 MiB tmpfs); the run stops with one line naming the path, exit status 1."""
    def save(self, step, *args, **kwargs):
        raise ValueError(f'RESOURCE_EXHAUSTED: Error writing local file "{self.directory}/'
                         f'{step}.orbax-checkpoint-tmp/_sharding": Failed to write 42777 bytes '
                         f"to file 5: No space left on device [os_error_code='28']")

    monkeypatch.setattr(ocp.CheckpointManager, "save", save)
    workdir = str(tmp_path / "wd")
    rc = cli.main(tiny_argv(data_dir, workdir, "total_steps=2", "checkpoint.every_steps=1"))
    assert rc == 1
    line = one_error_line(capsys.readouterr().err)
    assert line == (f"vitx: error: no space left on device writing {workdir}/checkpoints; "
                    f"free space or use another --workdir")


def test_unwritable_data_dir_when_the_dataset_must_be_built(tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    workdir = str(tmp_path / "wd")
    rc = cli.main(tiny_argv(str(blocker / "tfds"), workdir))
    assert rc == 2
    line = one_error_line(capsys.readouterr().err)
    assert "dataset 'digits' is not prepared and cannot be built: data_dir" in line
    assert "Not a directory" in line
    assert not os.path.exists(workdir)
