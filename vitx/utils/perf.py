"""Performance accounting shared by `vitx bench` and scripts/bench_peers.py: FLOPs and memory of
a compiled XLA program, and the machine's matmul peak measured in the same run (so a model
FLOP utilisation is a ratio of two numbers from one run, not of a step to a datasheet).

Imports jax only (no TensorFlow), so it runs on a GPU image with jax, flax and optax.
"""

from __future__ import annotations

import time
from typing import Any

import jax
import jax.numpy as jnp


def compiled_stats(compiled: Any) -> dict[str, float]:
    """FLOPs and memory of a `jax.stages.Compiled` program (XLA's own analyses).

    Returns a dict with `flops` (float, per call; 0 where the backend reports none) and, where
    the backend reports a memory analysis, `memory_bytes` (arguments + outputs + temporaries -
    donated aliases: the program's peak working set on one device, bytes), `argument_bytes`
    (e.g. params + optimizer state + batch) and `temp_bytes` (activations and scratch).
    """
    cost = compiled.cost_analysis()
    if isinstance(cost, list | tuple):
        cost = cost[0] if cost else {}
    out: dict[str, float] = {"flops": float((cost or {}).get("flops", 0.0))}
    try:
        mem = compiled.memory_analysis()
    except (NotImplementedError, jax.errors.JaxRuntimeError):
        mem = None
    if mem is not None:
        out["argument_bytes"] = int(mem.argument_size_in_bytes)
        out["temp_bytes"] = int(mem.temp_size_in_bytes)
        out["memory_bytes"] = int(mem.argument_size_in_bytes + mem.output_size_in_bytes
                                  + mem.temp_size_in_bytes - mem.alias_size_in_bytes)
    return out


def matmul_peak(dtype: str = "float32", sizes: tuple[int, ...] | None = None,
                seconds: float = 0.5) -> float:
    """The best FLOP/s of square `(n, n) @ (n, n)` matmuls in `dtype` on the default device.

    `sizes` default: 1024 and 2048 on CPU, 4096 and 8192 on accelerators. Each size runs for
    about `seconds` after a warm-up call. Returns FLOP/s (2 n^3 per product).
    """
    if sizes is None:
        sizes = (1024, 2048) if jax.default_backend() == "cpu" else (4096, 8192)
    best = 0.0
    f = jax.jit(lambda a: a @ a)
    for n in sizes:
        a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.dtype(dtype))
        jax.block_until_ready(f(a))
        reps, t0 = 0, time.perf_counter()
        out = None
        while reps == 0 or time.perf_counter() - t0 < seconds:
            out = f(a)
            reps += 1
            if reps % 4 == 0:
                jax.block_until_ready(out)
        jax.block_until_ready(out)
        best = max(best, 2 * n**3 * reps / (time.perf_counter() - t0))
    return best


def device_peak_memory() -> int | None:
    """Peak bytes in use on the first device since start (GPU/TPU; None where unreported)."""
    stats = jax.devices()[0].memory_stats() or {}
    peak = stats.get("peak_bytes_in_use")
    return int(peak) if peak is not None else None
