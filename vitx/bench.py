"""`vitx bench`: train-step throughput of a config, and ratios measured in one run.

Times the jitted, sharded train step on a synthetic batch of the config's shape (the input
pipeline is not timed) for several variants of the config and prints each one's steps/s and
images/s and its ratio to the first. Absolute numbers on shared CPUs are noisy; compare the
ratios, which are measured back to back in one process. Variants:
  base            the config as is
  bf16            model.dtype_mm = "bfloat16" (matmuls in bfloat16, params in float32)
  scan+remat      model.scan = True, model.remat_policy = "nothing_saveable"
  patch=<p>       for FlexiViT configs: one variant per patch size in flexi.patch_sizes
  co-training     for multi-task configs (PolyViT): the config's task schedule over all its
                  tasks vs single-task models of the same shapes, each run for the steps its
                  task gets in the schedule; the ratio is single-task time / co-training time
                  (1.0: co-training costs nothing extra per step)
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


def _synthetic_batch(spec: dict, batch_size: int, num_classes: int, sharding: Any) -> dict:
    """A fixed random batch of `spec`'s keys: floats in [-1, 1), ints in [0, num_classes)."""
    rng = np.random.RandomState(0)
    batch = {}
    for key, (shape, dtype) in spec.items():
        x = (rng.uniform(-1, 1, (batch_size, *shape)) if np.issubdtype(dtype, np.floating)
             else rng.randint(0, num_classes, (batch_size, *shape)))
        batch[key] = jax.device_put(x.astype(dtype), sharding)
    return batch


class _PlanRunner:
    """The train steps of `config` on synthetic batches, every distinct plan compiled (and run
    once) on construction; `time(plans)` runs one step per plan and returns the seconds."""

    def __init__(self, config: ml_collections.ConfigDict, plans: list[tuple]):
        self.s = s = trainer.setup(copy.deepcopy(config))
        self.state, _ = s.init_state()
        bs = shd.batch_sharding(s.mesh)
        self.batches = {name: _synthetic_batch(r.spec, r.input.batch_size, r.task.num_classes,
                                               bs) for name, r in s.routes.items()}
        self.fns: dict = {}
        t0 = time.perf_counter()
        for plan in dict.fromkeys(plans):
            self.fns[plan] = jax.jit(s.make_step(plan), donate_argnums=(0,))
            jax.block_until_ready(self._step(plan))
        self.compile_s = time.perf_counter() - t0

    def _step(self, plan: tuple) -> Any:
        b = tuple(self.batches[r.name] for r in self.s.route_plan(plan)[0])
        self.state, m = self.fns[plan](self.state, b[0] if len(b) == 1 else b)
        return m

    def time(self, plans: list[tuple]) -> float:
        t0 = time.perf_counter()
        m = None
        for plan in plans:
            m = self._step(plan)
        jax.block_until_ready(m)
        return time.perf_counter() - t0


def run_multitask(config: ml_collections.ConfigDict, *, steps: int = 40,
                  rounds: int = 4) -> list[dict[str, Any]]:
    """Co-training vs single-task step time of a multi-task config, measured in one process.

    Co-training runs the first `steps` steps of the config's task schedule; each single-task
    model (the same config with only that task: its tokenizer and head) runs as many steps as
    its task got. The timings are interleaved in `rounds` rounds (each round runs a 1/rounds
    slice of every variant back to back) so a load change on a shared machine hits all of
    them alike. Prints and returns rows: name, steps, seconds, and for the co-training row
    `ratio` = (sum of single-task seconds) / (co-training seconds).
    """
    s = trainer.setup(copy.deepcopy(config))
    plans = [s.plan(i) for i in range(min(steps, s.config.total_steps))]
    variants = [(f"co-training ({config.multitask.schedule})", config, plans)]
    for i, task in enumerate(config.multitask.tasks):
        n = sum(task["name"] in dict(p).get("tasks", ()) for p in plans)
        if n == 0:
            continue
        c = copy.deepcopy(config)
        c.multitask.tasks = [config.multitask.tasks[i]]
        c.model.heads = {task["name"]: config.model.heads[task["name"]]}
        modality = task["model_kw"]["modality"]
        c.model.modalities = {modality: config.model.modalities[modality]}
        variants.append((f"single-task {task['name']}", c,
                         [trainer.setup(copy.deepcopy(c)).plan(0)] * n))
    runners = [_PlanRunner(c, p) for _, c, p in variants]
    seconds = [0.0] * len(variants)
    for k in range(rounds):
        for v, (runner, (_, _, p)) in enumerate(zip(runners, variants, strict=True)):
            lo, hi = len(p) * k // rounds, len(p) * (k + 1) // rounds
            seconds[v] += runner.time(p[lo:hi])
    rows = [{"variant": name, "steps": len(p), "seconds": sec, "compile_s": r.compile_s}
            for (name, _, p), sec, r in zip(variants, seconds, runners, strict=True)]
    rows[0]["ratio"] = sum(r["seconds"] for r in rows[1:]) / rows[0]["seconds"]
    print(f"vitx bench (multi-task): {len(plans)} steps of the {config.multitask.schedule} "
          f"schedule, {rounds} interleaved rounds, {jax.device_count()} x "
          f"{jax.devices()[0].platform}")
    for r in rows:
        print(f"  {r['variant']:<34} {r['steps']:4d} steps {r['seconds']:8.2f} s "
              f"(compile {r['compile_s']:.1f} s)")
    print(f"  single-task / co-training time: x{rows[0]['ratio']:.3f} (goal >= 0.95)")
    return rows


def _time_variant(config: ml_collections.ConfigDict, num_steps: int,
                  plan: tuple = ()) -> tuple[float, float]:
    """(steps/s, compile seconds) of the train step of `config` on a fixed synthetic batch with
    the data's example spec, run with the static per-step choices `plan`."""
    s = trainer.setup(copy.deepcopy(config))
    state, state_shardings = s.init_state()
    bs = shd.batch_sharding(s.mesh)
    batch = _synthetic_batch(s.spec, config.input.batch_size, config.num_classes, bs)
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
    if config.get("multitask"):
        return run_multitask(config, steps=steps)
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
