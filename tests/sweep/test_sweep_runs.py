"""Running `vitx sweep` (vitx/sweep/loop.py, runner.py, study.py, summary.py): failures,
Ctrl-C and kill -9 resumed, workers sharing a study, searches, pruning, the summary.

Most tests run a fake trainer (a small script taking `train --config ... --workdir ...
--config.k=v`) so that they take seconds; the last one runs real `vitx train` trials: a 2x2
grid of the tiny digits ViT, stopped after 2 trials and run again.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from vitx import sweep

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG = os.path.join(REPO, "configs", "vit_digits.py")

# ------------------------------------------------------------------------------------------------
# Running sweeps with a fake trainer (seconds per test).

FAKE_TRAINER = r'''
import json, os, signal, sys, time
args = sys.argv[1:]
assert args[0] == "train", args
workdir = args[args.index("--workdir") + 1]
over = dict(a[len("--config."):].split("=", 1) for a in args if a.startswith("--config."))
lr = float(over["lr"])
stop = []
signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
os.makedirs(workdir, exist_ok=True)
with open(os.path.join(workdir, "runs.txt"), "a") as f:
    f.write(f"{os.getpid()} resumed={os.path.exists(os.path.join(workdir, 'ckpt'))}\n")
if repr(lr) == os.environ.get("FAKE_FAIL_LR"):
    print("vitx: error: lr=%r diverged; lower lr" % lr, file=sys.stderr)
    sys.exit(2)
if repr(lr) == os.environ.get("FAKE_INTERRUPT_LR"):
    os.kill(os.getppid(), signal.SIGINT)  # Ctrl-C of the sweep
steps = int(os.environ.get("FAKE_STEPS", "3"))
for step in range(1, steps + 1):
    time.sleep(float(os.environ.get("FAKE_SLEEP", "0.05")))
    open(os.path.join(workdir, "ckpt"), "w").close()
    with open(os.path.join(workdir, "metrics.jsonl"), "a") as f:
        f.write(json.dumps({"step": step, "test/accuracy": lr * 100}) + "\n")
    if stop:
        print(f"vitx: stopped at step {step}/{steps}")
        sys.exit(0)
with open(os.path.join(workdir, "results.json"), "w") as f:
    json.dump({"step": steps, "test/accuracy": lr * 100, "test/loss": 1 - lr}, f)
'''


@pytest.fixture
def fake(tmp_path):
    path = tmp_path / "fake_trainer.py"
    path.write_text(FAKE_TRAINER)
    return [sys.executable, str(path)]


def runs(directory, name):
    with open(os.path.join(directory, name, "runs.txt")) as f:
        return f.read().splitlines()


def read_summary(directory):
    with open(os.path.join(directory, "summary.csv")) as f:
        return {r["name"]: r for r in csv.DictReader(f)}


def run_fake(fake, directory, sweeps, **kw):
    kw.setdefault("poll_seconds", 0.05)
    return sweep.run(config=CONFIG, directory=str(directory), sweeps=sweeps,
                     train_command=fake, **kw)


def test_failed_trial_stays_failed_until_retry_failed(fake, tmp_path, capsys):
    d = tmp_path / "sw"
    grid = ["config.lr=[0.001,0.003]"]
    out = run_fake(fake, d, grid, env={"FAKE_FAIL_LR": "0.003"})
    rows = read_summary(d)
    assert rows["lr=0.001"]["state"] == "COMPLETE"
    assert rows["lr=0.003"]["state"] == "FAIL"
    assert "diverged; lower lr" in rows["lr=0.003"]["note"]  # the trainer's error line
    assert out["started"] == 2
    out = run_fake(fake, d, grid, env={"FAKE_FAIL_LR": "0.003"})
    assert out["started"] == 0 and len(runs(d, "lr=0.003")) == 1
    run_fake(fake, d, grid, retry_failed=True)
    assert read_summary(d)["lr=0.003"]["state"] == "COMPLETE"
    assert len(runs(d, "lr=0.001")) == 1  # never retrained


def test_ctrl_c_interrupts_and_the_rerun_resumes(fake, tmp_path):
    d = tmp_path / "sw"
    grid = ["config.lr=[0.001,0.002,0.003]"]
    handler = signal.getsignal(signal.SIGINT)
    out = run_fake(fake, d, grid, env={"FAKE_INTERRUPT_LR": "0.002", "FAKE_STEPS": "40"})
    assert out["stopped"]
    assert read_summary(d)["lr=0.002"]["state"] == "INTERRUPTED"
    assert signal.getsignal(signal.SIGINT) is handler  # restored
    finished = {n for n, r in read_summary(d).items() if r["state"] == "COMPLETE"}
    run_fake(fake, d, grid, parallel=2)
    rows = read_summary(d)
    assert all(r["state"] == "COMPLETE" for r in rows.values()), rows
    assert runs(d, "lr=0.002")[-1].endswith("resumed=True")  # same workdir, resumed
    for name in finished:
        assert len(runs(d, name)) == 1


def test_killed_sweep_process_is_reclaimed(fake, tmp_path):
    """kill -9 of the sweep: its RUNNING trial (a dead local process) is retried; the orphan
    trainer still holds the workdir's lock, so the retry waits and reuses its results."""
    d = tmp_path / "sw"
    code = (f"from vitx import sweep; sweep.run(config={CONFIG!r}, directory={str(d)!r}, "
            f"sweeps=['config.lr=[0.001]'], train_command={fake!r}, poll_seconds=0.05)")
    env = dict(os.environ, FAKE_STEPS="30", FAKE_SLEEP="0.1")
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, cwd=REPO)
    deadline = time.monotonic() + 60
    while not os.path.exists(d / "lr=0.001" / "metrics.jsonl") and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    assert not os.path.exists(d / "lr=0.001" / "results.json")
    out = run_fake(fake, d, ["config.lr=[0.001]"])
    assert read_summary(d)["lr=0.001"]["state"] == "COMPLETE"
    assert len(runs(d, "lr=0.001")) == 1 and out["started"] == 1


def test_two_workers_share_one_study(fake, tmp_path):
    """Two `--worker` processes on one study: every grid point trained exactly once."""
    d = tmp_path / "sw"
    lrs = [0.001, 0.002, 0.003, 0.004, 0.005, 0.006]
    code = (f"from vitx import sweep; sweep.run(config={CONFIG!r}, directory={str(d)!r}, "
            f"sweeps=['config.lr={lrs}'], train_command={fake!r}, poll_seconds=0.05, "
            f"worker=True)")
    env = dict(os.environ, FAKE_STEPS="5", FAKE_SLEEP="0.1")
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env, cwd=REPO)
             for _ in range(2)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    rows = read_summary(d)
    assert len(rows) == 6 and all(r["state"] == "COMPLETE" for r in rows.values()), rows
    hosts = set()
    for name in rows:
        (line,) = runs(d, name)  # trained once
        hosts.add(line.split()[0])
    assert len(hosts) == 6  # 6 trainer processes


def test_random_search_extends_and_tpe_runs(fake, tmp_path):
    d = tmp_path / "rs"
    space = ["config.lr=loguniform(1e-4,1e-2)", "config.wd=choice(0.0, 0.1)"]
    run_fake(fake, d, space, search="random", trials=3)
    rows = read_summary(d)
    assert len(rows) == 3 and all(r["state"] == "COMPLETE" for r in rows.values())
    for name, r in rows.items():
        assert name.startswith(f"{int(r['trial']):03d}-lr=") and 1e-4 <= float(r["lr"]) <= 1e-2
        assert float(r["test/accuracy"]) == pytest.approx(float(r["lr"]) * 100)
    out = run_fake(fake, d, space, search="random", trials=4)  # 1 more, the 3 kept
    rows = read_summary(d)
    assert out["started"] == 1 and len(rows) == 4
    assert len({r["lr"] for r in rows.values()}) == 4  # the re-run samples new points
    out = run_fake(fake, tmp_path / "tpe", space, search="tpe", trials=3, parallel=2)
    assert out["started"] == 3
    with pytest.raises(sweep.SweepError, match="another sweep"):
        run_fake(fake, d, ["config.lr=uniform(0.1,0.2)"], search="random", trials=4)


def test_median_pruning_on_eval_metrics(fake, tmp_path):
    d = tmp_path / "pr"
    lrs = [0.006, 0.005, 0.004, 0.003, 0.002, 0.001]
    out = run_fake(fake, d, [f"config.lr={lrs}"], prune="median", prune_startup=2,
                   env={"FAKE_STEPS": "30", "FAKE_SLEEP": "0.03"})
    study = out["study"]
    done: list[float] = []
    pruned = 0
    for t in sorted(study.trials, key=lambda t: t.number):  # the MedianPruner rule, replayed
        lr = t.user_attrs["overrides"]["lr"]
        median = sorted(done)[(len(done) - 1) // 2] if done else None
        should = len(done) >= 2 and lr * 100 < (median + sorted(done)[len(done) // 2]) / 2
        assert (t.state.name == "PRUNED") == should, (t.number, lr, done)
        if t.state.name == "COMPLETE":
            done.append(lr * 100)
        pruned += t.state.name == "PRUNED"
    assert pruned >= 1
    rows = read_summary(d)
    assert sum(r["state"] == "PRUNED" for r in rows.values()) == pruned
    assert all(r["note"].startswith("pruned at step") for r in rows.values()
               if r["state"] == "PRUNED")


def test_metric_missing_from_results_is_an_error(fake, tmp_path):
    with pytest.raises(sweep.SweepError, match="--metric 'test/acc' is not in the results"):
        run_fake(fake, tmp_path / "m", ["config.lr=[0.001]"], metric="test/acc")


# ------------------------------------------------------------------------------------------------
# A real 2x2 grid: stopped after 2 trials, then run again.

PP_16 = "decode(channels=1)|resize(16)|value_range(-1,1)|onehot(10)"
TINY = [  # tests/train/test_trainer.py's tiny run, 4 steps
    "model.variant=pico/4", "model.width=32", "model.depth=2", "model.mlp_dim=64",
    "model.num_heads=2", f"input.pp={PP_16}", "input.batch_size=32",
    f"evals.test.pp={PP_16}", "evals.test.batch_size=120",
    "total_steps=4", "schedule.warmup_steps=2", "log_every_steps=1",
    "eval_every_steps=0", "checkpoint.every_steps=2", "checkpoint.keep=2",
]


def test_grid_sweep_interrupted_and_resumed(tmp_path, warm_vitx, data_dir):
    d = str(tmp_path / "sweep")
    cmd = [os.path.join(warm_vitx, "vitx"), "sweep", "--config", "configs/vit_digits.py",
           "--dir", d, "--sweep", "config.lr=[1e-3,3e-4]", "--sweep", "config.wd=[0.0,0.1]",
           *(f"--config.{o}" for o in TINY), f"--config.data_dir={data_dir}"]
    env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=str(tmp_path / "jax_cache"),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", TF_CPP_MIN_LOG_LEVEL="2",
               VITX_SWEEP_TRAIN_COMMAND=os.path.join(warm_vitx, "vitx"))  # trials start warm

    first = subprocess.run([*cmd, "--max-trials", "2"], cwd=REPO, env=env, capture_output=True,
                           text=True, timeout=300)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    rows = read_summary(d)
    assert len(rows) == 4
    finished = [n for n, r in rows.items() if r["state"] == "COMPLETE"]
    assert len(finished) == 2 and sum(r["state"] == "PENDING" for r in rows.values()) == 2
    mtimes = {n: os.stat(os.path.join(d, n, "results.json")).st_mtime_ns for n in finished}

    second = subprocess.run([*cmd, "--parallel", "2"], cwd=REPO, env=env, capture_output=True,
                            text=True, timeout=300)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    rows = read_summary(d)
    assert set(rows) == {"lr=0.001,wd=0", "lr=0.001,wd=0.1", "lr=0.0003,wd=0",
                         "lr=0.0003,wd=0.1"}
    assert all(r["state"] == "COMPLETE" for r in rows.values()), rows
    for n in rows:
        with open(os.path.join(d, n, "results.json")) as f:
            res = json.load(f)
        assert res["step"] == 4 and float(rows[n]["test/accuracy"]) == res["test/accuracy"]
        with open(os.path.join(d, n, "config.json")) as f:
            cfg = json.load(f)
        assert (cfg["lr"], cfg["wd"], cfg["model"]["width"]) == (
            float(rows[n]["lr"]), float(rows[n]["wd"]), 32)  # the trial's and the common ones
    for n, t in mtimes.items():
        assert os.stat(os.path.join(d, n, "results.json")).st_mtime_ns == t, n  # not redone
    assert sum("finished before" in ln or "training" in ln
               for ln in second.stdout.splitlines()) == 2  # only the 2 left were started
    with open(os.path.join(d, "summary.png"), "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert "best test/accuracy=" in second.stdout


def test_train_command_from_the_environment(monkeypatch):
    from vitx.sweep import runner

    monkeypatch.delenv(runner.TRAIN_COMMAND_ENV, raising=False)
    assert runner.default_train_command() == [sys.executable, "-m", "vitx.cli"]
    monkeypatch.setenv(runner.TRAIN_COMMAND_ENV, "taskset -c 0 '/opt/my env/vitx'")
    assert runner.default_train_command() == ["taskset", "-c", "0", "/opt/my env/vitx"]
    monkeypatch.setenv(runner.TRAIN_COMMAND_ENV, " ")
    with pytest.raises(runner.SweepError, match="VITX_SWEEP_TRAIN_COMMAND is set but empty"):
        runner.default_train_command()
