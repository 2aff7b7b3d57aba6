"""The one train loop, for every model, task and modality: init/restore -> step -> eval -> save.

The loop is generic: the model module (`vitx.models`) builds the model and owns its checkpoint
surgery (`load`); the task (`vitx.tasks`) says which batch keys the model reads and what the loss
is; plugins (`vitx.train.plugins`: FlexiViT, distillation, the multi-task schedule) contribute
the per-step plan (static choices such as the patch size: one compiled step each), extra step
arguments and loss terms; evaluators are built by the caller (`make_evaluators`, see
`vitx.experiment`) from a predict function. Nothing here knows about images, patch sizes or
teachers.

The pieces around the loop live in their own modules:

- `vitx.train.startup`: the config read once (`setup`: validation, the typed `RunConfig`, model,
  plugins, optimizer; nothing written) and the start (`start`: resume from
  `WORKDIR/checkpoints` if it holds a checkpoint, else `model_init`, else random init; the input
  streams; config.json and the metric writers, written only once everything passed).
- `vitx.train.guard`: the NaN guard. Every step's finiteness is folded into a device-side flag
  (no host round trip per step) and checked on the host at log steps and before every save,
  with the state's own finiteness, so no checkpoint with NaN/inf values is ever written; a
  non-finite step raises `TrainingDiverged` (`vitx train` exits 1) naming it and the last
  checkpoint on disk. `skip_nonfinite_updates=True` instead keeps the old state for such a step
  and logs the running count `skipped_steps`.
- `vitx.train.preemption`: SIGTERM/SIGINT make the loop save a checkpoint and return normally
  (exit status 0); a run killed harder loses at most the steps since the last save.
- `vitx.train.writers`: progress lines on stdout, metrics.jsonl and TensorBoard.
- `vitx.train.profiling`: the loop's hooks that say where the time goes: a profiler trace of
  the steps `config.profile` names, the run's clock (data waits in the progress rows'
  `data_wait_frac`, the goodput breakdown in results.json and the closing `vitx: goodput:`
  line), the device's peak memory, run_info.json and the compilation cache.

Outputs in WORKDIR: config.json, run_info.json (device, versions), checkpoints/, TensorBoard
event files, metrics.jsonl (every logged scalar), results.json (final metrics, `train_seconds`
and the `goodput/...` seconds), plugins/profile/ (with `config.profile`).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
from absl import logging as absl_logging

from vitx.train import ema as ema_lib
from vitx.train import preemption, profiling, steps
from vitx.train import sharding as shd
from vitx.train.guard import NonFiniteGuard
from vitx.train.startup import Setup, Start, setup, start, total_steps_of, variables_of
from vitx.train.writers import Progress, fmt
from vitx.utils import write_json_atomic

__all__ = ["Setup", "setup", "total_steps_of", "train", "variables_of"]


def train(config: ml_collections.ConfigDict, workdir: str, *,
          make_evaluators: Callable[..., list] | None = None) -> dict[str, float]:
    """Train per `config`, writing to `workdir`; returns the final results ({} when stopped by
    a signal: run the same command again to resume).

    `make_evaluators(context_for)` returns evaluators (objects with `run(variables, *, final)
    -> metrics`); `context_for(task_name)` gives the keyword arguments of an evaluator's context
    for that task (None: the single task): `predict_fn` ((variables, batch, **static_kw) ->
    (logits, aux)), `task`, `mesh`, `variable_shardings`, `data_dir`, `default_batch_size` and
    `workdir`. `vitx.experiment.train` passes `vitx.evaluators.from_config`; None: no evals.

    Raises:
      ConfigError: bad config, unwritable workdir, checkpoints of another model/optimizer or
        that do not restore (message names the key/path and the fix); nothing is written then.
      TrainingDiverged: a non-finite loss, gradient or state (see `vitx.train.guard`).
      OSError: writing failed mid-run (e.g. ENOSPC, no space left on device).
    """
    if absl_logging.get_verbosity() > absl_logging.WARNING:  # never more verbose than that
        absl_logging.set_verbosity(absl_logging.WARNING)
    clock = profiling.RunClock()
    with clock.part("startup"):
        s = setup(config)
        st = start(s, workdir, make_evaluators)
    return _Loop(s, st, workdir, clock).run()


class _Loop:
    """One run's loop: the train state between steps, the compiled steps (one per plan), the
    input streams, the NaN guard, the checkpointer, the progress rows, the run's clock and the
    profiler. `run` iterates."""

    def __init__(self, s: Setup, st: Start, workdir: str,
                 clock: profiling.RunClock | None = None):
        self.s, self.st, self.workdir = s, st, workdir
        self.clock = clock = clock or profiling.RunClock()
        self.state = st.state
        self.is_main = jax.process_index() == 0
        extra_shardings: tuple = ()
        self.extra_args: tuple = ()
        extra_loss = None
        for p in s.plugins:
            values, shardings = p.extra_args()
            self.extra_args, extra_shardings = self.extra_args + values, extra_shardings + shardings
            extra_loss = p.extra_loss or extra_loss
        # Batches of a plan: one batch, or a tuple of one per task (the "accumulated" schedule).
        self.train_steps = steps.StepCache(
            lambda plan: s.make_step(plan, extra_loss),
            in_shardings=(s.state_shardings, shd.batch_sharding(s.mesh), *extra_shardings),
            out_shardings=(s.state_shardings, shd.replicated(s.mesh)), donate_argnums=(0,))
        self.planned = not s.plan.is_static
        self.guard = NonFiniteGuard(s.mesh, st.checkpointer, st.writer,
                                    skip_nonfinite=s.run.step.skip_nonfinite,
                                    skipped_before=st.skipped_before)
        self.progress = Progress(st.writer, st.text, total_steps=s.run.loop.total_steps,
                                 start_step=st.step, every=s.run.loop.log_every_steps,
                                 waited=lambda: clock.seconds["data_wait"],
                                 peak_memory=profiling.peak_memory_gib)
        self.profiler = profiling.StepProfiler(s.run.profile, workdir)

    def run(self) -> dict[str, float]:
        """Steps from the start step to `total_steps`, then the final evals, save and results
        (or, on a stop signal, a save and {})."""
        s, loop = self.s, self.s.run.loop
        total, eval_every = loop.total_steps, loop.eval_every_steps
        ckpt_every = s.run.checkpoint.every_steps
        step, clock = self.st.step, self.clock
        with preemption.StopFlag() as stop, self.profiler:
            while step < total:
                plan = s.plan(step)
                with self.profiler.step(step):
                    with clock.part("data_wait"):
                        batch = self.next_batch(plan)
                    with clock.part("compile" if clock.first(plan) else "step"):
                        self.state, metrics = self.train_steps(plan)(self.state, batch,
                                                                     *self.extra_args)
                        self.guard.fold(metrics)  # on device, asynchronous: no round trip
                step += 1
                self.profiler.after(step, metrics)
                if self.progress.due(step):
                    with clock.part("step"):  # the host waits here for the steps' results
                        self.log(step, metrics, plan)
                if eval_every and step % eval_every == 0 and step != total:
                    self.evals(step)
                if ckpt_every and step % ckpt_every == 0 and step != total:
                    self.save(step)
                if stop.should_stop(step):
                    return self.stopped(step)
            with clock.part("step"):
                self.guard.check(step, self.state)
            final_metrics = self.evals(step, final=True)
            self.save(step)
            with clock.part("checkpoint"):
                self.st.checkpointer.close()
        return self.finish(step, final_metrics)

    def next_batch(self, plan: tuple) -> Any:
        """The batch of a step of `plan`: one batch, or a tuple of one per task it trains."""
        batches = tuple(next(self.st.streams[r.name]) for r in self.s.route_plan(plan)[0])
        return batches[0] if len(batches) == 1 else batches

    def log(self, step: int, metrics: dict, plan: tuple) -> None:
        """The progress row of `step` (one host round trip), then the NaN guard's check."""
        metrics, flags = jax.device_get((metrics, self.guard.flags))
        self.progress.write(step, self.guard.host_metrics(metrics, flags),
                            self.s.batch_size(plan), plan if self.planned else None,
                            self.train_steps.num_compiled if self.planned else None)
        self.guard.check(step, flags=flags)

    def evals(self, step: int, final: bool = False) -> dict[str, float]:
        """Every evaluator's metrics on the current state (also written as scalars)."""
        metrics: dict[str, float] = {}
        self.wait_for_steps()
        with self.clock.part("eval"):
            for ev in self.st.evaluators:
                metrics.update(ev.run(variables_of(self.state), final=final and self.is_main))
                if "ema" in self.state:  # the EMA weights: "<name>_ema/..." (vitx.train.ema)
                    metrics.update(ema_lib.renamed(ev.run(self.state["ema"])))
            if metrics:
                self.st.writer.write_scalars(step, metrics)
        return metrics

    def wait_for_steps(self) -> None:
        """Wait for the steps dispatched so far (their time is train-step time, not the time of
        the eval or save that follows)."""
        with self.clock.part("step"):
            jax.block_until_ready(self.state)

    def save(self, step: int) -> None:
        """Save the state of `step` (once; never with non-finite values) with its meta: step,
        config, examples seen (and skipped updates)."""
        checkpointer = self.st.checkpointer
        if checkpointer.latest_step() == step:  # e.g. a stop signal on a periodic-save step
            return
        self.wait_for_steps()
        with self.clock.part("checkpoint"):
            self.guard.check(step, self.state)  # never write a checkpoint with non-finite params
            done = self.s.batches_before(step)
            meta = {"step": step, "config": self.s.run.config_dict,
                    "examples_seen": sum(done[n] * r.input.batch_size
                                         for n, r in self.s.routes.items())}
            if self.guard.skip_nonfinite:
                meta["skipped_steps"] = self.guard.skipped()
            checkpointer.save(step, self.state, meta)

    def stopped(self, step: int) -> dict[str, float]:
        """A stop signal after `step`: save, let the save land, return {}."""
        self.save(step)
        self.st.checkpointer.close()
        self.st.writer.flush()
        print(f"vitx: stopped at step {step}/{self.s.run.loop.total_steps}; run the same "
              f"command again to resume", flush=True)
        return {}

    def finish(self, step: int, final_metrics: dict[str, float]) -> dict[str, float]:
        """results.json (with the goodput seconds) and the closing lines (process 0); closes
        the writers."""
        results = {"step": step, "total_steps": self.s.run.loop.total_steps,
                   "train_seconds": self.progress.elapsed(), **final_metrics}
        if self.planned:
            results["compiled_programs"] = self.train_steps.num_compiled
        results.update(self.clock.goodput())
        if self.is_main:
            path = os.path.join(self.workdir, "results.json")
            write_json_atomic(path, results)
            print(profiling.goodput_line(results), flush=True)
            print("vitx: done. " + " ".join(f"{k}={fmt(v)}" for k, v in final_metrics.items())
                  + f" (results in {path})", flush=True)
        self.st.writer.flush()
        self.st.writer.close()
        return results
