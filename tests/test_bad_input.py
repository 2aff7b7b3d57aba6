"""Bad input, one table: each malformed config, argument or checkpoint given to the `vitx` CLI
(in-process) exits with status 2 and prints exactly one `vitx: error:` line (< 400 chars, no
traceback) naming the key (or file) and the fix, and leaves the workdir as it was.

Train cases point `--workdir` at a copy of a finished tiny run (byte-identical afterwards), or,
where the case is about a fresh start (`model_init`), at a path that must still not exist.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil

import jax
import numpy as np
import pytest

from vitx import cli

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_FILE = os.path.join(REPO, "configs", "vit_digits.py")
PP_16 = "decode(channels=1)|resize(16)|value_range(-1,1)|onehot(10)"
TINY = [
    "model.variant=pico/4", "model.width=32", "model.depth=2", "model.mlp_dim=64",
    "model.num_heads=2", f"input.pp={PP_16}", "input.batch_size=32",
    f"evals.test.pp={PP_16}", "evals.test.batch_size=120",
    "total_steps=4", "schedule.warmup_steps=2", "lr=0.003", "log_every_steps=2",
    "eval_every_steps=0", "checkpoint.every_steps=2", "checkpoint.keep=2",
    "checkpoint.async_save=False",
]
FINISHED, FRESH = "finished", "fresh"


@dataclasses.dataclass(frozen=True)
class Case:
    """`vitx <command>` with the tiny config plus `overrides`; the error line must contain every
    string of `expect` ({finished} / {foreign} are filled in)."""

    overrides: tuple[str, ...] = ()
    expect: tuple[str, ...] = ()
    command: str = "train"
    config: str = CONFIG_FILE
    workdir: str = FINISHED
    args: tuple[str, ...] = ()


def case(*overrides: str, expect: str | tuple[str, ...], **kw) -> Case:
    return Case(tuple(overrides), (expect,) if isinstance(expect, str) else expect, **kw)


CASES = {
    # Types (checked against the config file's defaults).
    "unknown_key": case("model.widht=64", expect=("unknown config key 'model.widht'",
                                                  "did you mean 'width'")),
    "str_for_int": case("total_steps=abc", expect="config key 'total_steps': cannot set 'abc'"),
    "str_for_float": case("lr=fast", expect="config key 'lr': cannot set 'fast'"),
    "float_for_int": case("input.batch_size=32.5", expect="config key 'input.batch_size'"),
    "list_for_float": case("lr=[0.1]", expect="config key 'lr': cannot set [0.1]"),
    "float_seed": case("seed=1.5", expect="config key 'seed'"),
    "override_without_value": case("lr", expect="override --config.'lr' has no value"),
    # Ranges.
    "negative_lr": case("lr=-1", expect="lr=-1.0 must be a number >= 0"),
    "infinite_lr": case("lr=1e400", expect="lr=inf must be a number >= 0"),
    "zero_batch_size": case("input.batch_size=0", expect="input.batch_size=0"),
    "negative_total_steps": case("total_steps=-5", expect="total_steps=-5 must be an int >= 0"),
    "no_length": case("total_steps=0", expect="set total_steps or total_epochs"),
    "negative_epochs": case("total_steps=0", "total_epochs=-1.0",
                            expect="total_epochs=-1.0 must be a number >= 0"),
    "zero_log_every": case("log_every_steps=0", expect="log_every_steps=0 must be an int >= 1"),
    "negative_checkpoint_every": case("checkpoint.every_steps=-5",
                                      expect="checkpoint.every_steps=-5 must be an int >= 0"),
    "zero_keep": case("checkpoint.keep=0", expect="checkpoint.keep=0 must be an int >= 1"),
    "zero_classes": case("num_classes=0", expect="num_classes=0 must be an int >= 1"),
    "accum_not_dividing_batch": case("grad_accum_steps=3", expect="grad_accum_steps=3"),
    "warmup_longer_than_run": case("schedule.warmup_steps=1000",
                                   expect="schedule.warmup_steps=1000 exceeds total_steps=4"),
    "zero_eval_batch": case("evals.test.batch_size=0", expect="evals.test.batch_size=0"),
    "zero_shuffle_buffer": case("input.shuffle_buffer=0", expect="shuffle_buffer=0"),
    # Unknown names.
    "unknown_model": case("model_name=vitt", expect="model_name='vitt' does not exist"),
    "unknown_variant": case("model.variant=huge/4", expect="model.variant='huge/4' is unknown"),
    "unknown_pool_type": case("model.pool_type=max", expect="model.pool_type='max' is unknown"),
    "unknown_dtype": case("model.dtype_mm=float13", expect="model.dtype_mm"),
    "unknown_task": case("task.type=regression", expect="task.type='regression' does not exist"),
    "unknown_evaluator": case("evals.test.type=top5", expect="evals.test.type='top5'"),
    "unknown_decay_type": case("schedule.decay_type=exp",
                               expect="schedule.decay_type='exp' is unknown"),
    "unknown_optimizer": case("optax_name=lamb", expect="optax_name='lamb' is unknown"),
    "unknown_optimizer_arg": case("optax={'b3': 0.9}", expect=("optax", "b3")),
    "unknown_pp_op": case(f"input.pp={PP_16.replace('resize', 'resise')}",
                          expect=("input", "resise")),
    "malformed_pp": case("input.pp=decode(channels=1)|resize(16,|onehot(10)",
                         expect=("input", "resize(16,")),
    "bad_pp_argument": case(f"input.pp={PP_16.replace('channels=1', 'channels=2')}",
                            expect=("input", "channels=2")),
    "unknown_dataset": case("input.dataset=imagenet2012", expect=("input", "imagenet2012")),
    "unknown_split": case("input.split=validation", expect=("input", "validation")),
    "unknown_eval_dataset": case("evals.test.dataset=nope", expect=("evals.test", "'nope'")),
    "unknown_eval_split": case("evals.test.split=dev", expect=("evals.test", "'dev'")),
    "duplicate_label_subset": case("input.label_subset=[1, 1]",
                                   expect=("input", "label_subset=[1, 1] has duplicates")),
    "unknown_config_argument": case(config=f"{CONFIG_FILE}:foo=1",
                                    expect="config argument 'foo=1' is unknown"),
    "config_argument_type": case(config=f"{CONFIG_FILE}:steps=abc",
                                 expect="config argument steps='abc' is not a int"),
    "missing_config_file": case(config="configs/nope.py", expect="--config 'configs/nope.py'"),
    "bad_lr_mults_regex": case("lr_mults=[('(', 1.0)]", expect=("lr_mults", "'('")),
    # Shapes.
    "patch_not_dividing": case("model.variant=pico/5", expect=("model.variant='pico/5'",
                                                              "does not divide")),
    "heads_not_dividing_width": case("model.num_heads=3", expect="model.num_heads=3"),
    "labels_key_missing": case("task.labels=target", expect=("task", "'target'")),
    "classes_vs_onehot_depth": case("num_classes=5", expect=("num_classes", "5", "10")),
    "inputs_key_missing": case("task.inputs=video", expect="task.inputs ['video']"),
    # Meshes.
    "mesh_too_big": case("mesh=[('data', 3)]", expect="mesh=[('data', 3)]"),
    "mesh_two_wildcards": case("mesh=[('data', -1), ('model', -1)]",
                               expect="at most one axis size may be -1"),
    "mesh_fixed_not_dividing": case("mesh=[('data', -1), ('fsdp', 2)]",
                                    expect="mesh=[('data', -1), ('fsdp', 2)]"),
    "sharding_rule_unknown_axis": case("sharding_rules=[('head/kernel', ('foo',))]",
                                       expect=("mesh axis 'foo'", "the mesh does not have",
                                               "'data'")),
    "sharding_rule_rank": case("sharding_rules=[('head/kernel', ('fsdp', None, None))]",
                               expect="sharding_rules: 'head/kernel'"),
    # Checkpoints.
    "changed_model_on_resume": case("model.depth=3", expect=("model.depth 2 -> 3",
                                                             "new --workdir")),
    "missing_model_init": case("model_init=/nonexistent/ckpt.npz", workdir=FRESH,
                               expect=("model_init", "/nonexistent/ckpt.npz")),
    "foreign_model_init": case("model_init={foreign}", workdir=FRESH,
                               expect=("model_init", "cannot load")),
    "garbage_npz_model_init": case("model_init={garbage}", workdir=FRESH,
                                   expect=("model_init", "{garbage}",
                                           "not a valid weights file")),
    "model_init_other_width": case("model_init={finished}", "model.width=64",
                                   "model.mlp_dim=128", workdir=FRESH,
                                   expect=("model_init", "cannot load")),
    "model_init_missing_subtree": case("model_init={finished}:nope", workdir=FRESH,
                                       expect=("model_init", "subtree 'nope' not found")),
    "bad_dont_load_regex": case("model_init={finished}", "model_load.dont_load=['(']",
                                workdir=FRESH, expect="model_load.dont_load pattern '('"),
    "eval_missing_checkpoint": case(command="eval", args=("--checkpoint", "/nonexistent/wd"),
                                    expect="checkpoint '/nonexistent/wd'"),
    "eval_foreign_checkpoint": case("model.width=64", "model.mlp_dim=128", command="eval",
                                    args=("--checkpoint", "{finished}"),
                                    expect="cannot load"),
    "eval_no_evals": case("evals={}", command="eval", args=("--checkpoint", "{finished}"),
                          expect="config.evals is empty"),
    "export_missing_checkpoint": case(command="export",
                                      args=("--checkpoint", "/nonexistent/wd", "--output",
                                            "{tmp}/x.npz"),
                                      expect="checkpoint '/nonexistent/wd'"),
    "export_missing_subtree": case(command="export",
                                   args=("--checkpoint", "{finished}:nope", "--output",
                                         "{tmp}/x.npz"),
                                   expect="subtree 'nope' not found"),
}


def snapshot(workdir: str) -> dict[str, str]:
    out = {}
    for root, _, files in os.walk(workdir):
        for name in files:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, workdir)] = hashlib.sha256(f.read()).hexdigest()
    return out


@pytest.fixture(scope="module")
def finished(data_dir, tmp_path_factory) -> str:
    """A finished 4-step tiny run (checkpoints 2 and 4)."""
    workdir = str(tmp_path_factory.mktemp("finished"))
    argv = ["train", "--config", CONFIG_FILE, "--workdir", workdir,
            *(f"--config.{o}" for o in [*TINY, f"data_dir={data_dir}"])]
    assert cli.main(argv) == 0
    return workdir


@pytest.fixture(scope="module")
def foreign(tmp_path_factory) -> str:
    """An .npz of params of some other network (none of the ViT's names)."""
    path = str(tmp_path_factory.mktemp("foreign") / "resnet.npz")
    rng = np.random.default_rng(0)
    np.savez(path, **{f"block{i}/conv{j}/kernel": rng.normal(size=(3, 3, 8, 8))
                      for i in range(10) for j in range(4)})
    return path


@pytest.fixture(scope="module")
def garbage(tmp_path_factory) -> str:
    """Bytes that are no archive at all, named .npz (numpy would offer to unpickle them)."""
    path = tmp_path_factory.mktemp("garbage") / "weights.npz"
    path.write_bytes(b"\x80\x04garbage, not a zip archive" * 10)
    return str(path)


def _fill(text: str, **kw: str) -> str:
    for k, v in kw.items():
        text = text.replace("{" + k + "}", v)
    return text


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input_is_one_line_exit_2_and_writes_nothing(name, data_dir, finished, foreign,
                                                         garbage, tmp_path, capsys):
    c = CASES[name]
    fill = dict(finished=finished, foreign=foreign, garbage=garbage, tmp=str(tmp_path))
    if c.workdir == FINISHED:
        workdir = str(tmp_path / "finished_copy")
        shutil.copytree(finished, workdir)
    else:
        workdir = str(tmp_path / "fresh")
    before = snapshot(workdir)
    overrides = [*TINY, f"data_dir={data_dir}", *(_fill(o, **fill) for o in c.overrides)]
    argv = [c.command] + [_fill(a, **fill) for a in c.args]
    if c.command == "train":
        argv += ["--workdir", workdir]
    if c.command != "export":  # overrides last: "--config.lr" alone is the last argument
        argv += ["--config", c.config, *(f"--config.{o}" for o in overrides)]
    capsys.readouterr()
    rc = cli.main(argv)
    out, err = capsys.readouterr()
    lines = [ln for ln in err.splitlines() if ln.startswith("vitx: error:")]
    assert rc == 2, (rc, err[-2000:], out[-2000:])
    assert len(lines) == 1, err[-3000:]
    assert "Traceback" not in err + out
    line = lines[0]
    assert len(line) < 400, line
    assert "pickle" not in line, line  # never suggest unpickling an untrusted file
    for want in c.expect:
        assert _fill(want, **fill) in line, line
    if c.workdir == FINISHED:
        assert snapshot(workdir) == before
    else:
        assert not os.path.exists(workdir)
    assert not os.path.exists(os.path.join(str(tmp_path), "x.npz"))


def test_the_table_is_big_enough():
    assert len(CASES) >= 30


def test_opt_target_npz_is_found_by_itself(finished, tmp_path):
    """An .npz whose params sit under opt/target (flax optimizer checkpoints, as big_vision and
    timm read them) loads without a ':opt/target' suffix, and a strict merge names the prefix."""
    from vitx.utils import checkpoints, npz, tree

    params, _ = checkpoints.load_params(finished)
    flat = {f"opt/target/{k}": v for k, v in tree.flatten(params).items()}
    flat.update({f"opt/state/{k}": v for k, v in tree.flatten(params).items()})
    path = str(tmp_path / "flax_optimizer.npz")
    np.savez(path, **flat)
    loaded, _ = checkpoints.load_params(path)
    assert jax.tree.structure(loaded) == jax.tree.structure(params)
    for a, b in zip(jax.tree.leaves(loaded), jax.tree.leaves(params), strict=True):
        assert np.array_equal(a, b)
    with np.load(path) as z:
        raw = tree.unflatten({k: z[k] for k in z.files})
    with pytest.raises(ValueError) as info:
        tree.merge_params(params, raw)
    msg = str(info.value)
    assert "its params sit under 'opt/target': load '<checkpoint>:opt/target'" in msg
    assert msg.count(" (checkpoint (") + msg.count(" (model (") == tree.MAX_LISTED
    n = len(tree.flatten(params)) * 3 - tree.MAX_LISTED
    assert msg.endswith(f"... and {n} more")
    assert npz.AUTO_SUBTREES == ("opt/target", "params")


def test_batch_not_dividing_devices_in_a_real_process(data_dir, finished, tmp_path, warm_vitx):
    """`vitx train` as a subprocess on 4 simulated devices: a batch of 30 is one error line on
    stderr, exit status 2, no traceback, the workdir untouched."""
    import subprocess

    workdir = str(tmp_path / "copy")
    shutil.copytree(finished, workdir)
    before = snapshot(workdir)
    env = dict(os.environ, XLA_FLAGS=os.environ.get("XLA_FLAGS", "")
                                     + " --xla_force_host_platform_device_count=4",
               JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2")
    cmd = [os.path.join(warm_vitx, "vitx"), "train", "--workdir", workdir,
           "--config", CONFIG_FILE, *(f"--config.{o}" for o in [*TINY, f"data_dir={data_dir}"]),
           "--config.input.batch_size=30"]
    out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    lines = [ln for ln in out.stderr.splitlines() if ln.startswith("vitx: error:")]
    assert out.returncode == 2, out.stderr[-3000:]
    assert lines == ["vitx: error: input.batch_size=30 is not a positive multiple of the 4 "
                     "devices; use a positive multiple of 4"], out.stderr[-3000:]
    assert "Traceback" not in out.stderr + out.stdout
    assert snapshot(workdir) == before
