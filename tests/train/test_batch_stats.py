"""Batch statistics (BatchNorm, CoAtNet) in the sharded trainer, on 8 simulated CPU devices.

The train state carries `model_state.batch_stats`; a sharded step computes them over the global
batch (the cross-replica mean, by construction under jit), so every device holds the same
values; they are checkpointed, restored bitwise on resume and used in eval mode.
"""

import os
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent("""
    import json, os, sys
    import jax, numpy as np
    from vitx import config as config_lib, experiment
    from vitx.train import checkpoint as ckpt_lib
    from vitx.utils import checkpoints

    assert jax.device_count() == 8
    data_dir, work = sys.argv[1], sys.argv[2]
    pp = "decode(channels=1)|resize(16)|value_range(-1,1)|onehot(10)"
    def cfg(steps, name):
        c = config_lib.load_config("configs/coatnet_digits.py")
        config_lib.apply_overrides(c, [
            f"data_dir={data_dir}", "model.variant=coatnet-pico", "model.stage_strides=(1,1,2,2)",
            f"input.pp={pp}", "input.batch_size=16", f"evals.test.pp={pp}",
            "evals.test.batch_size=120", f"total_steps={steps}", "schedule.warmup_steps=1",
            "log_every_steps=1", "eval_every_steps=0", "checkpoint.every_steps=2",
            "checkpoint.async_save=False", "mesh=[('data', 4), ('fsdp', 2), ('model', 1)]"])
        return c
    # A: 4 steps straight; B: 2 steps, then resumed to 4.
    ra = experiment.train(cfg(4, "a"), os.path.join(work, "a"))
    experiment.train(cfg(2, "b"), os.path.join(work, "b"))
    rb = experiment.train(cfg(4, "b"), os.path.join(work, "b"))
    out = {"a": ra, "b": rb}
    # The state after a sharded step: batch stats on every device identical.
    s = experiment.trainer.setup(cfg(4, "a"))
    abstract, _ = s.init_state(materialize=False)
    ck = ckpt_lib.Checkpointer(os.path.join(work, "a", "checkpoints"), async_save=False)
    state, _ = ck.restore(abstract)
    stats = state["model_state"]["batch_stats"]
    leaves = jax.tree.leaves(stats)
    out["n_stats"] = len(leaves)
    # Every device holding the same slice of a statistic (the data-parallel replicas of an
    # fsdp shard) holds the same values.
    def same_per_slice(leaf):
        by_index = {}
        for sh in leaf.addressable_shards:
            by_index.setdefault(str(sh.index), []).append(np.asarray(sh.data))
        return all(all(np.array_equal(v[0], x) for x in v) for v in by_index.values()) and \
            all(len(v) >= 4 for v in by_index.values())
    out["replicated"] = all(same_per_slice(leaf) for leaf in leaves)
    init, _ = s.init_state()
    out["changed"] = any(not np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(
        leaves, jax.tree.leaves(init["model_state"]["batch_stats"])))
    ma = checkpoints.load_model_state(os.path.join(work, "a"))
    mb = checkpoints.load_model_state(os.path.join(work, "b"))
    pa, _ = checkpoints.load_params(os.path.join(work, "a"))
    pb, _ = checkpoints.load_params(os.path.join(work, "b"))
    out["resume_bitwise"] = all(
        np.asarray(x).tobytes() == np.asarray(y).tobytes()
        for x, y in zip(jax.tree.leaves((ma, pa)), jax.tree.leaves((mb, pb)), strict=True))
    out["eval"] = experiment.evaluate(cfg(4, "a"), os.path.join(work, "a"))
    print("RESULT " + json.dumps(out))
""")


@pytest.fixture(scope="module")
def result(tmp_path_factory, data_dir):
    import json

    work = str(tmp_path_factory.mktemp("bn"))
    env = dict(os.environ, XLA_FLAGS=os.environ.get("XLA_FLAGS", "")
                                     + " --xla_force_host_platform_device_count=8",
               JAX_PLATFORMS="cpu")
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    out = subprocess.run([sys.executable, "-c", SCRIPT, data_dir, work], cwd=root, env=env,
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    line = [x for x in out.stdout.splitlines() if x.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT "):])


def test_batch_stats_are_trained_replicated_and_identical_across_devices(result):
    assert result["n_stats"] > 0 and result["changed"] and result["replicated"]


def test_batch_stats_restored_bitwise_on_resume(result):
    assert result["resume_bitwise"]
    assert result["a"]["test/loss"] == result["b"]["test/loss"]


def test_eval_of_a_checkpoint_uses_its_batch_stats(result):
    assert result["eval"]["test/loss"] == pytest.approx(result["a"]["test/loss"], rel=1e-6)
