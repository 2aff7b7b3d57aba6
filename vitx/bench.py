"""`vitx bench`: train-step throughput of a config, and ratios measured in one run.

Times the jitted, sharded train step (the trainer's: shardings, donation) on a synthetic batch
of the config's shape for several variants of the config and prints each one's steps/s,
images/s, ratio to the first, compile time, FLOPs per step (XLA's cost analysis), MFU (model
FLOP/s over the matmul peak measured in the same run, `vitx.utils.perf`) and the program's
memory (XLA's memory analysis; the device's peak where the backend reports one). Then, on the
first variant: the real input pipeline (tf.data -> prefetched device arrays) vs the synthetic
batch, and the cost of an async checkpoint save in flight; for FlexiViT, the programs compiled
over the schedule's first steps. Absolute numbers on shared CPUs are noisy; compare the ratios,
which are measured back to back in one process. With `profile` (`vitx bench --profile [DIR]`),
the first variant's steps are also traced, after the timings (so the trace does not slow them),
into `DIR/plugins/profile/` (`vitx.train.profiling.trace_steps`; open with
`tensorboard --logdir DIR`). Variants:
  base            the config as is
  plain           ViT-family models: patch_embed="conv", attention_impl="einsum" (the layouts
                  before the fast paths; big_vision's)
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
import tempfile
import time
from typing import Any

import jax
import ml_collections
import numpy as np

from vitx import config as config_lib
from vitx.train import profiling, steps, trainer
from vitx.train import sharding as shd
from vitx.utils import perf

# models with the `patch_embed` / `attention_impl` fast paths (the "plain" variant turns them off)
FAST_PATH_MODELS = ("vit", "flexivit", "hybrid", "vit_hybrid", "polyvit")


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


class _Bench:
    """One variant's jitted train step (the trainer's: shardings, donation, plugins' static
    choices `plan`), its compiled program's FLOPs and memory, and timers for it on a fixed
    synthetic batch, on the real input pipeline and with an async checkpoint in flight."""

    def __init__(self, config: ml_collections.ConfigDict, plan: tuple = ()):
        self.config = config
        self.s = s = trainer.setup(copy.deepcopy(config))
        self.state, shardings = s.init_state()
        self.batch_sharding = shd.batch_sharding(s.mesh)
        self.batch = _synthetic_batch(s.spec, config.input.batch_size, config.num_classes,
                                      self.batch_sharding)
        self.fn = jax.jit(s.make_step(plan), in_shardings=(shardings, self.batch_sharding),
                          out_shardings=(shardings, shd.replicated(s.mesh)),
                          donate_argnums=(0,))
        t0 = time.perf_counter()
        compiled = self.fn.lower(self.state, self.batch).compile()
        self.stats = perf.compiled_stats(compiled)
        self.state, m = self.fn(self.state, self.batch)
        jax.block_until_ready(m)
        self.compile_s = time.perf_counter() - t0

    def time(self, num_steps: int, batches: Any = None, before: Any = None) -> float:
        """Seconds for `num_steps` steps (batches from the iterator `batches`, else the fixed
        synthetic one), after calling `before()` (timed too) if given."""
        t0 = time.perf_counter()
        if before is not None:
            before()
        m = None
        for _ in range(num_steps):
            self.state, m = self.fn(self.state, next(batches) if batches else self.batch)
        jax.block_until_ready(m)
        return time.perf_counter() - t0

    def trace(self, num_steps: int, log_dir: str) -> str:
        """A profiler trace of `num_steps` steps on the synthetic batch in `log_dir`; returns
        the folder the trace went to (`log_dir/plugins/profile`)."""
        jax.block_until_ready(self.state)

        def one(_: int) -> Any:
            self.state, m = self.fn(self.state, self.batch)
            return m
        return profiling.trace_steps(log_dir, num_steps, one)

    def pipeline(self) -> Any:
        """The run's real training input: tf.data pipeline -> global device arrays, prefetched."""
        from vitx.data import pipeline

        inp = self.s.main.input
        ds = pipeline.build_dataset(
            name=inp.dataset, split=inp.split, data_dir=self.config.get("data_dir"), pp=inp.pp,
            global_batch_size=inp.batch_size, train=True, seed=self.config.get("seed", 0),
            start_step=0, shuffle_buffer=inp.get("shuffle_buffer", 10_000),
            cache=inp.get("cache", True), label_subset=inp.get("label_subset"))
        return pipeline.global_batches(ds, self.batch_sharding)


def _checks(b: _Bench, num_steps: int, rounds: int = 3) -> dict[str, float]:
    """Real input pipeline vs synthetic batches, and an async checkpoint save in flight vs
    none, each timed in `rounds` interleaved rounds of `num_steps` steps (best round kept)."""
    from vitx.train import checkpoint as ckpt_lib

    out: dict[str, float] = {}
    it = b.pipeline()
    for _ in range(3):  # fill the shuffle buffer and the device prefetch queue
        next(it)
    synth, real, plain, saving = [], [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = ckpt_lib.Checkpointer(tmp, keep=1, async_save=True)
        for r in range(rounds):
            synth.append(b.time(num_steps))
            real.append(b.time(num_steps, batches=it))
            plain.append(b.time(num_steps))
            saving.append(b.time(num_steps, before=lambda r=r: ckpt.save(r, b.state,
                                                                         {"step": r})))
            t0 = time.perf_counter()
            ckpt.wait()
            out["save_write_s"] = time.perf_counter() - t0
        ckpt.close()
    out["pipeline_ratio"] = min(synth) / min(real)
    step_s = min(plain) / num_steps
    out["save_cost_s"] = max(min(saving) - min(plain), 0.0)
    out["save_cost_steps"] = out["save_cost_s"] / step_s
    every = (b.config.get("checkpoint") or {}).get("every_steps") or b.config.total_steps
    out["save_cost_per_step"] = out["save_cost_steps"] / every
    out["save_every_steps"] = every
    return out


def run(config: ml_collections.ConfigDict, *, steps: int = 20, checks: bool = True,
        profile: str | None = None) -> list[dict[str, Any]]:
    """Print and return one row per variant: name, steps/s, images/s, ratio to the first, compile
    seconds, FLOPs per step, MFU against this run's matmul peak, program memory.

    With `checks` (single-task configs), also the real input pipeline's step rate as a fraction
    of the synthetic one (goal >= 0.95) and an async checkpoint save's cost in steps (goal <
    0.05); for FlexiViT configs, the number of programs compiled for the patch sizes (goal:
    one per size). With `profile` (a folder), a profiler trace of the first variant's steps
    (`config.profile.num_steps` of them if set, else `steps`) goes to `profile/plugins/profile/`
    (the first row's `profile_dir`).

    Raises:
      ConfigError: `profile` with a multi-task config (profile `vitx train` with
        `config.profile` instead).
    """
    if config.get("multitask"):
        if profile:
            raise config_lib.ConfigError("--profile: multi-task configs are not profiled by "
                                         "vitx bench; set config.profile in vitx train instead")
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
        updates = [("bf16", {"dtype_mm": "bfloat16"}),
                   ("scan+remat", {"scan": True, "remat_policy": "nothing_saveable"})]
        if config.get("model_name") in FAST_PATH_MODELS:
            updates.insert(0, ("plain", {"patch_embed": "conv", "attention_impl": "einsum"}))
        for name, update in updates:
            c = copy.deepcopy(config)
            c.model.update(update)
            variants.append((name, c, ()))
    dtype_of = lambda c: (c.get("model") or {}).get("dtype_mm", "float32")
    peaks = {d: perf.matmul_peak(d) for d in dict.fromkeys(dtype_of(c) for _, c, _ in variants)}
    print(f"vitx bench: batch {config.input.batch_size}, {steps} timed steps, "
          f"{jax.device_count()} x {jax.devices()[0].device_kind}; matmul peak (this run) "
          + ", ".join(f"{d} {p / 1e9:.1f} GFLOP/s" for d, p in peaks.items()))
    rows, first = [], None
    for name, c, plan in variants:
        b = _Bench(c, plan)
        sps = steps / b.time(steps)
        # model FLOPs: XLA counts a scanned body once and remat's recompute too, so the
        # scan+remat variants are credited with the plain program's count
        flops = b.stats["flops"] if not c.model.get("scan") else rows[0]["flops"]
        peak = peaks[dtype_of(c)] * jax.device_count()
        rows.append({"variant": name, "steps_per_sec": sps,
                     "img_per_sec": sps * c.input.batch_size, "compile_s": b.compile_s,
                     **b.stats, "flops": flops, "mfu": flops * sps / peak if peak else None})
        if first is None:
            first = b
    base = rows[0]["steps_per_sec"]
    for r in rows:
        r["ratio"] = r["steps_per_sec"] / base
        mem = f", {r['memory_bytes'] / 2**20:.0f} MiB" if "memory_bytes" in r else ""
        print(f"  {r['variant']:<12} {r['steps_per_sec']:8.2f} steps/s  "
              f"{r['img_per_sec']:9.1f} img/s  x{r['ratio']:.2f} vs {rows[0]['variant']}  "
              f"{r['flops'] / 1e9:.2f} GFLOP/step, MFU {r['mfu']:.1%} "
              f"(compile {r['compile_s']:.1f} s{mem})")
    peak_mem = perf.device_peak_memory()
    if peak_mem is not None:
        print(f"  device peak memory: {peak_mem / 2**20:.0f} MiB")
    if profile and first is not None:
        n = (config.get("profile") or {}).get("num_steps") or steps
        rows[0]["profile_dir"] = first.trace(n, profile)
        print(f"  profile of {n} {rows[0]['variant']} steps in {rows[0]['profile_dir']}; "
              f"view it with `tensorboard --logdir {profile}` (Profile tab)")
    if checks and first is not None:
        extra = _checks(first, steps)
        rows[0].update(extra)
        print(f"  real input pipeline / synthetic batches: x{extra['pipeline_ratio']:.3f} "
              f"(goal >= 0.95)")
        print(f"  async checkpoint save: blocks/slows the steps by {extra['save_cost_s']:.3f} s "
              f"= {extra['save_cost_steps']:.2f} steps per save; at checkpoint.every_steps="
              f"{extra['save_every_steps']} that is {extra['save_cost_per_step']:.2%} of a step "
              f"(goal < 5%); the write finished {extra['save_write_s']:.2f} s after the steps")
        if config.get("flexi"):
            n, sizes = _count_programs(config, 4 * len(config.flexi.patch_sizes))
            rows[0]["flexi_programs"] = n
            print(f"  FlexiViT: {n} programs compiled for the {sizes} patch sizes drawn in the "
                  f"schedule's first {4 * len(config.flexi.patch_sizes)} steps (goal: one per "
                  f"size)")
    return rows


def _count_programs(config: ml_collections.ConfigDict, num_steps: int) -> tuple[int, int]:
    """(programs compiled, distinct plans) when the trainer's `StepCache` runs the first
    `num_steps` planned steps (e.g. FlexiViT's random patch sizes) on synthetic batches; a
    recompile (a changed shape, dtype or weak type between steps) would make the first larger."""
    s = trainer.setup(copy.deepcopy(config))
    state, shardings = s.init_state()
    bs = shd.batch_sharding(s.mesh)
    cache = steps.StepCache(lambda plan: s.make_step(plan), in_shardings=(shardings, bs),
                            out_shardings=(shardings, shd.replicated(s.mesh)),
                            donate_argnums=(0,))
    batch = _synthetic_batch(s.spec, config.input.batch_size, config.num_classes, bs)
    plans = [s.plan(i) for i in range(num_steps)]
    m = None
    for plan in plans:
        state, m = cache(plan)(state, batch)
    jax.block_until_ready(m)
    return cache.num_compiled, len(set(plans))
