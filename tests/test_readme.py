"""The README is executable: every command of its ```bash blocks runs, verbatim and in order.

The repo is copied to a temporary folder (its `.venv` linked, so nothing is installed again),
`.venv/bin` is put first on PATH, and each command runs with relative paths exactly as written,
with only small-step overrides appended (`SMALL`): training and benchmarks are shortened, never
changed. A command the test must not run (the test suite itself, a pod launch) carries the
comment `# readme-test: skip` in the README, and is skipped by that mark. A command that exits
non-zero fails the test, with its output.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess

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


@pytest.fixture(scope="module")
def repo_copy(tmp_path_factory) -> str:
    dst = str(tmp_path_factory.mktemp("readme") / "vitx")
    ignore = shutil.ignore_patterns(".venv", ".git", "data", "workdirs", "__pycache__",
                                    ".pytest_cache", ".ruff_cache", "*.egg-info")
    shutil.copytree(ROOT, dst, ignore=ignore)  # copy2 keeps mtimes: make sees the install
    os.symlink(os.path.join(ROOT, ".venv"), os.path.join(dst, ".venv"))
    # `make` must see the install as up to date, or it would reinstall the shared venv from
    # the copy.
    stamp = os.path.join(ROOT, ".venv", ".installed")
    assert os.path.getmtime(stamp) >= os.path.getmtime(os.path.join(dst, "pyproject.toml")), (
        "the .venv is older than pyproject.toml: run `make install` (or `make test`) first")
    return dst


def test_every_readme_command_runs_as_written(repo_copy):
    with open(os.path.join(ROOT, "README.md")) as f:
        commands = readme_commands(f.read())
    assert len(commands) >= 8, commands
    env = dict(os.environ, PATH=os.path.join(repo_copy, ".venv", "bin") + os.pathsep
               + os.environ["PATH"])
    env.pop("XLA_FLAGS", None)
    # One persistent compilation cache for all commands: later commands reuse the programs
    # earlier ones compiled (same results; only the compile time is saved).
    env["JAX_COMPILATION_CACHE_DIR"] = os.path.join(repo_copy, ".jax_cache")
    env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    ran = []
    for command in commands:
        if SKIP_MARK in command:
            continue
        cmd = with_small_steps(command)
        out = subprocess.run(["bash", "-c", cmd], cwd=repo_copy, env=env, capture_output=True,
                             text=True, timeout=600)
        assert out.returncode == 0, (f"README command failed ({out.returncode}): {cmd}\n"
                                     f"{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
        ran.append(shlex.split(cmd)[0])
    assert "make" in ran and "vitx" in ran
