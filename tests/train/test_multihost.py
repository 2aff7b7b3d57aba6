"""Two processes on this machine (`jax.distributed` over CPU collectives) train one run, get a
SIGTERM on ONE process, stop together at the same agreed step (JAX's preemption sync point),
both save it, and the same two commands resume and finish the run."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PP_16 = "decode(channels=1)|resize(16)|value_range(-1,1)|onehot(10)"
TOTAL = 150
TINY = [
    "model.variant=pico/4", "model.width=32", "model.depth=2", "model.mlp_dim=64",
    "model.num_heads=2", f"input.pp={PP_16}", "input.batch_size=32", f"evals.test.pp={PP_16}",
    "evals.test.batch_size=120", f"total_steps={TOTAL}", "schedule.warmup_steps=2",
    "log_every_steps=1", "eval_every_steps=0", "checkpoint.every_steps=50", "checkpoint.keep=3",
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _start(workdir: str, data_dir: str, port: int, log_dir: str, tag: str,
           vitx: list[str]) -> list:
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               XLA_FLAGS=os.environ.get("XLA_FLAGS", "")
                         + " --xla_force_host_platform_device_count=1")
    procs = []
    for i in range(2):
        cmd = [*vitx, "train", "--distributed",
               "--coordinator_address", f"localhost:{port}", "--num_processes", "2",
               "--process_id", str(i), "--config", "configs/vit_digits.py",
               "--workdir", workdir, f"--config.data_dir={data_dir}",
               *(f"--config.{o}" for o in TINY)]
        log = open(os.path.join(log_dir, f"{tag}_{i}.log"), "w")  # noqa: SIM115
        procs.append((subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log,
                                       stderr=subprocess.STDOUT), log))
    return procs


def _finish(procs: list, timeout: float) -> list[tuple[int, str]]:
    out = []
    deadline = time.monotonic() + timeout
    for p, log in procs:
        try:
            p.wait(timeout=max(deadline - time.monotonic(), 1))
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
            log.close()
        with open(log.name) as f:
            out.append((p.returncode, f.read()))
    return out


def _logged_steps(workdir: str) -> list[int]:
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line)["step"] for line in f if '"loss"' in line]


def _ckpt_steps(workdir: str) -> list[int]:
    d = os.path.join(workdir, "checkpoints")
    return sorted(int(n) for n in os.listdir(d) if n.isdigit()) if os.path.isdir(d) else []


def test_two_processes_sigterm_on_one_stop_together_and_resume(data_dir, tmp_path):
    workdir, logs = str(tmp_path / "run"), str(tmp_path)
    # cold processes (`python -m vitx.cli`): a warm one (conftest.warm_vitx) ends with
    # os._exit, skipping jax.distributed's exit handler, and the other process then sees the
    # coordinator vanish
    vitx = [sys.executable, "-m", "vitx.cli"]
    procs = _start(workdir, data_dir, _free_port(), logs, "first", vitx)
    try:
        deadline = time.monotonic() + 300
        while len(_logged_steps(workdir)) < 10:  # training is under way on both
            assert all(p.poll() is None for p, _ in procs), "a process exited early"
            assert time.monotonic() < deadline, "no training steps within 300 s"
            time.sleep(0.2)
        procs[1][0].send_signal(signal.SIGTERM)  # preempt process 1 only
    finally:
        results = _finish(procs, timeout=240)
    stops = []
    for i, (rc, out) in enumerate(results):
        assert rc == 0, f"process {i} exit status {rc}:\n{out[-3000:]}"
        m = re.search(rf"process {i}: preemption sync point at step (\d+)", out)
        assert m, f"process {i} did not reach a sync point:\n{out[-3000:]}"
        stops.append(int(m[1]))
    stop = stops[0]
    assert stops == [stop, stop] and 10 <= stop < TOTAL  # one agreed step for both hosts
    assert f"vitx: stopped at step {stop}/{TOTAL}" in results[0][1]
    assert _ckpt_steps(workdir)[-1] == stop  # both saved it (orbax finalizes with both)
    assert not os.path.exists(os.path.join(workdir, "results.json"))
    assert max(_logged_steps(workdir)) == stop  # only process 0 logs; nothing past the stop

    results = _finish(_start(workdir, data_dir, _free_port(), logs, "resume", vitx), timeout=300)
    for i, (rc, out) in enumerate(results):
        assert rc == 0, f"resumed process {i} exit status {rc}:\n{out[-3000:]}"
        assert f"vitx: resumed from {workdir}/checkpoints/{stop}" in out, out[-3000:]
    steps = _logged_steps(workdir)
    assert steps == sorted(steps) and steps[-1] == TOTAL
    assert steps.count(stop + 1) == 1  # no step logged twice
    with open(os.path.join(workdir, "results.json")) as f:
        assert json.load(f)["step"] == TOTAL
