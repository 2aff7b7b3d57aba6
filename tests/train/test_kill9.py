"""kill -9 at random moments, ten times, then the same command once more: no finalized
checkpoint is ever lost and the final params are bitwise those of an uninterrupted run.

The kill moments are random (a seeded RNG: after 0-6 newly logged steps plus 0-0.4 s, so they
land in start-up, compilation, plain steps and async checkpoint writes alike); time is bounded
by the number of lives, not by the machine's speed.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time

import numpy as np
import zygote

from vitx.utils import checkpoints

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PP_16 = "decode(channels=1)|resize(16)|value_range(-1,1)|onehot(10)"
TOTAL, KILLS = 120, 10
TINY = [
    "model.variant=pico/4", "model.width=32", "model.depth=2", "model.mlp_dim=64",
    "model.num_heads=2", f"input.pp={PP_16}", "input.batch_size=32", f"evals.test.pp={PP_16}",
    "evals.test.batch_size=120", f"total_steps={TOTAL}", "schedule.warmup_steps=2",
    "log_every_steps=1", "eval_every_steps=0", "checkpoint.every_steps=5",
    "checkpoint.keep=1000", "checkpoint.async_save=True",
]


def _cmd(vitx: list[str], workdir: str, data_dir: str) -> list[str]:
    return [*vitx, "train", "--config", "configs/vit_digits.py",
            "--workdir", workdir, f"--config.data_dir={data_dir}",
            *(f"--config.{o}" for o in TINY)]


def _env(cache: str) -> dict:
    return dict(os.environ, JAX_PLATFORMS="cpu", JAX_COMPILATION_CACHE_DIR=cache,
                JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
                JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")


def _finalized(workdir: str) -> set[int]:
    d = os.path.join(workdir, "checkpoints")
    return {int(n) for n in os.listdir(d) if n.isdigit()} if os.path.isdir(d) else set()


def _lines(workdir: str) -> int:
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return 0
    with open(path) as f:
        return sum(1 for _ in f)


def _params(workdir: str) -> list[tuple[str, bytes]]:
    params, meta = checkpoints.load_params(workdir)
    assert meta["step"] == TOTAL
    flat = []

    def walk(prefix: str, node) -> None:
        if isinstance(node, dict):
            for k in sorted(node):
                walk(f"{prefix}/{k}", node[k])
        else:
            flat.append((prefix, np.asarray(node).tobytes()))
    walk("", params)
    return flat


def test_ten_kill9_then_resume_is_bitwise_and_loses_no_checkpoint(data_dir, tmp_path,
                                                                   warm_vitx):
    env = _env(str(tmp_path / "jax_cache"))
    ref = str(tmp_path / "reference")
    # the reference run starts cold (`python -m vitx.cli`); the killed lives and the final
    # resume start warm (conftest.warm_vitx): killing the warm `vitx` SIGKILLs its command
    cold, warm = [sys.executable, "-m", "vitx.cli"], [os.path.join(warm_vitx, "vitx")]
    out = subprocess.run(_cmd(cold, ref, data_dir), cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]

    workdir = str(tmp_path / "killed")
    rng = random.Random(0)
    kills_during_training = 0
    for life in range(KILLS):
        before = _finalized(workdir)
        lines0 = _lines(workdir)
        want = rng.randint(0, 6)
        proc = subprocess.Popen(_cmd(warm, workdir, data_dir), cwd=REPO, env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 180
        while (proc.poll() is None and _lines(workdir) - lines0 < want
               and time.monotonic() < deadline):
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, 0.4))
        if proc.poll() is not None:  # finished before the kill: the loop has done its job
            break
        kills_during_training += _lines(workdir) > lines0
        proc.kill()  # SIGKILL: no handler runs, an async write may be cut anywhere
        proc.wait()
        zygote.wait_idle(warm_vitx)  # the command the warm vitx ran is gone too
        after = _finalized(workdir)
        assert before <= after, f"life {life}: finalized checkpoints lost: {before - after}"
    assert kills_during_training >= 5, "too few kills landed while training"

    out = subprocess.run(_cmd(warm, workdir, data_dir), cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    with open(os.path.join(workdir, "results.json")) as f:
        assert json.load(f)["step"] == TOTAL
    assert _params(workdir) == _params(ref)  # bitwise: same names, same bytes
