"""The one train loop, for every model, task and modality: init/restore -> step -> eval -> save.

The loop is generic: the model module (`vitx.models`) builds the model and owns its checkpoint
surgery (`load`); the task (`vitx.tasks`) says which batch keys the model reads and what the loss
is; plugins (`vitx.train.plugins`: FlexiViT, distillation) contribute the per-step plan (static
choices such as the patch size: one compiled step each), extra step arguments and loss terms;
evaluators are built by the caller (`make_evaluators`, see `vitx.experiment`) from a predict
function. Nothing here knows about images, patch sizes or teachers.

Start-up precedence: resume from `WORKDIR/checkpoints` if it holds a checkpoint, else
`config.model_init` (any checkpoint spec, see `vitx.utils.checkpoints`; loaded by the model
module's `load`), else random init. SIGTERM/SIGINT make the loop save a checkpoint and return
normally (exit status 0); a run killed harder loses at most the steps since the last save.
Outputs in WORKDIR: config.json, checkpoints/, TensorBoard event files, metrics.jsonl (every
logged scalar), results.json (final metrics).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import time
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging as absl_logging
from clu import metric_writers, parameter_overview

from vitx import config as config_lib
from vitx import models, tasks
from vitx.data import pipeline
from vitx.train import checkpoint as ckpt_lib
from vitx.train import optim, plugins, steps
from vitx.train import sharding as shd
from vitx.train import state as state_lib
from vitx.train.writers import TextWriter, fmt
from vitx.utils import write_json_atomic

log = logging.getLogger("vitx")


class _StopFlag:
    """SIGTERM/SIGINT -> set a flag the loop checks after each step (a second SIGINT aborts)."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> _StopFlag:
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread (e.g. some test runners)
                pass
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        del frame
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum
        print(f"vitx: got signal {signum}; saving a checkpoint and stopping", flush=True)

    def __exit__(self, *exc: Any) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


def total_steps_of(config: ml_collections.ConfigDict, n_train: int) -> int:
    """`total_steps`, or `total_epochs * n_train // batch_size` when total_steps is None.

    Raises:
      ConfigError: neither is set.
    """
    if config.get("total_steps"):
        return int(config.total_steps)
    if not config.get("total_epochs"):
        raise config_lib.ConfigError("set total_steps or total_epochs in the config")
    return int(config.total_epochs * n_train // config.input.batch_size)


@dataclasses.dataclass
class Setup:
    """Everything a run is built from, validated before anything is written.

    Attributes:
      config: the config, with `total_steps` resolved.
      mesh: the device mesh.
      module: the model module (`Model`, `load`, `check_input`).
      model: the flax module.
      task: the `vitx.tasks` task.
      spec: the train data's example spec {key: (shape, dtype)}.
      plugins: the active plugins; `plan` their per-step plan.
      tx, schedule, frozen: optimizer, lr schedule, frozen-param mask.
      state_shardings: shardings of the train state.
    """

    config: ml_collections.ConfigDict
    mesh: Any
    module: Any
    model: Any
    task: Any
    spec: dict
    plugins: list
    plan: plugins.StepPlan
    tx: Any
    schedule: Any
    frozen: Any
    state_shardings: Any

    def predict_fn(self, params: Any, batch: dict, **model_kw: Any) -> jax.Array:
        """(params, batch, **static_kw) -> logits: the model in eval mode on the task's inputs."""
        logits, _ = self.model.apply({"params": params}, self.task.model_inputs(batch),
                                     train=False, **model_kw)
        return logits

    def init_state(self, materialize: bool = True) -> tuple[dict, Any]:
        return state_lib.init_state(self.config, self.model, self.task, self.tx, self.spec,
                                    self.mesh, dict(self.plan(0)), materialize=materialize)


def setup(config: ml_collections.ConfigDict) -> Setup:
    """Validate `config` and build the pieces of a run (no files written).

    Raises:
      ConfigError: bad config (message names the key and the fix).
    """
    mesh = shd.make_mesh(config.mesh)
    config_lib.validate(config, num_devices=mesh.size)
    inp = config.input
    data_dir = config.get("data_dir")
    n_train = pipeline.num_examples(name=inp.dataset, split=inp.split, data_dir=data_dir,
                                    label_subset=inp.get("label_subset"))
    config.unlock()
    config.total_steps = total_steps_of(config, n_train)  # resolved (schedules read it)
    try:
        module = models.get_model_module(config.model_name)
        task = tasks.get_task(config.get("task"), config.num_classes)
    except ValueError as e:
        raise config_lib.ConfigError(str(e)) from None
    spec = pipeline.element_spec(name=inp.dataset, split=inp.split, data_dir=data_dir,
                                 pp=inp.pp, label_subset=inp.get("label_subset"))
    if task.inputs not in spec:
        raise config_lib.ConfigError(f"task.inputs={task.inputs!r} is not a key of the batches "
                                     f"made by input.pp (keys: {sorted(spec)}); fix one of them")
    try:
        module.check_input(config.get("model") or {}, spec[task.inputs][0])
    except ValueError as e:
        raise config_lib.ConfigError(str(e)) from None
    model = models.build_model(config.model_name, config.num_classes,
                               **(config.get("model") or {}))
    ctx = plugins.SetupContext(config=config, mesh=mesh, task=task, spec=spec)
    active = plugins.from_config(config, ctx)
    plan = plugins.StepPlan(active)
    # Params first (for the optimizer's masks), then the whole state's shardings.
    param_shapes = state_lib.abstract_params(model, task, spec, dict(plan(0)))
    tx = optim.make_optimizer(config, param_shapes)
    s = Setup(config=config, mesh=mesh, module=module, model=model, task=task, spec=spec,
              plugins=active, plan=plan, tx=tx, schedule=optim.make_schedule(config),
              frozen=optim.frozen_mask(param_shapes, config), state_shardings=None)
    _, s.state_shardings = s.init_state(materialize=False)
    return s


def train(config: ml_collections.ConfigDict, workdir: str, *,
          make_evaluators: Callable[..., list] | None = None) -> dict[str, float]:
    """Train per `config`, writing to `workdir`; returns the final results.

    `make_evaluators(**kw)` returns evaluators (objects with `run(params, *, final) -> metrics`)
    given `predict_fn`, `task`, `mesh`, `param_shardings`, `data_dir`, `default_batch_size` and
    `workdir` (`vitx.experiment.train` passes `vitx.evaluators.from_config`); None: no evals.

    Raises:
      ConfigError: bad config (message names the key and the fix); nothing is written then.
    """
    if absl_logging.get_verbosity() > absl_logging.WARNING:  # never more verbose than that
        absl_logging.set_verbosity(absl_logging.WARNING)
    s = setup(config)
    config, mesh, inp = s.config, s.mesh, s.config.input
    total_steps = config.total_steps
    is_main = jax.process_index() == 0
    evaluators = [] if make_evaluators is None else make_evaluators(
        predict_fn=s.predict_fn, task=s.task, mesh=mesh,
        param_shardings=s.state_shardings["params"], data_dir=config.get("data_dir"),
        default_batch_size=inp.batch_size, workdir=workdir)
    os.makedirs(workdir, exist_ok=True)  # only now that the config is valid
    if is_main:  # a bad start writes nothing
        print("vitx: resolved config:\n" + config_lib.to_json(config), flush=True)
        write_json_atomic(os.path.join(workdir, "config.json"), config.to_dict())

    ck_cfg = config.get("checkpoint") or {}
    checkpointer = ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints"),
                                         keep=ck_cfg.get("keep", 3),
                                         async_save=ck_cfg.get("async_save", True))
    resume = checkpointer.latest_step() is not None
    state, state_shardings = s.init_state(materialize=not resume)
    start_step = 0
    if resume:
        state, meta = checkpointer.restore(state)
        start_step = int(meta["step"])
        print(f"vitx: resumed from {checkpointer.directory}/{start_step}", flush=True)
    elif config.get("model_init"):
        params = s.module.load(state["params"], config.model_init, config.get("model"),
                               **(config.get("model_load") or {}))
        params = jax.device_put(params, state_shardings["params"])
        opt_state = jax.jit(s.tx.init, out_shardings=state_shardings["opt_state"])(params)
        state = dict(state, params=params, opt_state=opt_state)
        print(f"vitx: initialised params from {config.model_init}", flush=True)

    if is_main:
        print(parameter_overview.get_parameter_overview(state["params"]), flush=True)
        n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state["params"]))
        print(f"vitx: {n_params:,} params; {total_steps} steps of batch {inp.batch_size}; "
              f"mesh {dict(mesh.shape)}", flush=True)

    writer = metric_writers.MultiWriter(
        [metric_writers.SummaryWriter(workdir),
         TextWriter(os.path.join(workdir, "metrics.jsonl"))] if is_main else [])
    batch_sharding = shd.batch_sharding(mesh)
    extra_args, extra_shardings = (), ()
    extra_loss = None
    for p in s.plugins:
        values, shardings = p.extra_args()
        extra_args, extra_shardings = extra_args + values, extra_shardings + shardings
        extra_loss = p.extra_loss or extra_loss

    train_steps = steps.StepCache(
        lambda plan: steps.make_train_step(
            s.model, s.tx, s.task, accum_steps=config.get("grad_accum_steps", 1),
            frozen=s.frozen, schedule=s.schedule, model_kw=dict(plan), extra_loss=extra_loss),
        in_shardings=(state_shardings, batch_sharding, *extra_shardings),
        out_shardings=(state_shardings, shd.replicated(mesh)), donate_argnums=(0,))
    planned = not s.plan.is_static

    def run_evals(step: int, final: bool = False) -> dict[str, float]:
        metrics: dict[str, float] = {}
        for ev in evaluators:
            metrics.update(ev.run(state["params"], final=final and is_main))
        if metrics:
            writer.write_scalars(step, metrics)
        return metrics

    def save(step: int) -> None:
        if checkpointer.latest_step() == step:  # e.g. a stop signal on a periodic-save step
            return
        meta = {"step": step, "examples_seen": step * inp.batch_size,
                "config": config.to_dict()}
        checkpointer.save(step, state, meta)

    ds = pipeline.build_dataset(
        name=inp.dataset, split=inp.split, data_dir=config.get("data_dir"), pp=inp.pp,
        global_batch_size=inp.batch_size, train=True, seed=config.get("seed", 0),
        start_step=start_step, shuffle_buffer=inp.get("shuffle_buffer", 10_000),
        cache=inp.get("cache", True), label_subset=inp.get("label_subset"))
    batches = pipeline.global_batches(ds, batch_sharding)

    log_every = config.get("log_every_steps", 50)
    eval_every = config.get("eval_every_steps", 0)
    ckpt_every = ck_cfg.get("every_steps", 0)
    step = start_step
    t_last, step_last = time.perf_counter(), start_step
    t_start = t_last
    with _StopFlag() as stop:
        while step < total_steps:
            batch = next(batches)
            plan = s.plan(step)
            state, metrics = train_steps(plan)(state, batch, *extra_args)
            step += 1
            if step % log_every == 0 or step == total_steps or step == start_step + 1:
                metrics = jax.device_get(metrics)
                now = time.perf_counter()
                sps = (step - step_last) / max(now - t_last, 1e-9)
                extra = {"steps_per_sec": sps, "img_per_sec": sps * inp.batch_size,
                         "eta_min": (total_steps - step) / max(sps, 1e-9) / 60}
                if planned:
                    extra["compiled_programs"] = train_steps.num_compiled
                    extra.update({k: v for k, v in plan if isinstance(v, int | float)})
                writer.write_scalars(step, {**{k: float(v) for k, v in metrics.items()},
                                            **extra})
                t_last, step_last = now, step
                if not np.isfinite(float(metrics["loss"])):
                    raise FloatingPointError(f"loss is {metrics['loss']} at step {step}; lower "
                                             f"lr or enable grad_clip_norm (nothing was saved)")
            if eval_every and step % eval_every == 0 and step != total_steps:
                run_evals(step)
            if ckpt_every and step % ckpt_every == 0 and step != total_steps:
                save(step)
            if stop.signum is not None:
                save(step)
                checkpointer.close()
                writer.flush()
                print(f"vitx: stopped at step {step}/{total_steps}; run the same command "
                      f"again to resume", flush=True)
                return {}
        final_metrics = run_evals(step, final=True)
        save(step)
        checkpointer.close()
    elapsed = time.perf_counter() - t_start
    results = {"step": step, "total_steps": total_steps, "train_seconds": elapsed,
               **final_metrics}
    if planned:
        results["compiled_programs"] = train_steps.num_compiled
    if is_main:
        write_json_atomic(os.path.join(workdir, "results.json"), results)
        print("vitx: done. " + " ".join(f"{k}={fmt(v)}" for k, v in final_metrics.items())
              + f" (results in {os.path.join(workdir, 'results.json')})", flush=True)
    writer.flush()
    writer.close()
    return results
