"""Where a run's time goes: profiler traces, data waits, goodput, the compilation cache, run info.

The train loop (`vitx.train.trainer`) only calls the hooks defined here:

- `StepProfiler`: `config.profile = dict(start_step=S, num_steps=N)` records a JAX profiler
  trace of the train steps S .. S+N-1 (step s is the one that starts from the state of step s;
  its progress line is `[step s+1]`), each step (its batch fetch and its train step) inside
  `jax.profiler.StepTraceAnnotation("train", step_num=s)`, in
  `WORKDIR/plugins/profile/<time>/<host>.xplane.pb`: open it with
  `tensorboard --logdir WORKDIR` (Profile tab; needs the `tensorboard-plugin-profile` package)
  or in Perfetto (ui.perfetto.dev) via xprof. A resumed run traces what is left of the range.
  Sources: JAX's "Profiling computation" guide (`jax.profiler.start_trace`); scenic's
  `periodic_actions.Profile` and maxtext's `profiler_steps` take the same start/length form.
- `RunClock`: the run's wall seconds split into disjoint parts (`PARTS`), kept as goodput in
  `results.json` (`goodput/<part>_s`, `goodput/wall_s`, `goodput/other_s` = wall minus the named
  parts, `goodput/train_frac` = train-step seconds over wall seconds) and printed at the end as
  one line, `vitx: goodput: ...`. Its data waits also give the progress rows' `data_wait_frac`
  (`vitx.train.writers.Progress`). With asynchronous dispatch the host blocks on the device where
  it reads results back (progress rows, the NaN guard): that time, and the explicit wait for the
  state before every eval and save, is counted as train steps.
- `use_compilation_cache`: JAX's persistent compilation cache, on by default
  (`config.compilation_cache`, see below), so a repeated or resumed run loads its compiled
  programs instead of compiling them again. Compiled programs are the same, so results are
  bitwise the same with a warm cache.
- `run_info`: the device and software a run ran on (`WORKDIR/run_info.json`, next to
  config.json), so a number quoted from a run says where it came from.

Config keys (optional; `vitx.config.validate` checks them, one-line errors):

- `profile`: None (default: no trace) or `dict(start_step=S, num_steps=N)`, S >= 0, N >= 1,
  S < total_steps; on the command line `--config.profile="{'start_step': 2, 'num_steps': 3}"`.
- `compilation_cache`: "auto" (default: JAX's cache dir where one is already set, e.g. by
  `JAX_COMPILATION_CACHE_DIR`, else `$XDG_CACHE_HOME/vitx/jax`, `~/.cache/vitx/jax` without
  XDG_CACHE_HOME), a folder, or None (`--config.compilation_cache=None`: off). Programs that
  compile in under `jax_persistent_cache_min_compile_time_secs` (JAX's default 1 s; env
  `JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS`) are not stored.
"""

from __future__ import annotations

import contextlib
import datetime
import importlib.metadata
import os
import platform
import socket
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import jax

from vitx.utils import ConfigError

#: The named parts of a run's wall time (`RunClock`), in seconds; the rest is `other`.
#: startup: config, model, restore or init, input streams, config.json (before the loop).
#: compile: first call of each train-step program (trace + compile, or a cache load).
#: step: train steps (dispatch, and host waits for their results).
#: data_wait: host blocked on the next batch. eval: evaluators (their compiles too).
#: checkpoint: the blocking part of saves (the async write runs on), and the final wait for them.
PARTS = ("startup", "compile", "step", "data_wait", "eval", "checkpoint")

#: `config.compilation_cache` value that picks the default folder.
AUTO = "auto"

#: Distributions reported in run_info.json: name -> candidate distribution names.
PACKAGES = {"jax": ("jax",), "jaxlib": ("jaxlib",), "flax": ("flax",), "optax": ("optax",),
            "orbax-checkpoint": ("orbax-checkpoint",),
            "tensorflow": ("tensorflow", "tensorflow-cpu", "tf-nightly"),
            "tensorflow-datasets": ("tensorflow-datasets",), "vitx": ("vitx",)}


class RunClock:
    """A run's wall seconds since construction, split into the disjoint `PARTS`.

    `part(name)` times a block into one part (blocks must not nest); `first(key)` says whether a
    compiled program (a per-step plan) runs for the first time in this process.
    """

    def __init__(self) -> None:
        self.t0 = time.perf_counter()
        self.seconds = dict.fromkeys(PARTS, 0.0)
        self._seen: set = set()

    @contextlib.contextmanager
    def part(self, name: str) -> Iterator[None]:
        """Add the seconds the block takes to part `name` (one of `PARTS`)."""
        t = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] += time.perf_counter() - t

    def first(self, key: Any) -> bool:
        """True the first time `key` is asked (its program then compiles or loads)."""
        if key in self._seen:
            return False
        self._seen.add(key)
        return True

    def goodput(self) -> dict[str, float]:
        """{"goodput/wall_s": seconds so far, "goodput/<part>_s" per part, "goodput/other_s":
        wall minus the parts (>= 0), "goodput/train_frac": step seconds / wall seconds}."""
        wall = time.perf_counter() - self.t0
        out = {"goodput/wall_s": wall}
        out.update({f"goodput/{k}_s": v for k, v in self.seconds.items()})
        out["goodput/other_s"] = max(wall - sum(self.seconds.values()), 0.0)
        out["goodput/train_frac"] = self.seconds["step"] / max(wall, 1e-9)
        return out


def goodput_line(goodput: dict[str, float]) -> str:
    """The one printed line of a `RunClock.goodput()` dict, e.g. `vitx: goodput: 71.2% of
    12.3 s in train steps; startup 2.0 s, compile 1.1 s, data wait 0.2 s, ...`."""
    parts = ", ".join(f"{k.replace('_', ' ')} {goodput[f'goodput/{k}_s']:.2f} s"
                      for k in (*PARTS[:2], *PARTS[3:], "other"))
    return (f"vitx: goodput: {goodput['goodput/train_frac']:.1%} of "
            f"{goodput['goodput/wall_s']:.2f} s in train steps "
            f"({goodput['goodput/step_s']:.2f} s); {parts}")


def peak_memory_gib() -> float | None:
    """Peak GiB in use on the first local device since start, where the backend reports it
    (`Device.memory_stats()`: GPU, TPU); None elsewhere (CPU)."""
    stats = jax.local_devices()[0].memory_stats() or {}
    peak = stats.get("peak_bytes_in_use")
    return None if peak is None else peak / 2**30


class StepProfiler:
    """`config.profile`: a JAX profiler trace of train steps [start_step, start_step +
    num_steps) in `workdir` (`workdir/plugins/profile/...`), on process 0 only.

    Use as a context manager around the loop (a trace still open at exit, e.g. a stop signal
    or an error inside the range, is stopped and written); per step: `with profiler.step(s):`
    around fetching the batch and running step s, then `profiler.after(s + 1, outputs)`.

    Args:
      profile: the run's `ProfileConfig` (`vitx.train.run_config`), or None: no trace.
      workdir: the trace's log dir.
    """

    def __init__(self, profile: Any, workdir: str):
        on = profile is not None and jax.process_index() == 0
        self.start = profile.start_step if on else 0
        self.end = profile.start_step + profile.num_steps if on else 0
        self.workdir, self.active = workdir, False

    def step(self, step: int) -> contextlib.AbstractContextManager:
        """The context of step `step`: starts the trace at the range's first step (or the
        first one after a resume); inside the range, a `StepTraceAnnotation`."""
        if not self.active and self.start <= step < self.end:
            jax.profiler.start_trace(self.workdir)
            self.active = True
        if self.active:
            return jax.profiler.StepTraceAnnotation("train", step_num=step)
        return contextlib.nullcontext()

    def after(self, done: int, outputs: Any) -> None:
        """After a step, `done` steps done: at the range's end, wait for `outputs` (the last
        step's results) and write the trace."""
        if self.active and done >= self.end:
            jax.block_until_ready(outputs)
            self.stop()

    def stop(self) -> None:
        """Stop an open trace and write it (a no-op when none is open)."""
        if self.active:
            self.active = False
            jax.profiler.stop_trace()
            print(f"vitx: profile of steps {self.start}..{self.end - 1} written to "
                  f"{os.path.join(self.workdir, 'plugins', 'profile')}; view it with "
                  f"`tensorboard --logdir {self.workdir}` (Profile tab)", flush=True)

    def __enter__(self) -> StepProfiler:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def trace_steps(log_dir: str, num_steps: int, run_step: Callable[[int], Any]) -> str:
    """A profiler trace of `num_steps` calls `run_step(i)` (each in a `StepTraceAnnotation`
    "train" with step_num i; the last call's outputs are waited for) in
    `log_dir/plugins/profile/`; returns that folder. Used by `vitx bench --profile`."""
    jax.profiler.start_trace(log_dir)
    try:
        out = None
        for i in range(num_steps):
            with jax.profiler.StepTraceAnnotation("train", step_num=i):
                out = run_step(i)
        jax.block_until_ready(out)
    finally:
        jax.profiler.stop_trace()
    return os.path.join(log_dir, "plugins", "profile")


def default_cache_dir() -> str:
    """`$XDG_CACHE_HOME/vitx/jax`, or `~/.cache/vitx/jax` without XDG_CACHE_HOME."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "vitx", "jax")


def use_compilation_cache(setting: str | None = AUTO) -> str | None:
    """Point JAX's persistent compilation cache at `setting` (`config.compilation_cache`):
    "auto" (JAX's cache dir where one is set, else `default_cache_dir()`), a folder, or None
    (off). Returns the folder in use (None: off).

    A default folder that cannot be created turns the cache off with a printed note.

    Raises:
      ConfigError: a folder given in the config that cannot be created.
    """
    from jax.experimental.compilation_cache import compilation_cache as cc

    current = jax.config.jax_compilation_cache_dir
    path = (current or default_cache_dir()) if setting == AUTO else setting
    if path:
        path = os.path.abspath(os.path.expanduser(path))
        try:
            os.makedirs(path, exist_ok=True)
        except OSError as e:
            if setting != AUTO:
                raise ConfigError(f"compilation_cache={setting!r}: cannot create it ({e}); "
                                  f"pass a writable folder or --config.compilation_cache=None"
                                  ) from None
            print(f"vitx: compilation cache off: cannot create {path} ({e})", flush=True)
            path = None
    if path != current:
        jax.config.update("jax_compilation_cache_dir", path)
        cc.reset_cache()  # the cache object is built once; let it pick up the new folder
    return path


def _version(names: tuple[str, ...]) -> str | None:
    for name in names:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def cpu_model() -> str | None:
    """The CPU's "model name" from /proc/cpuinfo (Linux), else `platform.processor()`, or
    None."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def run_info() -> dict[str, Any]:
    """Where a run ran (`WORKDIR/run_info.json`).

    Returns a JSON-able dict: `device` {platform, kind, count (global devices),
    local_count}, `process_count`, `versions` {jax, jaxlib, flax, optax, orbax-checkpoint,
    tensorflow, tensorflow-datasets, vitx: version string or None where not installed},
    `python`, `cpu` (model name or None), `hostname`, `compilation_cache` (folder or None) and
    `time_utc` (ISO 8601, when written).
    """
    dev = jax.devices()[0]
    return {
        "device": {"platform": dev.platform, "kind": dev.device_kind,
                   "count": jax.device_count(), "local_count": jax.local_device_count()},
        "process_count": jax.process_count(),
        "versions": {k: _version(v) for k, v in PACKAGES.items()},
        "python": sys.version.split()[0],
        "cpu": cpu_model(),
        "hostname": socket.gethostname(),
        "compilation_cache": jax.config.jax_compilation_cache_dir,
        "time_utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
