"""A run's start-up: validate and build (`setup`), then resume -> model_init -> init (`start`).

`setup(config)` reads the config once: it validates it, resolves `total_steps`, parses the typed
parts (`vitx.train.run_config.RunConfig`) and the data routes (`vitx.train.multitask`), builds
the model, plugins and optimizer and traces (abstractly) init + forward + loss on each route's
data, so a bad config fails before anything is written. `bench`, `vitx eval` and the train loop
all build from the resulting `Setup`. It also points JAX's persistent compilation cache at
`config.compilation_cache` (`vitx.train.profiling.use_compilation_cache`; on by default) before
anything compiles.

`start(s, workdir, make_evaluators)` then prepares the loop. Precedence: resume from
`WORKDIR/checkpoints` if it holds a checkpoint (a damaged latest one is moved aside to
`<step>.corrupt` and the previous one restored, `Checkpointer.restore_with_fallback`; its config
and state shapes must fit this config), else `model_init` (any checkpoint spec, see
`vitx.utils.checkpoints`; loaded by the model module's `load`), else random init. Everything
before `config.json` is written only reads (or renames a damaged checkpoint aside): a bad start
(unwritable workdir, no room for a checkpoint, checkpoints of another config, a bad dataset)
leaves the workdir as it was. Then process 0 writes config.json and, beside it, run_info.json
(device, software versions, CPU, host: `vitx.train.profiling.run_info`).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Iterator
from typing import Any

import jax
import ml_collections
import numpy as np
from clu import metric_writers, parameter_overview

from vitx import config as config_lib
from vitx import models
from vitx.data import pipeline
from vitx.train import checkpoint as ckpt_lib
from vitx.train import ema as ema_lib
from vitx.train import mixup as mixup_lib
from vitx.train import multitask, optim, plugins, profiling, steps
from vitx.train import sharding as shd
from vitx.train import state as state_lib
from vitx.train.checks import first_line, probe_loss, resume_check
from vitx.train.run_config import RunConfig
from vitx.train.writers import TextWriter
from vitx.utils import check_writable, timm_hub, write_json_atomic


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


def variables_of(state: dict) -> dict:
    """The model's variables in a train state: {"params": ..., **state["model_state"]}."""
    return {"params": state["params"], **state.get("model_state", {})}


@dataclasses.dataclass
class Setup:
    """Everything a run is built from, validated before anything is written.

    Attributes:
      config: the config, with `total_steps` resolved (plugins and `config.json` read it).
      run: its typed parts (`RunConfig`), read by everything else.
      mesh: the device mesh.
      module: the model module (`vitx.models.ModelModule`; its optional hooks: `hooks`).
      hooks: `vitx.models.hooks_of(module)`.
      model: the flax module.
      routes: {task name: `multitask.Route`} ({None: route} for a single-task config).
      plugins: the active plugins; `plan` their per-step plan (`plugins.StepPlan`).
      tx, schedule, frozen: optimizer, lr schedule, frozen-param mask.
      param_shapes: the params' abstract shapes.
      state_shardings: shardings of the train state.
    """

    config: ml_collections.ConfigDict
    run: RunConfig
    mesh: Any
    module: Any
    hooks: models.ModelHooks
    model: Any
    routes: dict
    plugins: list
    plan: plugins.StepPlan
    tx: Any = None
    schedule: Any = None
    frozen: Any = None
    param_shapes: Any = None
    state_shardings: Any = None
    _abstract_state: Any = dataclasses.field(default=None, init=False, repr=False, compare=False)

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

    def batches_before(self, step: int) -> dict[str | None, int]:
        """Batches each task consumed in steps [0, step): where its input stream resumes."""
        return self.plan.batches_before(step, self.routes)

    def predict_fn_for(self, name: str | None = None) -> Any:
        """(variables, batch, **static_kw) -> (logits (B, K), aux) of task `name`, the model in
        eval mode; `aux` is the model's dict of named intermediate outputs (e.g. "pre_logits"
        (B, D)).

        `variables` = {"params": ..., plus the model's state collections (batch_stats)}.

        Raises:
          ConfigError: `name` is not a task of this config.
        """
        if name not in self.routes:
            raise config_lib.ConfigError(f"evaluator task={name!r} is not a task of this config; "
                                         f"use one of {[n for n in self.routes if n]}")
        r = self.routes[name]

        def predict(variables: Any, batch: dict, **model_kw: Any) -> tuple[jax.Array, dict]:
            return self.model.apply(variables, r.task.model_inputs(batch), train=False,
                                    **{**r.model_kw, **model_kw})
        return predict

    def init_state(self, materialize: bool = True) -> tuple[dict, Any]:
        """(train state, its shardings): random init (abstract unless `materialize`).

        The abstract state is traced once per `Setup` and reused (start-up asks for it several
        times: each trace of a model's init costs seconds of Python)."""
        kw = {**self.main.model_kw, **self.route_plan(self.plan(0))[1]}
        if self._abstract_state is None:
            self._abstract_state = state_lib.init_state(
                self.run, self.model, self.task, self.tx, self.spec, self.mesh, kw,
                materialize=False)
        if not materialize:
            return self._abstract_state
        return state_lib.init_state(self.run, self.model, self.task, self.tx, self.spec,
                                    self.mesh, kw, shardings=self._abstract_state[1])

    def make_step(self, plan: tuple, extra_loss: Any = None) -> Any:
        """The python train step of one plan: its routes' losses (summed or averaged when the
        plan trains several), their masked update and learning-rate multiplier."""
        rs, kw = self.route_plan(plan)
        losses = [steps.make_loss_fn(self.model, r.task, {**r.model_kw, **kw},
                                     extra_loss=extra_loss) for r in rs]
        loss_fn = losses[0] if len(rs) == 1 else steps.multi_task_loss(
            losses, self.run.step.accumulate)
        active = None
        if rs[0].name is not None and self.hooks.active_mask is not None:
            masks = [self.hooks.active_mask(self.param_shapes, **r.model_kw) for r in rs]
            active = jax.tree.map(lambda *a: any(a), *masks)
        return steps.build_train_step(
            loss_fn, self.tx, accum_steps=self.run.step.grad_accum_steps,
            frozen=self.frozen, schedule=self.schedule, active=active,
            lr_mult=rs[0].lr_mult if len(rs) == 1 else 1.0,
            skip_nonfinite=self.run.step.skip_nonfinite,
            batch_fn=mixup_lib.batch_fn(self.run.mixup, [r.task for r in rs])
            if self.run.mixup else None,
            ema_fn=ema_lib.ema_fn(self.run.ema) if self.run.ema else None)

    def batch_size(self, plan: tuple) -> int:
        """Examples of one step of `plan` (over all the tasks it trains)."""
        return sum(r.input.batch_size for r in self.route_plan(plan)[0])


def _resolve_total_steps(config: ml_collections.ConfigDict,
                         task_plan: multitask.TaskPlan | None) -> None:
    """Set `config.total_steps`: the task schedule's length (a set total_steps stops earlier),
    or `total_steps_of` the train split (schedules read it).

    Raises:
      ConfigError: a bad dataset or split, or neither total_steps nor total_epochs.
    """
    config.unlock()
    if task_plan is not None:
        config.total_steps = min(len(task_plan.schedule),
                                 config.get("total_steps") or len(task_plan.schedule))
        return
    inp = config.input
    try:
        n_train = pipeline.num_examples(name=inp.dataset, split=inp.split,
                                        data_dir=config.get("data_dir"),
                                        label_subset=inp.get("label_subset"))
    except ValueError as e:
        raise config_lib.ConfigError(f"input: {e}") from None
    config.total_steps = total_steps_of(config, n_train)


def _check_inputs(module: Any, model_cfg: Any, routes: dict) -> None:
    """Each route's data holds its task's inputs, in a shape the model takes.

    Raises:
      ConfigError: a task input missing from the batches, or the model's `check_input` error.
    """
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
            module.check_input(model_cfg or {}, shape)
        except ValueError as e:
            raise config_lib.ConfigError(str(e)) from None


def setup(config: ml_collections.ConfigDict) -> Setup:
    """Validate `config` and build the pieces of a run (no files written but the compilation
    cache's folder).

    Sets `config.total_steps` (resolved from epochs or the task schedule) and JAX's compilation
    cache folder (`config.compilation_cache`).

    Raises:
      ConfigError: bad config (message names the key and the fix).
    """
    mesh = shd.make_mesh(config.mesh)
    config_lib.validate(config, num_devices=mesh.size)
    if hinted := timm_hub.apply_init_hints(config):  # a timm model_init: model.gelu="exact"
        print(f"vitx: model {hinted} from the timm checkpoint {config.model_init}", flush=True)
    profiling.use_compilation_cache(config.get("compilation_cache", profiling.AUTO))
    routes = multitask.routes_from_config(config)
    task_plan = multitask.task_plan(config, routes)
    _resolve_total_steps(config, task_plan)
    run = RunConfig.from_config(config)
    try:
        module = models.get_model_module(run.model.name)
    except ValueError as e:
        raise config_lib.ConfigError(str(e)) from None
    _check_inputs(module, run.model.cfg, routes)
    mixup_lib.check_routes(run.mixup, routes)
    model = models.build_model(run.model.name, run.model.num_classes, **(run.model.cfg or {}))
    main = next(iter(routes.values()))
    ctx = plugins.SetupContext(config=config, mesh=mesh, task=main.task, spec=main.spec)
    active = ([task_plan] if task_plan else []) + plugins.from_config(config, ctx)
    plan = plugins.StepPlan(active)
    s = Setup(config=config, run=run, mesh=mesh, module=module, hooks=models.hooks_of(module),
              model=model, routes=routes, plugins=active, plan=plan,
              schedule=optim.make_schedule(run.optim))
    # Params first (for the optimizer's masks), then the whole state's shardings.
    try:
        plan_kw = s.route_plan(plan(0))[1]
        variables = state_lib.abstract_variables(model, main.task, main.spec,
                                                 {**main.model_kw, **plan_kw})
        s.param_shapes = variables["params"]
        for r in routes.values():  # the main route's init is traced once, above
            probe_loss(model, r, plan_kw, variables if r is main else None)
    except config_lib.ConfigError:
        raise
    except ValueError as e:  # the model's own errors name their config key
        raise config_lib.ConfigError(str(e)) from e
    except (TypeError, KeyError, IndexError, AssertionError) as e:
        raise config_lib.ConfigError(
            f"model_name={run.model.name!r} does not build or its loss does not fit the "
            f"data ({type(e).__name__}: {first_line(e)}); check config.model, num_classes, "
            f"task and input.pp") from e
    s.tx = optim.make_optimizer(run.optim, s.param_shapes)
    s.frozen = optim.frozen_mask(s.param_shapes, run.optim)
    _, s.state_shardings = s.init_state(materialize=False)
    return s


@dataclasses.dataclass
class Start:
    """What the loop starts from (`start`).

    Attributes:
      state: the train state (restored, loaded from `model_init` or random).
      step: the step it is at (0 unless resumed).
      skipped_before: updates the NaN guard skipped before this start.
      checkpointer: the run's `Checkpointer` (WORKDIR/checkpoints).
      streams: {task name: iterator of global batches}, each resuming where its task stopped.
      evaluators: from `make_evaluators`.
      writer: the metric writers (TensorBoard + `text` on process 0; none elsewhere).
      text: the `TextWriter` (stdout lines and metrics.jsonl).
    """

    state: dict
    step: int
    skipped_before: int
    checkpointer: ckpt_lib.Checkpointer
    streams: dict[str | None, Iterator[Any]]
    evaluators: list
    writer: Any
    text: TextWriter


def _restore_or_init(s: Setup, workdir: str, checkpointer: ckpt_lib.Checkpointer | None,
                     abstract: dict) -> tuple[dict, int, int]:
    """(state, step, skipped updates): the latest checkpoint, else `model_init`, else random.

    Raises:
      ConfigError: checkpoints that do not fit this config or do not restore, or a
        `model_init` that does not load.
    """
    if checkpointer is not None and checkpointer.all_steps():
        state, meta, _ = checkpointer.restore_with_fallback(
            abstract, resume_check(s.run.config_dict, workdir, ckpt_lib.shapes_of(abstract)))
        print(f"vitx: resumed from {checkpointer.directory}/{int(meta['step'])}", flush=True)
        return state, int(meta["step"]), int(meta.get("skipped_steps", 0))
    state, _ = s.init_state()
    m = s.run.model
    if m.init:
        try:
            params = s.module.load(state["params"], m.init, m.cfg, **m.load_kw)
        except (FileNotFoundError, ValueError) as e:
            raise config_lib.ConfigError(f"model_init={m.init!r}: {e}") from None
        params = jax.device_put(params, s.state_shardings["params"])
        opt_state = jax.jit(s.tx.init, out_shardings=s.state_shardings["opt_state"])(params)
        state = dict(state, params=params, opt_state=opt_state)
        if "ema" in state:  # the EMA starts from the loaded weights
            state["ema"] = jax.jit(ema_lib.init, out_shardings=s.state_shardings["ema"])(
                ema_lib.variables(state))
        print(f"vitx: initialised params from {m.init}", flush=True)
    return state, 0, 0


def _streams(s: Setup, start_step: int) -> dict[str | None, Iterator[Any]]:
    """One input stream per task; each resumes after the batches its task consumed.

    Raises:
      ConfigError: a bad dataset, split or pp (prefixed with the task's input key).
    """
    consumed = s.batches_before(start_step)
    batch_sharding = shd.batch_sharding(s.mesh)
    streams = {}
    for name, r in s.routes.items():
        inp = r.input
        try:
            ds = pipeline.build_dataset(
                name=inp.dataset, split=inp.split, data_dir=s.run.data_dir, pp=inp.pp,
                global_batch_size=inp.batch_size, train=True, seed=s.run.seed,
                start_step=consumed[name], shuffle_buffer=inp.get("shuffle_buffer", 10_000),
                cache=inp.get("cache", True), label_subset=inp.get("label_subset"))
        except ValueError as e:
            raise config_lib.ConfigError(f"{'input' if name is None else name}: {e}") from None
        streams[name] = pipeline.global_batches(ds, batch_sharding)
    return streams


def _announce(s: Setup, state: dict, workdir: str) -> None:
    """Process 0: print the resolved config and the params, write config.json, run_info.json
    (and the model's param_report.json where it has that hook)."""
    print("vitx: resolved config:\n" + config_lib.to_json(s.config), flush=True)
    write_json_atomic(os.path.join(workdir, "config.json"), s.run.config_dict)
    write_json_atomic(os.path.join(workdir, "run_info.json"), profiling.run_info())
    print(parameter_overview.get_parameter_overview(state["params"]), flush=True)
    n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state["params"]))
    sizes = ", ".join(f"{r.name or 'batch'} {r.input.batch_size}" for r in s.routes.values())
    print(f"vitx: {n_params:,} params; {s.run.loop.total_steps} steps ({sizes}); "
          f"mesh {dict(s.mesh.shape)}", flush=True)
    if s.hooks.param_report is not None:  # e.g. PolyViT: shared / modality / task
        report = s.hooks.param_report(jax.device_get(state["params"]), s.run.model.cfg)
        write_json_atomic(os.path.join(workdir, "param_report.json"), report)
        print("vitx: parameter report " + json.dumps(report, sort_keys=True), flush=True)


def start(s: Setup, workdir: str,
          make_evaluators: Callable[[Callable[..., dict]], list] | None = None) -> Start:
    """Build the evaluators, restore or init the state, open the input streams, then (only now
    that all of that passed) create `workdir` with config.json and the metric writers.

    `make_evaluators(context_for)`: see `vitx.train.trainer.train`.

    Raises:
      ConfigError: an unwritable workdir or one without room for a checkpoint, checkpoints of
        another config or that do not restore, a bad `model_init`, dataset or evaluator;
        nothing is written then.
    """
    def context_for(name: str | None = None) -> dict[str, Any]:
        predict = s.predict_fn_for(name)
        return dict(predict_fn=predict, task=s.routes[name].task, mesh=s.mesh,
                    variable_shardings=variables_of(s.state_shardings),
                    data_dir=s.run.data_dir,
                    default_batch_size=s.routes[name].input.batch_size, workdir=workdir,
                    model=s.run.model)
    evaluators = [] if make_evaluators is None else make_evaluators(context_for)

    abstract, _ = s.init_state(materialize=False)
    try:
        check_writable(workdir, "--workdir", need_bytes=sum(
            int(np.prod(x.shape)) * np.dtype(x.dtype).itemsize
            for x in jax.tree.leaves(abstract)))
    except ValueError as e:
        raise config_lib.ConfigError(str(e)) from None
    ck = s.run.checkpoint
    ckpt_dir = os.path.join(workdir, "checkpoints")
    checkpointer = (ckpt_lib.Checkpointer(ckpt_dir, keep=ck.keep, async_save=ck.async_save)
                    if os.path.isdir(ckpt_dir) else None)
    state, step, skipped_before = _restore_or_init(s, workdir, checkpointer, abstract)
    streams = _streams(s, step)

    os.makedirs(workdir, exist_ok=True)  # only now that the config is valid
    if checkpointer is None:
        checkpointer = ckpt_lib.Checkpointer(ckpt_dir, keep=ck.keep, async_save=ck.async_save)
    is_main = jax.process_index() == 0
    if is_main:
        _announce(s, state, workdir)
    text = TextWriter(os.path.join(workdir, "metrics.jsonl"))
    writer = metric_writers.MultiWriter(
        [metric_writers.SummaryWriter(workdir), text] if is_main else [])
    return Start(state, step, skipped_before, checkpointer, streams, evaluators, writer, text)
