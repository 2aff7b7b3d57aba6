"""`vitx bench`: train-step throughput of a config, and ratios measured in one run.

Times the jitted, sharded train step on a synthetic batch of the config's shape (the input
pipeline is not timed) for several variants of the config and prints each one's steps/s and
images/s and its ratio to the first. Absolute numbers on shared CPUs are noisy; compare the
ratios, which are measured back to back in one process. Variants:
  base            the config as is
  bf16            model.dtype_mm = "bfloat16" (matmuls in bfloat16, params in float32)
  scan+remat      model.scan = True, model.remat_policy = "nothing_saveable"
  patch=<p>       for FlexiViT configs: one variant per patch size in flexi.patch_sizes
"""

from __future__ import annotations

import copy
import time
from typing import Any

import jax
import ml_collections
import numpy as np

from vitx.train import sharding as shd
from vitx.train import steps, trainer


def _time_variant(config: ml_collections.ConfigDict, num_steps: int,
                  plan: tuple = ()) -> tuple[float, float]:
    """(steps/s, compile seconds) of the train step of `config` on a fixed synthetic batch with
    the data's example spec, run with the static per-step choices `plan`."""
    s = trainer.setup(copy.deepcopy(config))
    state, state_shardings = s.init_state()
    bs = shd.batch_sharding(s.mesh)
    n = config.input.batch_size
    rng = np.random.RandomState(0)
    batch = {}
    for key, (shape, dtype) in s.spec.items():
        x = (rng.uniform(-1, 1, (n, *shape)) if np.issubdtype(dtype, np.floating)
             else rng.randint(0, config.num_classes, (n, *shape)))
        batch[key] = jax.device_put(x.astype(dtype), bs)
    fn = jax.jit(steps.make_train_step(s.model, s.tx, s.task,
                                       accum_steps=config.get("grad_accum_steps", 1),
                                       model_kw=dict(plan)),
                 in_shardings=(state_shardings, bs), donate_argnums=(0,))
    t0 = time.perf_counter()
    state, m = fn(state, batch)
    jax.block_until_ready(m)
    compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(num_steps):
        state, m = fn(state, batch)
    jax.block_until_ready(m)
    return num_steps / (time.perf_counter() - t0), compile_s


def run(config: ml_collections.ConfigDict, *, steps: int = 20) -> list[dict[str, Any]]:
    """Print and return one row per variant: name, steps/s, images/s, ratio to base."""
    config = copy.deepcopy(config)
    config.unlock()
    config.total_steps = config.get("total_steps") or 1000
    variants: list[tuple[str, ml_collections.ConfigDict, tuple]] = []
    if config.get("flexi"):
        for p in config.flexi.patch_sizes:
            variants.append((f"patch={p}", config, (("patch_size", p),)))
    else:
        variants.append(("base", config, ()))
        for name, updates in (("bf16", {"dtype_mm": "bfloat16"}),
                              ("scan+remat", {"scan": True, "remat_policy": "nothing_saveable"})):
            c = copy.deepcopy(config)
            c.model.update(updates)
            variants.append((name, c, ()))
    rows = []
    print(f"vitx bench: batch {config.input.batch_size}, {steps} timed steps, "
          f"{jax.device_count()} x {jax.devices()[0].platform}")
    for name, c, plan in variants:
        sps, compile_s = _time_variant(c, steps, plan)
        rows.append({"variant": name, "steps_per_sec": sps,
                     "img_per_sec": sps * config.input.batch_size, "compile_s": compile_s})
    base = rows[0]["steps_per_sec"]
    for r in rows:
        r["ratio"] = r["steps_per_sec"] / base
        print(f"  {r['variant']:<12} {r['steps_per_sec']:8.2f} steps/s  "
              f"{r['img_per_sec']:9.1f} img/s  x{r['ratio']:.2f} vs {rows[0]['variant']}  "
              f"(compile {r['compile_s']:.1f} s)")
    return rows
