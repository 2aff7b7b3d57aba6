"""The README is executable: every command of its ```bash blocks runs, verbatim and in order.

The commands fall into independent groups: commands that name the same run output (a
`workdirs/NAME` folder or a `NAME.npz` file) belong together and run in README order, one
group a test, so pytest-xdist runs the groups side by side. Each group runs in its own copy of
the repo (its `.venv` linked, so nothing is installed again; `data/` linked to one TFDS folder
where the offline datasets were built once for the session, since building them is tested in
tests/data), with `.venv/bin` first on PATH, relative paths exactly as written, and only
small-step overrides appended (`SMALL`): training and benchmarks are shortened, never changed.
A command the test must not run (the test suite itself, a pod launch) carries the comment
`# readme-test: skip` in the README, and is skipped by that mark. A command that exits non-zero
fails the test, with its output. The commands of all pytest workers share one persistent JAX
compilation cache, and compile with the session's `TEST_XLA_FLAGS` (tests/conftest.py), and
the `vitx` they find on PATH starts warm: a fork server that imported vitx, JAX and TensorFlow
once per worker (tests/zygote.py; each command is still its own process, run by bash as
written), and so do the trials of `vitx sweep` (`VITX_SWEEP_TRAIN_COMMAND`). Same commands and
results; only compile and import time are saved. A command that
names `.venv/bin/vitx` (`make train`) or `python` starts cold, as typed.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SKIP_MARK = "# readme-test: skip"
# Appended to commands of these forms so they finish in seconds (steps only; nothing else).
_TRAIN = ("--config.total_steps=3 --config.schedule.warmup_steps=1 "
          "--config.checkpoint.every_steps=0 --config.eval_every_steps=0 "
          "--config.log_every_steps=1")
SMALL = [
    (re.compile(r"^make train\b"), f'ARGS="{_TRAIN}"'),
    (re.compile(r"\bvitx (train|sweep)\b"), _TRAIN),
    (re.compile(r"\bvitx bench\b"), "--steps 1"),
    (re.compile(r"scripts/bench_peers\.py\b"),
     "--variant Ti/16 --batch 2 --image-size 32 --steps 1 --rounds 1"),
    (re.compile(r"scripts/scale_on_paper\.py\b"), "--quick"),
]


def readme_commands(text: str) -> list[str]:
    """The commands of the README's ```bash blocks, in order (continuation lines joined)."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        joined = re.sub(r"\\\n\s*", "", block)
        for line in joined.splitlines():
            if line.strip() and not line.lstrip().startswith("#"):
                commands.append(line.strip())
    return commands


_SHELL_OP = re.compile(r"\s+(?:\d?>|&|\||;)")


def with_small_steps(command: str) -> str:
    """`command` with its `SMALL` overrides, placed before any redirection, `&`, pipe or `;`."""
    cmd = command.split(" #", 1)[0].rstrip()
    for pattern, extra in SMALL:
        if pattern.search(cmd):
            op = _SHELL_OP.search(cmd)
            cut = op.start() if op else len(cmd)
            return f"{cmd[:cut]} {extra}{cmd[cut:]}"
    return cmd


def test_readme_parser():
    text = "x\n```bash\na --b \\\n   c  # note\n# comment\nd\n```\n```python\ne\n```\n"
    assert readme_commands(text) == ["a --b c  # note", "d"]
    assert with_small_steps("make train   # trains") == f'make train ARGS="{_TRAIN}"'
    assert with_small_steps("vitx train --config c.py").endswith("--config.log_every_steps=1")
    assert with_small_steps("vitx train --config c.py > log 2>&1 &") == (
        f"vitx train --config c.py {_TRAIN} > log 2>&1 &")


#: What ties commands together: a run's output folder or an exported file, named in both.
_OUTPUT = re.compile(r"workdirs/[A-Za-z0-9_]+|[\w.-]+\.npz\b")
#: Outputs a command writes without naming them (the Makefile's default WORKDIR).
_IMPLICIT = [(re.compile(r"^make train\b"), "workdirs/vit_digits")]


def command_groups(commands: list[str]) -> list[list[str]]:
    """`commands` (README order) split into groups that share no output, each in README order;
    groups ordered by their first command. Skipped commands are dropped, and so is a repeat of
    an earlier command that names no output (it would do the same thing again)."""
    kept: list[str] = []
    seen: set[str] = set()
    for cmd in commands:
        bare = re.split(r"\s+#\s", cmd)[0]  # the same command with another comment
        if SKIP_MARK in cmd or (bare in seen and not _OUTPUT.search(cmd)
                                and not any(p.search(cmd) for p, _ in _IMPLICIT)):
            continue
        kept.append(cmd)
        seen.add(bare)
    commands = kept
    parent = list(range(len(commands)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i
    first: dict[str, int] = {}
    for i, cmd in enumerate(commands):
        names = set(_OUTPUT.findall(cmd))
        names |= {name for pattern, name in _IMPLICIT if pattern.search(cmd)}
        for name in sorted(names):  # never set order: it varies with PYTHONHASHSEED
            if name in first:
                parent[root(i)] = root(first[name])
            else:
                first[name] = i
    groups: dict[int, list[str]] = {}
    for i, cmd in enumerate(commands):
        groups.setdefault(root(i), []).append(cmd)
    # by first command, the same in every process (pytest-xdist workers must collect alike)
    return sorted(groups.values(), key=lambda g: commands.index(g[0]))


def test_command_groups():
    cmds = ["make train", "vitx eval --checkpoint workdirs/vit_digits", "vitx bench",
            "vitx train --workdir workdirs/a", "vitx export --checkpoint workdirs/a --output a.npz",
            "vitx eval --checkpoint a.npz", "make test  # readme-test: skip"]
    assert command_groups(cmds) == [cmds[:2], [cmds[2]], cmds[3:6]]
    # a repeated command without outputs runs once; one with outputs runs again (a resume)
    again = cmds + ["vitx bench  # steps/s", "vitx eval --checkpoint a.npz"]
    assert command_groups(again) == [cmds[:2], [cmds[2]], cmds[3:6] + [cmds[5]]]


def test_command_groups_same_in_every_process():
    """pytest-xdist workers must collect the same tests in the same order: the groups may not
    depend on Python's per-process string hash (set order)."""
    code = ("import sys; sys.path.insert(0, 'tests'); import test_readme as t; "
            "print([g[0] for g in t.GROUPS])")
    outs = {subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                           text=True, check=True,
                           env=dict(os.environ, PYTHONHASHSEED=str(seed))).stdout
            for seed in (0, 1, 2, 3)}
    assert len(outs) == 1, outs


def _readme_groups() -> list[list[str]]:
    with open(os.path.join(ROOT, "README.md")) as f:
        return command_groups(readme_commands(f.read()))


GROUPS = _readme_groups()


def test_every_command_is_in_a_group():
    with open(os.path.join(ROOT, "README.md")) as f:
        commands = [c for c in readme_commands(f.read()) if SKIP_MARK not in c]
    def bare(cmd: str) -> str:
        return re.split(r"\s+#\s", cmd)[0]
    assert sorted({bare(c) for g in GROUPS for c in g}) == sorted({bare(c) for c in commands})
    assert len(commands) >= 8, commands
    assert any(c.startswith("make train") for c in commands)


@pytest.fixture(scope="session")
def shared_tfds(tmp_path_factory) -> str:
    """One TFDS folder with the offline datasets the README uses, built once for all pytest
    workers (under a file lock in the folder the workers share)."""
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent
    folder = os.path.join(str(base), "readme_tfds")
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if not os.path.exists(os.path.join(folder, ".built")):
                from vitx.data.builders import LOCAL_BUILDERS, ensure_built

                # sample_photos (3,000 JPEGs) is benchmark data: no README command reads it
                for name in sorted(LOCAL_BUILDERS - {"sample_photos"}):
                    ensure_built(name, folder)
                open(os.path.join(folder, ".built"), "w").close()
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return folder


def _repo_copy(dst: str, tfds: str) -> str:
    ignore = shutil.ignore_patterns(".venv*", ".git", "data", "workdirs", "__pycache__",
                                    ".pytest_cache", ".ruff_cache", "*.egg-info", ".jax_cache")
    shutil.copytree(ROOT, dst, ignore=ignore)  # copy2 keeps mtimes: make sees the install
    os.symlink(os.path.join(ROOT, ".venv"), os.path.join(dst, ".venv"))
    os.makedirs(os.path.join(dst, "data"))
    os.symlink(tfds, os.path.join(dst, "data", "tfds"))
    # `make` must see the install as up to date, or it would reinstall the shared venv from
    # the copy.
    stamp = os.path.join(ROOT, ".venv", ".installed")
    assert os.path.getmtime(stamp) >= os.path.getmtime(os.path.join(dst, "pyproject.toml")), (
        "the .venv is older than pyproject.toml: run `make install` (or `make test`) first")
    return dst


def _readme_env(repo: str, shared_dir) -> dict[str, str]:
    env = dict(os.environ, PATH=os.path.join(repo, ".venv", "bin") + os.pathsep
               + os.environ["PATH"])
    env["JAX_COMPILATION_CACHE_DIR"] = str(shared_dir / "readme_jax_cache")  # all workers
    env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    return env


def test_warm_vitx_acts_as_vitx(warm_vitx, tmp_path):
    """The warm `vitx` prints and exits as the installed one: a bad config argument (stderr,
    exit 2) and a command with an environment prefix and a redirection in another cwd; and
    killing it (kill -9, as a test timeout does) ends the command it started."""
    real = os.path.join(ROOT, ".venv", "bin", "vitx")
    cmds = ["{} train --config configs/vit_digits.py:stpes=3 --workdir w",
            "cd {tmp} && X=1 {} info " + os.path.join(ROOT, "tests/fixtures/timm/vit_c1")
            + " > info.txt; cat info.txt"]
    for cmd in cmds:
        outs = [subprocess.run(["bash", "-c", cmd.format(exe, tmp=tmp_path)], cwd=ROOT,
                               capture_output=True, text=True)
                for exe in (real, os.path.join(warm_vitx, "vitx"))]
        assert [(o.returncode, o.stdout, o.stderr.splitlines()[-1:]) for o in outs[1:]] == [
            (outs[0].returncode, outs[0].stdout, outs[0].stderr.splitlines()[-1:])], cmd
    assert outs[0].returncode == 0 and "vit" in outs[0].stdout
    shim = subprocess.Popen([os.path.join(warm_vitx, "vitx"), "train", "--config",
                             "configs/vit_digits.py", "--workdir", str(tmp_path / "w")],
                            cwd=ROOT)
    with open(os.path.join(warm_vitx, "zygote.pid")) as f:
        server = f.read().strip()

    def running() -> bool:  # a command the server forked is alive
        return subprocess.run(["pgrep", "-P", server], capture_output=True).returncode == 0
    deadline = time.monotonic() + 30
    while not running() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert running()
    shim.kill()
    shim.wait()
    deadline = time.monotonic() + 30
    while running() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not running()


@pytest.mark.parametrize("group", GROUPS, ids=[
    f"{i}-{g[0].split()[0]}-{len(g)}" for i, g in enumerate(GROUPS)])
def test_readme_commands_run_as_written(group, shared_tfds, shared_dir, warm_vitx, tmp_path):
    repo = _repo_copy(str(tmp_path / "vitx"), shared_tfds)
    env = _readme_env(repo, shared_dir)
    env["PATH"] = warm_vitx + os.pathsep + env["PATH"]  # `vitx` starts warm (zygote.py)
    env["VITX_SWEEP_TRAIN_COMMAND"] = os.path.join(warm_vitx, "vitx")  # and so do sweep trials
    for command in group:
        cmd = with_small_steps(command)
        out = subprocess.run(["bash", "-c", cmd], cwd=repo, env=env, capture_output=True,
                             text=True, timeout=600)
        assert out.returncode == 0, (f"README command failed ({out.returncode}): {cmd}\n"
                                     f"{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
