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

Faults. A start validates everything first (config, data, evaluators, a writable workdir with
room for a checkpoint, the checkpoints' config and shapes against this config, `model_init`)
and writes nothing before that passes. On resume, a damaged latest checkpoint is moved aside
to `<step>.corrupt` with a warning and the previous one restored
(`Checkpointer.restore_with_fallback`). NaN guard: every step reports on device whether its loss
and gradient norm were finite; the loop folds that into a device-side flag (no host round trip
per step) and checks it on the host at log steps and before every save, together with the
state's own finiteness, so no checkpoint with NaN/inf values is ever written; a non-finite step
raises `TrainingDiverged` (`vitx train` exits 1) naming it and the last checkpoint on disk.
`skip_nonfinite_updates=True` instead keeps the old state for such a step (`jnp.where` on
device) and logs the running count `skipped_steps`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging as absl_logging
from clu import metric_writers, parameter_overview

from vitx import config as config_lib
from vitx import models
from vitx.data import pipeline
from vitx.train import checkpoint as ckpt_lib
from vitx.train import multitask, optim, plugins, steps
from vitx.train import sharding as shd
from vitx.train import state as state_lib
from vitx.train.writers import TextWriter, fmt
from vitx.utils import TrainingDiverged, check_writable, write_json_atomic

log = logging.getLogger("vitx")


class _StopFlag:
    """SIGTERM/SIGINT -> stop after the current step, save, exit 0 (a second SIGINT aborts).

    One process: a Python handler sets a flag that `should_stop` reads after each step.
    Several processes (`jax.distributed`): the stop must be agreed, or hosts would save
    different steps. SIGTERM is left to JAX's preemption notifier (installed by
    `jax.distributed.initialize()`), which propagates the notice to every process and picks the
    same safe step on all of them; `should_stop(step)` asks
    `multihost_utils.reached_preemption_sync_point(step)` (a local check, no round trip) after
    every step. SIGINT (Ctrl-C) on one process is turned into a SIGTERM to itself, so it takes
    the same agreed path.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self._old: dict[int, Any] = {}
        self.multi_process = jax.process_count() > 1

    def __enter__(self) -> _StopFlag:
        sigs = (signal.SIGINT,) if self.multi_process else (signal.SIGTERM, signal.SIGINT)
        for sig in sigs:
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
        if self.multi_process:
            print(f"vitx: got signal {signum}; telling every process to stop at an agreed step",
                  flush=True)
            os.kill(os.getpid(), signal.SIGTERM)  # to JAX's preemption notifier
            return
        print(f"vitx: got signal {signum}; saving a checkpoint and stopping", flush=True)

    def should_stop(self, step: int) -> bool:
        """Whether to save and stop after `step` (the same answer on every process)."""
        if not self.multi_process:
            return self.signum is not None
        from jax.experimental import multihost_utils

        if multihost_utils.reached_preemption_sync_point(step):
            print(f"vitx: process {jax.process_index()}: preemption sync point at step {step}; "
                  f"saving a checkpoint and stopping", flush=True)
            return True
        return False

    def __exit__(self, *exc: Any) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


#: Metrics of the train step that feed the NaN guard (not logged as such).
_GUARD_KEYS = ("nonfinite_step", "skipped")


class _NonFiniteGuard:
    """The NaN guard's running record, kept on device between host checks.

    `flags` = {"first": the first step since the start whose loss or gradient norm was not
    finite (0: none), "skipped": updates skipped so far (`skip_nonfinite_updates`)}, replicated
    int32 scalars. `fold(metrics)` updates them with one small asynchronous device op per step,
    so the loop never waits for the device except where it checks (log steps, saves).
    """

    def __init__(self, mesh: Any, skipped_before: int = 0):
        rep = shd.replicated(mesh)
        self.flags = jax.device_put({"first": np.int32(0), "skipped": np.int32(skipped_before)},
                                    rep)

        def fold(flags: dict, metrics: dict) -> dict:
            bad = metrics["nonfinite_step"]
            return {"first": jnp.where(flags["first"] > 0, flags["first"], bad),
                    "skipped": flags["skipped"] + metrics.get("skipped", 0)}
        self._fold = jax.jit(fold, out_shardings=rep)
        self.state_finite = jax.jit(
            lambda st: steps.tree_all_finite(
                (st["params"], st["opt_state"], st.get("model_state"))), out_shardings=rep)

    def fold(self, metrics: dict) -> None:
        self.flags = self._fold(self.flags, {k: metrics[k] for k in _GUARD_KEYS if k in metrics})


def _resume_check(config: ml_collections.ConfigDict, workdir: str,
                  want: ckpt_lib.Shapes) -> Callable[[int, dict, ckpt_lib.Shapes], None]:
    """check(step, meta, shapes) for `Checkpointer.restore_with_fallback`: the checkpoint's
    config and state shapes must fit `config` (whose abstract state has shapes `want`).

    Raises (from check):
      ConfigError: a model/optimizer key changed (`config_lib.check_resume`), or the saved
        state's arrays differ from this config's (names the arrays and the changed keys).
    """
    def check(step: int, meta: dict, shapes: ckpt_lib.Shapes) -> None:
        old = meta.get("config") or {}
        if old:  # (a checkpoint without its config is checked by its shapes alone)
            config_lib.check_resume(old, config, workdir)
        diff = sorted((k for k in want.keys() | shapes.keys() if want.get(k) != shapes.get(k)),
                      key=lambda k: (not k.startswith("params/"), k))
        if not diff:
            return
        name = diff[0]
        changes = config_lib.changed_keys(old, config, skip=config_lib.RESUME_FREE_KEYS)
        raise config_lib.ConfigError(
            f"checkpoint {step} in {workdir} does not fit this config: {len(diff)} state "
            f"arrays differ (e.g. {name} {shapes.get(name, ('absent',))[0]} there, "
            f"{want.get(name, ('absent',))[0]} now); changed keys: "
            f"{config_lib.format_changes(changes, limit=2, width=24) or 'none'}; revert them to "
            f"resume, or train in a new --workdir")
    return check


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
      module: the model module (`Model`, `load`, `check_input`, optionally `active_mask`).
      model: the flax module.
      routes: {task name: `multitask.Route`} ({None: route} for a single-task config).
      plugins: the active plugins (the task schedule first); `plan` their per-step plan.
      tx, schedule, frozen: optimizer, lr schedule, frozen-param mask.
      param_shapes: the params' abstract shapes.
      state_shardings: shardings of the train state.
    """

    config: ml_collections.ConfigDict
    mesh: Any
    module: Any
    model: Any
    routes: dict
    plugins: list
    plan: plugins.StepPlan
    tx: Any
    schedule: Any
    frozen: Any
    param_shapes: Any = None
    state_shardings: Any = None

    @property
    def main(self) -> multitask.Route:
        """The first route: its data shapes and model kwargs initialise the model."""
        return next(iter(self.routes.values()))

    @property
    def task(self) -> Any:
        return self.main.task

    @property
    def spec(self) -> dict:
        return self.main.spec

    def route_plan(self, plan: tuple) -> tuple[list, dict]:
        """(the routes a plan trains, the plugins' other static choices)."""
        p = dict(plan)
        names = p.pop("tasks", (None,))
        return [self.routes[n] for n in names], p

    def predict_fn_for(self, name: str | None = None) -> Any:
        """(variables, batch, **static_kw) -> logits of task `name`, the model in eval mode.

        `variables` = {"params": ..., plus the model's state collections (batch_stats)}."""
        if name not in self.routes:
            raise config_lib.ConfigError(f"evaluator task={name!r} is not a task of this config; "
                                         f"use one of {[n for n in self.routes if n]}")
        r = self.routes[name]

        def predict(variables: Any, batch: dict, **model_kw: Any) -> jax.Array:
            logits, _ = self.model.apply(variables, r.task.model_inputs(batch),
                                         train=False, **{**r.model_kw, **model_kw})
            return logits
        return predict

    def init_state(self, materialize: bool = True) -> tuple[dict, Any]:
        kw = {**self.main.model_kw, **self.route_plan(self.plan(0))[1]}
        return state_lib.init_state(self.config, self.model, self.task, self.tx, self.spec,
                                    self.mesh, kw, materialize=materialize)

    def make_step(self, plan: tuple, extra_loss: Any = None) -> Any:
        """The python train step of one plan: its routes' losses (summed or averaged when the
        plan trains several), their masked update and learning-rate multiplier."""
        rs, kw = self.route_plan(plan)
        losses = [steps.make_loss_fn(self.model, r.task, {**r.model_kw, **kw},
                                     extra_loss=extra_loss) for r in rs]
        loss_fn = losses[0] if len(rs) == 1 else steps.multi_task_loss(
            losses, (self.config.get("multitask") or {}).get("accumulate", "sum"))
        active = None
        if rs[0].name is not None and hasattr(self.module, "active_mask"):
            masks = [self.module.active_mask(self.param_shapes, **r.model_kw) for r in rs]
            active = jax.tree.map(lambda *a: any(a), *masks)
        return steps.build_train_step(
            loss_fn, self.tx, accum_steps=self.config.get("grad_accum_steps", 1),
            frozen=self.frozen, schedule=self.schedule, active=active,
            lr_mult=rs[0].lr_mult if len(rs) == 1 else 1.0,
            skip_nonfinite=bool(self.config.get("skip_nonfinite_updates", False)))

    def batch_size(self, plan: tuple) -> int:
        return sum(r.input.batch_size for r in self.route_plan(plan)[0])


def variables_of(state: dict) -> dict:
    """The model's variables in a train state: {"params": ..., **state["model_state"]}."""
    return {"params": state["params"], **state.get("model_state", {})}


def setup(config: ml_collections.ConfigDict) -> Setup:
    """Validate `config` and build the pieces of a run (no files written).

    Raises:
      ConfigError: bad config (message names the key and the fix).
    """
    mesh = shd.make_mesh(config.mesh)
    config_lib.validate(config, num_devices=mesh.size)
    routes = multitask.routes_from_config(config)
    task_plan = multitask.task_plan(config, routes)
    config.unlock()
    if task_plan is not None:  # the schedule's length; a set total_steps stops earlier
        config.total_steps = min(len(task_plan.schedule),
                                 config.get("total_steps") or len(task_plan.schedule))
    else:
        inp = config.input
        try:
            n_train = pipeline.num_examples(name=inp.dataset, split=inp.split,
                                            data_dir=config.get("data_dir"),
                                            label_subset=inp.get("label_subset"))
        except ValueError as e:
            raise config_lib.ConfigError(f"input: {e}") from None
        config.total_steps = total_steps_of(config, n_train)  # resolved (schedules read it)
    try:
        module = models.get_model_module(config.model_name)
    except ValueError as e:
        raise config_lib.ConfigError(str(e)) from None
    for r in routes.values():
        keys = r.task.inputs if isinstance(r.task.inputs, tuple) else (r.task.inputs,)
        missing = [k for k in keys if k not in r.spec]
        if missing:
            raise config_lib.ConfigError(
                f"{'task' if r.name is None else f'task {r.name}'}: task.inputs {missing} not "
                f"in the batches made by its input.pp "
                f"(keys: {sorted(r.spec)}); fix one of them")
        # One input: its (H, W, C)-like shape; several: {key: shape}.
        shape = (r.spec[keys[0]][0] if len(keys) == 1 and keys[0] == r.task.inputs
                 else {k: r.spec[k][0] for k in keys})
        try:
            module.check_input(config.get("model") or {}, shape)
        except ValueError as e:
            raise config_lib.ConfigError(str(e)) from None
    model = models.build_model(config.model_name, config.get("num_classes"),
                               **(config.get("model") or {}))
    main = next(iter(routes.values()))
    ctx = plugins.SetupContext(config=config, mesh=mesh, task=main.task, spec=main.spec)
    active = ([task_plan] if task_plan else []) + plugins.from_config(config, ctx)
    plan = plugins.StepPlan(active)
    s = Setup(config=config, mesh=mesh, module=module, model=model, routes=routes,
              plugins=active, plan=plan, tx=None, schedule=optim.make_schedule(config),
              frozen=None)
    # Params first (for the optimizer's masks), then the whole state's shardings.
    try:
        s.param_shapes = state_lib.abstract_params(
            model, main.task, main.spec, {**main.model_kw, **s.route_plan(plan(0))[1]})
        for r in routes.values():
            _probe_loss(model, r, s.route_plan(plan(0))[1])
    except config_lib.ConfigError:
        raise
    except ValueError as e:  # the model's own errors name their config key
        raise config_lib.ConfigError(str(e)) from e
    except (TypeError, KeyError, IndexError, AssertionError) as e:
        raise config_lib.ConfigError(
            f"model_name={config.model_name!r} does not build or its loss does not fit the "
            f"data ({type(e).__name__}: {_first_line(e)}); check config.model, num_classes, "
            f"task and input.pp") from e
    s.tx = optim.make_optimizer(config, s.param_shapes)
    s.frozen = optim.frozen_mask(s.param_shapes, config)
    _, s.state_shardings = s.init_state(materialize=False)
    return s


def _first_line(e: BaseException, limit: int = 160) -> str:
    text = (str(e).strip().splitlines() or [""])[0]
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _probe_loss(model: Any, route: multitask.Route, plan_kw: dict) -> None:
    """Trace (abstractly: no compute, no memory) init + forward + the task's loss on a dummy
    batch of the route's data, so a loss that does not fit the model's outputs or the batch
    (labels key missing, num_classes vs label depth) fails here, before anything is written.

    Raises:
      ConfigError: the loss is not one value per example, or the task and data disagree.
      TypeError / KeyError / ValueError: whatever the trace raises (the caller names it).
    """
    kw = {**route.model_kw, **plan_kw}
    init = state_lib.init_variables_fn(model, route.task, route.spec, kw)
    batch_spec = {k: jax.ShapeDtypeStruct((2, *shape), dtype)
                  for k, (shape, dtype) in route.spec.items()}
    key = "task" if route.name is None else f"multitask.tasks[{route.name!r}].task"
    labels = getattr(route.task, "labels", None)
    if isinstance(labels, str) and labels not in route.spec:
        raise config_lib.ConfigError(
            f"{key}.labels={labels!r} is not in the batches made by its input.pp (keys: "
            f"{sorted(route.spec)}); fix one of them")

    def loss(rng: jax.Array, batch: dict) -> jax.Array:
        variables = init(rng)
        logits, _ = model.apply(variables, route.task.model_inputs(batch), train=False, **kw)
        return route.task.loss(logits, batch)
    try:
        out = jax.eval_shape(loss, jax.random.PRNGKey(0), batch_spec)
    except (TypeError, ValueError) as e:
        if "shape" not in str(e).lower() and "broadcast" not in str(e).lower():
            raise
        logits = jax.eval_shape(
            lambda r, b: model.apply(init(r), route.task.model_inputs(b), train=False, **kw)[0],
            jax.random.PRNGKey(0), batch_spec)
        labels_shape = (route.spec[labels][0] if isinstance(labels, str) else "?")
        raise config_lib.ConfigError(
            f"{key}: the model's logits {tuple(logits.shape[1:])} (num_classes) do not fit the "
            f"labels {tuple(labels_shape)} made by input.pp ({_first_line(e, 80)}); make "
            f"num_classes and the labels' depth (e.g. onehot(K)) agree") from e
    if tuple(out.shape) != (2,):
        raise config_lib.ConfigError(
            f"{key}: the loss has shape {tuple(out.shape)}, not one value per example (2,); "
            f"check num_classes and the labels made by input.pp")


def train(config: ml_collections.ConfigDict, workdir: str, *,
          make_evaluators: Callable[..., list] | None = None) -> dict[str, float]:
    """Train per `config`, writing to `workdir`; returns the final results.

    `make_evaluators(context_for)` returns evaluators (objects with `run(params, *, final) ->
    metrics`); `context_for(task_name)` gives the keyword arguments of an evaluator's context
    for that task (None: the single task): `predict_fn`, `task`, `mesh`, `variable_shardings`,
    `data_dir`, `default_batch_size` and `workdir`. `vitx.experiment.train` passes
    `vitx.evaluators.from_config`; None: no evals.

    Raises:
      ConfigError: bad config, unwritable workdir, checkpoints of another model/optimizer or
        that do not restore (message names the key/path and the fix); nothing is written then.
      TrainingDiverged: a non-finite loss, gradient or state (see the module docstring).
      OSError: writing failed mid-run (e.g. ENOSPC, no space left on device).
    """
    if absl_logging.get_verbosity() > absl_logging.WARNING:  # never more verbose than that
        absl_logging.set_verbosity(absl_logging.WARNING)
    s = setup(config)
    config, mesh = s.config, s.mesh
    total_steps = config.total_steps
    is_main = jax.process_index() == 0

    def context_for(name: str | None = None) -> dict[str, Any]:
        predict = s.predict_fn_for(name)
        return dict(predict_fn=predict, task=s.routes[name].task, mesh=mesh,
                    variable_shardings=variables_of(s.state_shardings),
                    data_dir=config.get("data_dir"),
                    default_batch_size=s.routes[name].input.batch_size, workdir=workdir)
    evaluators = [] if make_evaluators is None else make_evaluators(context_for)

    # Everything below until config.json is written only reads (or renames a damaged checkpoint
    # aside): a bad start leaves the workdir as it was.
    abstract, state_shardings = s.init_state(materialize=False)
    try:
        check_writable(workdir, "--workdir", need_bytes=sum(
            int(np.prod(x.shape)) * np.dtype(x.dtype).itemsize
            for x in jax.tree.leaves(abstract)))
    except ValueError as e:
        raise config_lib.ConfigError(str(e)) from None
    ck_cfg = config.get("checkpoint") or {}
    ckpt_dir = os.path.join(workdir, "checkpoints")
    checkpointer = None
    start_step, skipped_before = 0, 0
    if os.path.isdir(ckpt_dir):
        checkpointer = ckpt_lib.Checkpointer(ckpt_dir, keep=ck_cfg.get("keep", 3),
                                             async_save=ck_cfg.get("async_save", True))
    if checkpointer is not None and checkpointer.all_steps():
        state, meta, _ = checkpointer.restore_with_fallback(
            abstract, _resume_check(config, workdir, ckpt_lib.shapes_of(abstract)))
        start_step = int(meta["step"])
        skipped_before = int(meta.get("skipped_steps", 0))
        print(f"vitx: resumed from {checkpointer.directory}/{start_step}", flush=True)
    else:
        state, _ = s.init_state()
        if config.get("model_init"):
            try:
                params = s.module.load(state["params"], config.model_init, config.get("model"),
                                       **(config.get("model_load") or {}))
            except (FileNotFoundError, ValueError) as e:
                raise config_lib.ConfigError(f"model_init={config.model_init!r}: {e}") from None
            params = jax.device_put(params, state_shardings["params"])
            opt_state = jax.jit(s.tx.init, out_shardings=state_shardings["opt_state"])(params)
            state = dict(state, params=params, opt_state=opt_state)
            print(f"vitx: initialised params from {config.model_init}", flush=True)

    def batches_before(step: int) -> dict[str | None, int]:
        """Batches each task consumed in steps [0, step): where its input stream resumes."""
        return (s.plugins[0].batches_before(step) if config.get("multitask")
                else {None: step})

    # One input stream per task; each resumes after the batches its task consumed.
    consumed = batches_before(start_step)
    batch_sharding = shd.batch_sharding(mesh)
    streams = {}
    for name, r in s.routes.items():
        inp = r.input
        try:
            ds = pipeline.build_dataset(
                name=inp.dataset, split=inp.split, data_dir=config.get("data_dir"), pp=inp.pp,
                global_batch_size=inp.batch_size, train=True, seed=config.get("seed", 0),
                start_step=consumed[name], shuffle_buffer=inp.get("shuffle_buffer", 10_000),
                cache=inp.get("cache", True), label_subset=inp.get("label_subset"))
        except ValueError as e:
            raise config_lib.ConfigError(f"{'input' if name is None else name}: {e}") from None
        streams[name] = pipeline.global_batches(ds, batch_sharding)

    os.makedirs(workdir, exist_ok=True)  # only now that the config is valid
    if checkpointer is None:
        checkpointer = ckpt_lib.Checkpointer(ckpt_dir, keep=ck_cfg.get("keep", 3),
                                             async_save=ck_cfg.get("async_save", True))
    if is_main:
        print("vitx: resolved config:\n" + config_lib.to_json(config), flush=True)
        write_json_atomic(os.path.join(workdir, "config.json"), config.to_dict())
        print(parameter_overview.get_parameter_overview(state["params"]), flush=True)
        n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state["params"]))
        sizes = ", ".join(f"{r.name or 'batch'} {r.input.batch_size}" for r in s.routes.values())
        print(f"vitx: {n_params:,} params; {total_steps} steps ({sizes}); "
              f"mesh {dict(mesh.shape)}", flush=True)
        if hasattr(s.module, "param_report"):  # e.g. PolyViT: shared / modality / task
            report = s.module.param_report(jax.device_get(state["params"]), config.get("model"))
            write_json_atomic(os.path.join(workdir, "param_report.json"), report)
            print("vitx: parameter report " + json.dumps(report, sort_keys=True), flush=True)

    text_writer = TextWriter(os.path.join(workdir, "metrics.jsonl"))
    writer = metric_writers.MultiWriter(
        [metric_writers.SummaryWriter(workdir), text_writer] if is_main else [])
    extra_args, extra_shardings = (), ()
    extra_loss = None
    for p in s.plugins:
        values, shardings = p.extra_args()
        extra_args, extra_shardings = extra_args + values, extra_shardings + shardings
        extra_loss = p.extra_loss or extra_loss

    # Batches of a plan: one batch, or a tuple of one per task (the "accumulated" schedule).
    train_steps = steps.StepCache(
        lambda plan: s.make_step(plan, extra_loss),
        in_shardings=(state_shardings, batch_sharding, *extra_shardings),
        out_shardings=(state_shardings, shd.replicated(mesh)), donate_argnums=(0,))
    planned = not s.plan.is_static

    def run_evals(step: int, final: bool = False) -> dict[str, float]:
        metrics: dict[str, float] = {}
        for ev in evaluators:
            metrics.update(ev.run(variables_of(state), final=final and is_main))
        if metrics:
            writer.write_scalars(step, metrics)
        return metrics

    skip_nonfinite = bool(config.get("skip_nonfinite_updates", False))
    guard = _NonFiniteGuard(mesh, skipped_before)

    def check_finite(step: int, flags: dict | None = None) -> None:
        """The NaN guard's host check (log steps, and before every save and the final evals):
        raises TrainingDiverged if a step since the last check had a non-finite loss or
        gradient (unless those updates are skipped) or, before a save, the state is not
        finite."""
        bad_state = False
        if flags is None:  # before a save: one round trip for the flags and the state
            flags, ok = jax.device_get((guard.flags, guard.state_finite(state)))
            bad_state = not bool(ok)
        first = 0 if skip_nonfinite else int(flags["first"])
        if not first and not bad_state:
            return
        checkpointer.close()  # pending (finite) saves land on disk first
        writer.flush()
        last = checkpointer.latest_step()
        where = (f"the last checkpoint (finite params) is step {last} "
                 f"({checkpointer.directory}/{last}); lower lr and run the same command to "
                 f"resume from it" if last is not None
                 else "no checkpoint was saved; lower lr and start again")
        what = (f"loss or gradients are NaN/inf at step {first}" if first else
                f"params or optimizer state are NaN/inf at step {step} (an update overflowed)")
        raise TrainingDiverged(f"training diverged: {what}; nothing after it was saved; {where}"
                               f", or set skip_nonfinite_updates=True to skip such updates")

    def save(step: int) -> None:
        if checkpointer.latest_step() == step:  # e.g. a stop signal on a periodic-save step
            return
        check_finite(step)  # never write a checkpoint with non-finite params
        done = batches_before(step)
        meta = {"step": step, "config": config.to_dict(),
                "examples_seen": sum(done[n] * r.input.batch_size for n, r in s.routes.items())}
        if skip_nonfinite:
            meta["skipped_steps"] = int(jax.device_get(guard.flags["skipped"]))
        checkpointer.save(step, state, meta)

    def next_batch(plan: tuple) -> Any:
        batches = tuple(next(streams[r.name]) for r in s.route_plan(plan)[0])
        return batches[0] if len(batches) == 1 else batches

    log_every = config.get("log_every_steps", 50)
    eval_every = config.get("eval_every_steps", 0)
    ckpt_every = ck_cfg.get("every_steps", 0)
    step = start_step
    t_last, step_last = time.perf_counter(), start_step
    t_start = t_last
    with _StopFlag() as stop:
        while step < total_steps:
            plan = s.plan(step)
            batch = next_batch(plan)
            state, metrics = train_steps(plan)(state, batch, *extra_args)
            step += 1
            guard.fold(metrics)  # on device, asynchronous: no host round trip here
            if step % log_every == 0 or step == total_steps or step == start_step + 1:
                metrics, flags = jax.device_get((metrics, guard.flags))
                for key in _GUARD_KEYS:
                    metrics.pop(key, None)
                if skip_nonfinite:
                    metrics["skipped_steps"] = flags["skipped"]
                now = time.perf_counter()
                sps = (step - step_last) / max(now - t_last, 1e-9)
                extra = {"steps_per_sec": sps, "img_per_sec": sps * s.batch_size(plan),
                         "eta_min": (total_steps - step) / max(sps, 1e-9) / 60}
                if planned:
                    extra["compiled_programs"] = train_steps.num_compiled
                    extra.update({k: v for k, v in plan if isinstance(v, int | float)})
                    text_writer.note = " ".join(f"{k}={','.join(v) if isinstance(v, tuple) else v}"
                                                for k, v in plan if not isinstance(v, int | float))
                writer.write_scalars(step, {**{k: float(v) for k, v in metrics.items()},
                                            **extra})
                text_writer.note = ""
                t_last, step_last = now, step
                check_finite(step, flags)
            if eval_every and step % eval_every == 0 and step != total_steps:
                run_evals(step)
            if ckpt_every and step % ckpt_every == 0 and step != total_steps:
                save(step)
            if stop.should_stop(step):
                save(step)
                checkpointer.close()
                writer.flush()
                print(f"vitx: stopped at step {step}/{total_steps}; run the same command "
                      f"again to resume", flush=True)
                return {}
        check_finite(step)
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
