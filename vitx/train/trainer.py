"""The one train loop: init/restore -> step -> eval -> save -> log.

Start-up precedence: resume from `WORKDIR/checkpoints` if it holds a checkpoint, else
`config.model_init` (a pretrained vitx workdir or `.npz`; see `vitx.train.transfer`), else random
init. SIGTERM/SIGINT make the loop save a checkpoint and return normally (exit status 0); a run
killed harder loses at most the steps since the last save. Outputs in WORKDIR: config.json,
checkpoints/, TensorBoard event files, metrics.jsonl (every logged scalar), results.json
(final metrics).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import time
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging as absl_logging
from clu import metric_writers, parameter_overview
from clu.metric_writers import interface as mw_interface

from vitx import config as config_lib
from vitx import evaluate, models
from vitx.data import pipeline
from vitx.train import checkpoint as ckpt_lib
from vitx.train import optim, steps
from vitx.train import sharding as shd

log = logging.getLogger("vitx")


class TextWriter(mw_interface.MetricWriter):
    """clu MetricWriter: readable stdout lines `[step 100] loss=0.1234 ...` and, with
    `jsonl_path`, one JSON object per write (`{"step": 100, "loss": 0.1234, ...}`)."""

    def __init__(self, jsonl_path: str | None = None):
        self.jsonl_path = jsonl_path

    def write_summaries(self, step: int, values: Mapping[str, Any],
                        metadata: Mapping[str, Any] | None = None) -> None:
        pass

    def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
        items = " ".join(f"{k}={_fmt(v)}" for k, v in sorted(scalars.items()))
        print(f"[step {step}] {items}", flush=True)
        if self.jsonl_path:
            with open(self.jsonl_path, "a") as f:
                f.write(json.dumps({"step": int(step), **{k: float(v) for k, v in
                                                          scalars.items()}}) + "\n")

    def write_images(self, step: int, images: Mapping[str, Any]) -> None:
        pass

    def write_videos(self, step: int, videos: Mapping[str, Any]) -> None:
        pass

    def write_audios(self, step: int, audios: Mapping[str, Any], *, sample_rate: int) -> None:
        pass

    def write_texts(self, step: int, texts: Mapping[str, str]) -> None:
        pass

    def write_histograms(self, step: int, arrays: Mapping[str, Any],
                         num_buckets: Mapping[str, int] | None = None) -> None:
        pass

    def write_hparams(self, hparams: Mapping[str, Any]) -> None:
        pass

    def flush(self) -> None:
        sys.stdout.flush()

    def close(self) -> None:
        self.flush()


def _fmt(v: Any) -> str:
    v = float(v)
    return f"{v:.4g}" if abs(v) < 1e4 else f"{v:.0f}"


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


def _model_kw_for(patch_size: int | None) -> dict:
    """Static model kwargs of one compiled program (FlexiViT's patch size, or none)."""
    return {} if patch_size is None else {"patch_size": patch_size}


def build_model(config: ml_collections.ConfigDict):
    return models.build_model(config.model_name, config.num_classes, **(config.get("model") or {}))


def total_steps_of(config: ml_collections.ConfigDict, n_train: int) -> int:
    """`total_steps`, or `total_epochs * n_train // batch_size` when total_steps is None."""
    if config.get("total_steps"):
        return int(config.total_steps)
    if not config.get("total_epochs"):
        raise config_lib.ConfigError("set total_steps or total_epochs in the config")
    return int(config.total_epochs * n_train // config.input.batch_size)


def init_state(config: ml_collections.ConfigDict, model: Any, tx: Any, image_shape: tuple,
               mesh: Any, model_kw: dict, *, materialize: bool = True) -> tuple[dict, Any]:
    """Random init of the train state directly into its shardings. Returns (state, shardings).

    With `materialize=False` the state is abstract (ShapeDtypeStructs carrying the shardings:
    the restore target), so resuming never allocates a throw-away random init.
    """
    rules = list(config.get("sharding_rules") or [])
    rng = jax.random.PRNGKey(config.get("seed", 0))
    init_rng, train_rng = jax.random.split(rng)

    def make_state(r: jax.Array) -> dict:
        params = model.init(r, jnp.zeros((1, *image_shape), jnp.float32), train=False,
                            **model_kw)["params"]
        return {"params": params, "opt_state": tx.init(params),
                "step": jnp.zeros((), jnp.int32), "rng": train_rng}

    abstract = jax.eval_shape(make_state, init_rng)
    state_shardings = shd.tree_shardings(abstract, mesh, rules)
    if not materialize:
        return ckpt_lib.abstract_like(abstract, state_shardings), state_shardings
    state = jax.jit(make_state, out_shardings=state_shardings)(init_rng)
    return state, state_shardings


def _load_init_params(config: ml_collections.ConfigDict, init_params: Any) -> Any:
    """Params for a fine-tune from `config.model_init` (vitx workdir or .npz[:subtree])."""
    from vitx.train import transfer

    path, subtree = transfer.parse_init_spec(config.model_init)
    if path.endswith(".npz"):
        loaded = transfer.load_npz(path, subtree=subtree)
    else:
        loaded, _ = ckpt_lib.load_params(path)
        if subtree:
            for part in subtree.split("/"):
                loaded = loaded[part]
    load_cfg = config.get("model_load") or {}
    return transfer.adapt_for_finetune(
        jax.device_get(init_params), loaded, dont_load=list(load_cfg.get("dont_load") or []),
        posemb_method=load_cfg.get("posemb_method", "bilinear"))


def _load_teacher(config: ml_collections.ConfigDict, mesh: Any) -> tuple[dict | None, tuple,
                                                                         tuple]:
    """Distillation teacher from `config.distill.teacher` (a vitx workdir: its config.json says
    which model it is). Returns (make_loss_fn kwargs, (teacher_params,), (their shardings,))."""
    dcfg = config.get("distill") or {}
    if not dcfg.get("teacher"):
        return None, (), ()
    path = dcfg.teacher
    cfg_path = os.path.join(path, "config.json")
    if not os.path.isfile(cfg_path):
        raise config_lib.ConfigError(f"distill.teacher={path!r} has no config.json; pass the "
                                     f"workdir of a finished vitx run")
    with open(cfg_path) as f:
        tcfg = json.load(f)
    teacher = models.build_model(tcfg["model_name"], tcfg["num_classes"], **tcfg["model"])
    if tcfg["num_classes"] != config.num_classes:
        raise config_lib.ConfigError(f"distill.teacher has {tcfg['num_classes']} classes but "
                                     f"num_classes={config.num_classes}; they must match")
    params, _ = ckpt_lib.load_params(path)
    shardings = shd.tree_shardings(params, mesh, list(config.get("sharding_rules") or []))
    params = jax.device_put(params, shardings)
    tkw = {}
    if tcfg.get("flexi"):
        tkw = {"patch_size": tcfg["flexi"]["patch_sizes"][0]}
    kw = dict(teacher=teacher, teacher_kw=tkw, label_weight=float(dcfg.get("label_weight", 0.0)),
              temperature=float(dcfg.get("temperature", 1.0)))
    print(f"vitx: distilling from {path} ({tcfg['model_name']} {tcfg['model'].get('variant')})",
          flush=True)
    return kw, (params,), (shardings,)


def _write_patch_size_plot(workdir: str, metrics: dict[str, float], evaluators: list,
                           image_hw: tuple[int, int]) -> None:
    from vitx import plots

    for ev in evaluators:
        if not ev.patch_sizes:
            continue
        per_size = plots.read_per_size_metrics(metrics, f"{ev.name}/accuracy")
        path = plots.plot_accuracy_vs_patch_size(
            {os.path.basename(os.path.normpath(workdir)): per_size},
            os.path.join(workdir, f"{ev.name}_accuracy_vs_patch_size.png"),
            image_size=image_hw, title=f"{ev.name} accuracy per patch size")
        print(f"vitx: wrote {path}", flush=True)


def train(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
    """Train per `config`, writing to `workdir`; returns the final eval metrics.

    Raises:
      ConfigError: bad config (message names the key and the fix).
    """
    if absl_logging.get_verbosity() > absl_logging.WARNING:  # never more verbose than that
        absl_logging.set_verbosity(absl_logging.WARNING)
    mesh = shd.make_mesh(config.mesh)
    config_lib.validate(config, num_devices=mesh.size)
    is_main = jax.process_index() == 0

    data_dir = config.get("data_dir")
    inp = config.input
    n_train = pipeline.num_examples(name=inp.dataset, split=inp.split, data_dir=data_dir,
                                    label_subset=inp.get("label_subset"))
    total_steps = total_steps_of(config, n_train)
    config.unlock()
    config.total_steps = total_steps  # resolved (schedules read it)

    # Patch-size schedule (FlexiViT): a pure function of (seed, step).
    patch_schedule = None
    if config.get("flexi"):
        from vitx.train.schedules import PatchSizeSchedule
        patch_schedule = PatchSizeSchedule.from_config(config.flexi, seed=config.get("seed", 0))

    model = build_model(config)
    image_shape = pipeline.image_shape(name=inp.dataset, split=inp.split, data_dir=data_dir,
                                       pp=inp.pp, label_subset=inp.get("label_subset"))
    if patch_schedule is None:
        config_lib.validate_image_size(config, image_shape[:2])
    else:
        from vitx.train.schedules import validate_patch_sizes
        try:
            validate_patch_sizes(patch_schedule.patch_sizes, image_shape[:2])
            for name, ev in (config.get("evals") or {}).items():
                if ev.get("patch_sizes"):
                    validate_patch_sizes(ev.patch_sizes, image_shape[:2],
                                         key=f"evals.{name}.patch_sizes")
        except ValueError as e:
            raise config_lib.ConfigError(str(e)) from e
    default_kw = _model_kw_for(patch_schedule(0) if patch_schedule else None)
    os.makedirs(workdir, exist_ok=True)  # only now that the config is valid
    if is_main:  # a bad start writes nothing
        print("vitx: resolved config:\n" + config_lib.to_json(config), flush=True)
        ckpt_lib.write_json_atomic(os.path.join(workdir, "config.json"), config.to_dict())

    # Params first (for the optimizer's masks), then the whole state in its shardings.
    param_shapes = jax.eval_shape(
        lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, *image_shape)), train=False,
                           **default_kw)["params"])
    tx = optim.make_optimizer(config, param_shapes)
    schedule = optim.make_schedule(config)
    frozen = optim.frozen_mask(param_shapes, config)
    ck_cfg = config.get("checkpoint") or {}
    checkpointer = ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints"),
                                         keep=ck_cfg.get("keep", 3),
                                         async_save=ck_cfg.get("async_save", True))
    resume = checkpointer.latest_step() is not None
    state, state_shardings = init_state(config, model, tx, image_shape, mesh, default_kw,
                                        materialize=not resume)
    start_step = 0
    if resume:
        state, meta = checkpointer.restore(state)
        start_step = int(meta["step"])
        print(f"vitx: resumed from {checkpointer.directory}/{start_step}", flush=True)
    elif config.get("model_init"):
        params = _load_init_params(config, state["params"])
        params = jax.device_put(params, state_shardings["params"])
        opt_state = jax.jit(tx.init, out_shardings=state_shardings["opt_state"])(params)
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
    repl = shd.replicated(mesh)

    distill, teacher_args, teacher_shardings = _load_teacher(config, mesh)

    def make_step(ps: int | None):
        return steps.make_train_step(
            model, tx, num_classes=config.num_classes,
            accum_steps=config.get("grad_accum_steps", 1), frozen=frozen, schedule=schedule,
            model_kw=_model_kw_for(ps), distill=distill)
    train_steps = steps.StepCache(
        make_step, in_shardings=(state_shardings, batch_sharding, *teacher_shardings),
        out_shardings=(state_shardings, repl), donate_argnums=(0,))

    evaluators = [
        evaluate.ClassificationEvaluator(
            name, ev, model=model, num_classes=config.num_classes, mesh=mesh, data_dir=data_dir,
            default_batch_size=inp.batch_size, param_shardings=state_shardings["params"])
        for name, ev in (config.get("evals") or {}).items()]

    def run_evals(step: int) -> dict[str, float]:
        metrics: dict[str, float] = {}
        for ev in evaluators:
            metrics.update(ev.run(state["params"]))
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
        name=inp.dataset, split=inp.split, data_dir=data_dir, pp=inp.pp,
        global_batch_size=inp.batch_size, train=True, seed=config.get("seed", 0),
        start_step=start_step, shuffle_buffer=inp.get("shuffle_buffer", 10_000),
        cache=inp.get("cache", True), label_subset=inp.get("label_subset"))
    batches = pipeline.global_batches(ds, batch_sharding)

    log_every = config.get("log_every_steps", 50)
    eval_every = config.get("eval_every_steps", 0)
    ckpt_every = ck_cfg.get("every_steps", 0)
    final_metrics: dict[str, float] = {}
    step = start_step
    t_last, step_last = time.perf_counter(), start_step
    t_start = t_last
    with _StopFlag() as stop:
        while step < total_steps:
            batch = next(batches)
            ps = patch_schedule(step) if patch_schedule else None
            state, metrics = train_steps(ps)(state, batch, *teacher_args)
            step += 1
            if step % log_every == 0 or step == total_steps or step == start_step + 1:
                metrics = jax.device_get(metrics)
                now = time.perf_counter()
                sps = (step - step_last) / max(now - t_last, 1e-9)
                extra = {"steps_per_sec": sps, "img_per_sec": sps * inp.batch_size,
                         "eta_min": (total_steps - step) / max(sps, 1e-9) / 60}
                if patch_schedule is not None:
                    extra["compiled_programs"] = train_steps.num_compiled
                    extra["patch_size"] = ps
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
        final_metrics = run_evals(step)
        if is_main and any(ev.patch_sizes for ev in evaluators):
            _write_patch_size_plot(workdir, final_metrics, evaluators, image_shape[:2])
        save(step)
        checkpointer.close()
    elapsed = time.perf_counter() - t_start
    results = {"step": step, "total_steps": total_steps, "train_seconds": elapsed,
               **final_metrics}
    if patch_schedule is not None:
        results["compiled_programs"] = train_steps.num_compiled
    if is_main:
        ckpt_lib.write_json_atomic(os.path.join(workdir, "results.json"), results)
        print("vitx: done. " + " ".join(f"{k}={_fmt(v)}" for k, v in final_metrics.items())
              + f" (results in {os.path.join(workdir, 'results.json')})", flush=True)
    writer.flush()
    writer.close()
    return results
