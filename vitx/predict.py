"""`vitx predict`: a checkpoint's top-k classes for a user's own files, as JSON lines.

    vitx predict --config CFG --checkpoint WORKDIR|STEP_DIR|file.npz [--config.k=v ...]
        [--task NAME ...] [--top_k 5] [--batch_size N] [--output FILE] [--ema] FILE ...

Each file is read by its type (`vitx.data.files`: PNG/JPEG/BMP/GIF images, WAV audio, a `.npy`
clip or a folder of frames for video), made into an example of the dataset of the config's
eval of that task and run through that eval's pp (so WAV audio gets the same `log_mel` as in
training), then through the model in batches, the model in eval mode. The examples of a task
are batched together (the last batch zero-padded to one compiled shape), so a file's answer
does not depend on the other files of the call.

For a multi-task checkpoint (PolyViT, Likhosherstov et al. 2023, Sec. 3: one encoder, a
tokenizer per modality, a head per task) one call takes files of several modalities and
answers every requested task of each file's modality (`--task`, repeatable; default: all of
them), the multi-modal inference of the PolyViT patent (WO2023059737A1, claim 23).

One JSON object per (file, task), in the order of the files, then of the config's tasks:

    {"file": "a.png", "task": "digits", "modality": "image", "labels": ["3", "8"],
     "classes": [3, 8], "probs": [0.91, 0.05]}

`task` is null for single-task configs. Labels are the class names of the dataset's
`ClassLabel` feature (TFDS metadata) that feeds the task: the one named by `task.labels` when
its class count equals the head's, else the only one with that count; otherwise the class
indices as strings. Probabilities are the task's (`task.predict`: softmax, or sigmoid for
`multilabel`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import sys
from collections.abc import Sequence
from typing import Any, TextIO

import jax
import ml_collections
import numpy as np
import tensorflow_datasets as tfds

from vitx.data import files as files_lib
from vitx.data.info import DatasetInfo, dataset_info
from vitx.train import sharding as shd
from vitx.train import trainer
from vitx.utils import checkpoints, tree

__all__ = ["Prediction", "Predictor", "TaskInput", "main", "predict_files"]


@dataclasses.dataclass(frozen=True)
class TaskInput:
    """How files become inputs of one task: read from the config's eval of that task.

    Attributes:
      name: the task (a route name; None for single-task configs).
      modality: "image", "audio" or "video": the files it takes.
      info: the eval dataset (features, class names).
      key: the dataset feature a file is written to.
      pp: the eval's preprocessing spec.
      inputs: the batch key the model reads after `pp` (`task.inputs`).
      shape: the per-example shape of `inputs` the model was built for.
      sample_rate: Hz that audio is resampled to (`log_mel`'s), or None.
      label_names: one name per class (index = class id).
      batch_size: examples per compiled call.
    """

    name: str | None
    modality: str
    info: DatasetInfo
    key: str
    pp: str
    inputs: str
    shape: tuple[int, ...]
    sample_rate: int | None
    label_names: tuple[str, ...]
    batch_size: int


@dataclasses.dataclass(frozen=True)
class Prediction:
    """One (file, task) answer: `logits` (K,) and `probs` (K,), float32."""

    file: str
    task: str | None
    modality: str
    logits: np.ndarray
    probs: np.ndarray
    label_names: tuple[str, ...]

    def record(self, top_k: int) -> dict[str, Any]:
        """The JSON line: file, task, modality and the `top_k` classes, most probable first."""
        order = np.argsort(-self.probs, kind="stable")[:max(1, top_k)]
        return {"file": self.file, "task": self.task, "modality": self.modality,
                "labels": [self.label_names[i] for i in order],
                "classes": [int(i) for i in order],
                "probs": [round(float(self.probs[i]), 6) for i in order]}


def _eval_cfg(config: ml_collections.ConfigDict, name: str | None) -> ml_collections.ConfigDict:
    """The first `config.evals` entry of task `name` with a dataset and pp (classification
    evals first).

    Raises:
      ValueError: none (the fix: add one).
    """
    entries = [c for c in (config.get("evals") or {}).values()
               if c.get("task") == name and c.get("dataset") and c.get("pp")]
    entries.sort(key=lambda c: c.get("type", "classification") != "classification")
    if not entries:
        what = "the task" if name is None else f"task {name!r}"
        raise ValueError(f"config.evals has no entry for {what} with a dataset and pp to read "
                         f"files with; add evals.<name>=dict(task=..., dataset=..., split=..., "
                         f"pp=...)")
    return entries[0]


def _label_names(info: DatasetInfo, labels_key: str, num_classes: int,
                 label_subset: Sequence[int] | None) -> tuple[str, ...]:
    """Class names from the dataset's ClassLabel feature that feeds a head of `num_classes`."""
    def names(k: str) -> list[str]:
        n = [str(x) for x in info.features[k].names]
        return [n[i] for i in label_subset] if label_subset else n
    keys = [k for k, f in info.features.items() if isinstance(f, tfds.features.ClassLabel)]
    fits = [k for k in keys if len(names(k)) == num_classes]
    if labels_key in fits:
        return tuple(names(labels_key))
    if len(fits) == 1:
        return tuple(names(fits[0]))
    return tuple(str(i) for i in range(num_classes))


def _task_modality(route: Any, info: DatasetInfo) -> str:
    """The route's `modality` model kwarg (multi-task models), else that of the dataset
    feature named `task.inputs`, else the dataset's only modality.

    Raises:
      ValueError: none can be told (the dataset has several, or none).
    """
    if route.model_kw.get("modality") in files_lib.MODALITIES:
        return route.model_kw["modality"]
    inputs = route.task.inputs
    if inputs in info.features and files_lib.feature_modality(info.features[inputs]):
        return files_lib.feature_modality(info.features[inputs])
    found = {files_lib.feature_modality(f) for f in info.features.values()} - {None}
    if len(found) != 1:
        raise ValueError(f"cannot tell which files task.inputs={inputs!r} takes: dataset "
                         f"{info.name!r} has features of modalities {sorted(found)}; predict "
                         f"reads image, audio or video features")
    return found.pop()


def _load_variables(s: Any, checkpoint: str, ema: bool) -> tuple[Any, Any]:
    """(variables on the mesh, their shardings): strict, as `vitx eval` (no surgery).

    Raises:
      FileNotFoundError / ValueError: no checkpoint there, or params that do not fit.
    """
    kw = {"ema": True} if ema else {}
    loaded, _ = checkpoints.load_params(checkpoint, **kw)
    abstract, _ = s.init_state(materialize=False)
    template = jax.tree.map(lambda x: np.broadcast_to(np.zeros((), x.dtype), x.shape),
                            trainer.variables_of(abstract))
    variables = tree.merge_params(
        template, {"params": loaded, **checkpoints.load_model_state(checkpoint, **kw)})
    shardings = shd.tree_shardings(variables, s.mesh, list(s.run.sharding_rules))
    return jax.device_put(variables, shardings), shardings


class Predictor:
    """A checkpoint ready to answer files: the model, its variables and one `TaskInput` per
    task of the config.

    Args:
      config: the run's config (with overrides); `config.evals` gives each task's dataset and pp.
      checkpoint: any checkpoint spec (`vitx.utils.checkpoints`), strictly fitting the model.
      batch_size: examples per call (None: the eval's `batch_size`, else 64), rounded up to a
        multiple of the device count.
      ema: the checkpoint's EMA weights (runs with `config.ema`).

    Raises:
      ConfigError / ValueError / FileNotFoundError: a bad config, checkpoint or eval entry.
    """

    def __init__(self, config: ml_collections.ConfigDict, checkpoint: str, *,
                 batch_size: int | None = None, ema: bool = False):
        if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
            raise ValueError(f"--batch_size={batch_size!r} must be a positive int")
        with contextlib.redirect_stdout(sys.stderr):  # stdout is for the JSON lines
            self.setup = s = trainer.setup(config)
            self.variables, shardings = _load_variables(s, checkpoint, ema)
        self.tasks: dict[str | None, TaskInput] = {}
        self._fns: dict[str | None, Any] = {}
        batch_sharding = shd.batch_sharding(s.mesh)
        for name, route in s.routes.items():
            inputs = route.task.inputs
            if not isinstance(inputs, str):
                raise ValueError(f"task.inputs={inputs!r}: predict reads one input per task; "
                                 f"use a single-input task")
            cfg = _eval_cfg(config, name)
            info = dataset_info(cfg.dataset, config.get("data_dir"))
            modality = _task_modality(route, info)
            mel = files_lib.log_mel_args(cfg.pp) if modality == "audio" else None
            prefer = (mel["key"],) if mel else (inputs,)
            size = batch_size or int(cfg.get("batch_size") or 64)
            size = -(-size // s.mesh.size) * s.mesh.size
            predict = s.predict_fn_for(name)
            out_shape = jax.eval_shape(
                lambda v, x, p=predict, k=inputs: p(v, {k: x})[0], self.variables,
                jax.ShapeDtypeStruct((size, *route.spec[inputs][0]), route.spec[inputs][1]))
            if len(out_shape.shape) != 2:
                raise ValueError(f"task {name!r} gives outputs of shape {out_shape.shape}, not "
                                 f"class scores (batch, classes); predict answers "
                                 f"classification tasks")
            self.tasks[name] = TaskInput(
                name=name, modality=modality, info=info,
                key=files_lib.input_key(info, modality, prefer), pp=cfg.pp, inputs=inputs,
                shape=tuple(route.spec[inputs][0]),
                sample_rate=mel["sample_rate"] if mel else None,
                label_names=_label_names(info, route.task.labels, out_shape.shape[1],
                                         cfg.get("label_subset")),
                batch_size=size)
            self._fns[name] = jax.jit(
                lambda v, x, p=predict, k=inputs, t=route.task: (
                    lambda logits: (logits, t.predict(logits)))(p(v, {k: x})[0]),
                in_shardings=(shardings, batch_sharding))

    def select(self, tasks: Sequence[str] | None) -> list[str | None]:
        """The tasks to answer: `tasks` in config order (None: all).

        Raises:
          ValueError: a task the checkpoint's config does not have (naming it and the known).
        """
        if not tasks:
            return list(self.tasks)
        named = [n for n in self.tasks if n is not None]
        for t in tasks:
            if t not in self.tasks:
                fix = (f"use one of {named}" if named else
                       "this config has one unnamed task; drop --task")
                raise ValueError(f"--task {t!r} is not a task of this checkpoint's config; {fix}")
        return [n for n in self.tasks if n in tasks]

    def inputs_for(self, name: str | None, paths: Sequence[str]) -> np.ndarray:
        """The model inputs (len(paths), *shape) of task `name` for `paths`.

        Raises:
          ValueError: an unreadable file, or one whose preprocessed input has another shape
            than the model takes (naming the file and the fix).
        """
        t = self.tasks[name]
        examples = [files_lib.example_from_file(t.info, p, t.modality, t.key, t.sample_rate)
                    for p in paths]
        out = []
        for path, ex in zip(paths, files_lib.preprocess(examples, t.pp), strict=True):
            x = ex[t.inputs]
            if tuple(x.shape) != t.shape:
                raise ValueError(f"input file {path!r} gives {t.inputs} of shape {x.shape} after "
                                 f"the pp {t.pp!r}, the model takes {t.shape}; resize the file "
                                 f"or add a resize to that eval's pp")
            out.append(x)
        return np.stack(out)

    def run(self, name: str | None, paths: Sequence[str]) -> list[Prediction]:
        """Predictions of task `name` for `paths` (all of its modality), in batches."""
        t = self.tasks[name]
        preds: list[Prediction] = []
        for i in range(0, len(paths), t.batch_size):
            chunk = list(paths[i:i + t.batch_size])
            x = self.inputs_for(name, chunk)
            pad = np.zeros((t.batch_size - len(chunk), *x.shape[1:]), x.dtype)
            logits, probs = jax.device_get(self._fns[name](
                self.variables, np.concatenate([x, pad])))
            preds.extend(Prediction(file=p, task=name, modality=t.modality,
                                    logits=np.asarray(logits[j], np.float32),
                                    probs=np.asarray(probs[j], np.float32),
                                    label_names=t.label_names)
                         for j, p in enumerate(chunk))
        return preds

    def __call__(self, paths: Sequence[str], tasks: Sequence[str] | None = None
                 ) -> list[Prediction]:
        """Every requested task of each file's modality: per file, in the config's task order.

        Raises:
          FileNotFoundError: a missing file.
          ValueError: an unknown `tasks` entry, a file type no requested task takes, an
            unreadable file (each naming the file or task and the fix).
        """
        chosen = self.select(tasks)
        modality = {p: files_lib.modality_of(p) for p in paths}
        takes = sorted({self.tasks[n].modality for n in chosen})
        for p in paths:
            if modality[p] not in takes:
                which = f"--task {list(tasks)}" if tasks else "this checkpoint's tasks"
                raise ValueError(f"input file {p!r} is {modality[p]}, but {which} take "
                                 f"{' or '.join(takes)}; pass {' or '.join(takes)} files"
                                 + (" or another --task" if tasks else ""))
        by_task = {n: self.run(n, [p for p in paths if modality[p] == self.tasks[n].modality])
                   for n in chosen}
        out: dict[tuple[str, str | None], Prediction] = {
            (pr.file, n): pr for n, prs in by_task.items() for pr in prs}
        return [out[(p, n)] for p in dict.fromkeys(paths) for n in chosen if (p, n) in out]


def predict_files(config: ml_collections.ConfigDict, checkpoint: str, paths: Sequence[str], *,
                  tasks: Sequence[str] | None = None, batch_size: int | None = None,
                  ema: bool = False) -> list[Prediction]:
    """`Predictor(config, checkpoint, ...)(paths, tasks)`; the files' types are checked first.

    Raises:
      See `Predictor` and `Predictor.__call__`.
    """
    for p in paths:
        files_lib.modality_of(p)  # a missing or unknown file fails before the model is built
    return Predictor(config, checkpoint, batch_size=batch_size, ema=ema)(paths, tasks)


def write_records(preds: Sequence[Prediction], top_k: int, out: TextIO) -> None:
    """One JSON line per prediction (`Prediction.record`)."""
    for pr in preds:
        out.write(json.dumps(pr.record(top_k)) + "\n")


def main(args: Any, config: ml_collections.ConfigDict) -> None:
    """`vitx predict`: `args` has checkpoint, files, task, top_k, batch_size, output, ema.

    Raises:
      ValueError: `--top_k` < 1, and see `predict_files`.
    """
    if args.top_k < 1:
        raise ValueError(f"--top_k={args.top_k} must be >= 1")
    preds = predict_files(config, args.checkpoint, args.files, tasks=args.task,
                          batch_size=args.batch_size, ema=getattr(args, "ema", False))
    if args.output:
        from vitx.utils import atomic_write

        with atomic_write(args.output) as f:
            write_records(preds, args.top_k, f)
        print(f"vitx: {len(preds)} predictions written to {args.output}", file=sys.stderr)
    else:
        write_records(preds, args.top_k, sys.stdout)
