"""mIoU and pixel accuracy of a per-pixel classifier over a whole split, plus a PNG of masks.

    config.evals.test = dict(type="segmentation", dataset="digit_scenes", split="test",
                             pp="decode(channels=1)|value_range(-1,1)|keep('image', 'mask')",
                             batch_size=100, patch_sizes=None)   # FlexiViT: e.g. (4, 8, 16)

Metrics: `<name>/mIoU` (the mean over classes of IoU_c = TP_c / (TP_c + FP_c + FN_c), counted
over all pixels of the split, over the classes that occur in the labels or the predictions:
the PASCAL VOC / Cityscapes definition, Everingham et al., IJCV 2010, Sec. 4.2), `<name>/
pixel_accuracy` (correct pixels / all pixels) and `<name>/loss` (the task's mean per-pixel
cross-entropy). All come from one K x K confusion matrix summed exactly on device (padding of
the last batch masked). With `patch_sizes` (FlexiViT) every metric is given per size
(`<name>/mIoU@8`, ...) and the unsuffixed ones are the means over the sizes. At the end of
training (`final=True`) it writes `<name>_masks.png` (the first test images, their true and
predicted masks) and, with patch sizes, `<name>_miou_vs_patch_size.png` into the workdir.
"""

from __future__ import annotations

import functools
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from vitx.data import pipeline
from vitx.evaluators import EvalContext, features
from vitx.train import sharding as shd
from vitx.train import steps
from vitx.utils import atomic_write, plots
from vitx.utils.patch_sizes import validate_patch_sizes

__all__ = ["Evaluator", "confusion_matrix", "segmentation_metrics"]

NUM_SHOWN = 8  # images drawn in the PNG


def confusion_matrix(labels: jax.Array, preds: jax.Array, num_classes: int,
                     weights: jax.Array | None = None) -> jax.Array:
    """(K, K) float32 counts, entry [t, p] = pixels of true class t predicted as p.

    Args:
      labels, preds: int arrays of one shape (e.g. (B, H, W)), values in [0, K).
      weights: per-pixel weights of that shape (0 drops a pixel), or None (all 1).
    """
    idx = labels.astype(jnp.int32).reshape(-1) * num_classes + preds.astype(jnp.int32).reshape(-1)
    w = None if weights is None else weights.astype(jnp.float32).reshape(-1)
    counts = jnp.bincount(idx, weights=w, length=num_classes * num_classes)
    return counts.astype(jnp.float32).reshape(num_classes, num_classes)


def segmentation_metrics(confusion: np.ndarray) -> dict[str, Any]:
    """{"mIoU", "pixel_accuracy", "iou" (K,) with NaN for absent classes} of a (K, K) confusion
    matrix (rows: true class, columns: predicted). mIoU averages the classes with a non-empty
    union (true or predicted somewhere); 0.0 for an empty matrix."""
    conf = np.asarray(confusion, np.float64)
    tp = np.diag(conf)
    union = conf.sum(0) + conf.sum(1) - tp
    iou = np.where(union > 0, tp / np.maximum(union, 1e-12), np.nan)
    total = conf.sum()
    return {"mIoU": float(np.nanmean(iou)) if np.any(union > 0) else 0.0,
            "pixel_accuracy": float(tp.sum() / total) if total > 0 else 0.0, "iou": iou}


class Evaluator:
    """mIoU, pixel accuracy and loss of `ctx.predict_fn`'s per-pixel logits on one split.

    Raises:
      ValueError: a task other than `segmentation`; an unknown dataset or split, a bad pp spec
        or batch size; batches without the task's mask key (a dataset without masks); patch
        sizes that do not divide the image.
    """

    def __init__(self, name: str, cfg: ml_collections.ConfigDict, ctx: EvalContext):
        self.name, self.ctx = name, ctx
        task = ctx.task
        if type(task).__module__ != "vitx.tasks.segmentation":
            raise ValueError(f"a segmentation eval needs task.type='segmentation', not "
                             f"{type(task).__module__}; fix task.type or evals.{name}.type")
        self.ds = features.eval_dataset(cfg, ctx, cfg.split)
        spec = self.ds.element_spec
        if task.labels not in spec:
            raise ValueError(f"dataset {cfg.dataset!r} with its pp gives no {task.labels!r} "
                             f"(keys: {sorted(spec)}); use a dataset with per-pixel masks "
                             f"(digit_scenes) and keep {task.labels!r} in evals.{name}.pp")
        self.image_hw = tuple(int(d) for d in spec[task.inputs].shape[1:3])
        self.patch_sizes = list(cfg.get("patch_sizes") or [])
        if self.patch_sizes:
            validate_patch_sizes(self.patch_sizes, self.image_hw,
                                 key=f"evals.{name}.patch_sizes")
        self.batch_sharding = shd.batch_sharding(ctx.mesh)
        predict, k = ctx.predict_fn, task.num_classes

        def outputs(variables: Any, batch: dict, **model_kw: Any) -> dict:
            logits, _ = predict(variables, batch, **model_kw)
            labels = task.targets(logits, batch)
            mask = batch.get(pipeline.MASK_KEY, jnp.ones(logits.shape[:1])).astype(jnp.float32)
            pred = jnp.argmax(logits, -1)
            weights = jnp.broadcast_to(mask[:, None, None], labels.shape)
            return {"confusion": confusion_matrix(labels, pred, k, weights),
                    "loss": jnp.sum(task.loss(logits, batch) * mask), "count": jnp.sum(mask),
                    "pred": pred.astype(jnp.int8)}
        self.cache = steps.StepCache(
            lambda plan: functools.partial(outputs, **dict(plan)),
            in_shardings=(ctx.variable_shardings, self.batch_sharding),
            out_shardings=shd.replicated(ctx.mesh))

    def evaluate(self, variables: Any, plan: tuple = ()) -> dict[str, Any]:
        """{"mIoU", "pixel_accuracy", "iou", "loss", "count"} over the split, and the first
        images with their true and predicted masks ("shown")."""
        fn, task = self.cache(plan), self.ctx.task
        totals = None
        shown: dict[str, list] = {"images": [], "labels": [], "preds": []}
        for batch in pipeline.global_batches(self.ds, self.batch_sharding):
            out = fn(variables, batch)
            sums = {k: out[k] for k in ("confusion", "loss", "count")}
            totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
            if not shown["images"]:  # the first batch holds the shown images
                n = min(NUM_SHOWN, int(out["count"]))
                shown["images"].append(np.asarray(jax.device_get(batch[task.inputs]))[:n])
                shown["labels"].append(np.asarray(jax.device_get(batch[task.labels]))[:n])
                shown["preds"].append(np.asarray(jax.device_get(out["pred"]))[:n])
        totals = jax.device_get(totals)
        res = segmentation_metrics(totals["confusion"])
        n = float(totals["count"])
        res.update(loss=float(totals["loss"]) / max(n, 1.0), count=n,
                   shown={k: v[0] for k, v in shown.items()})
        return res

    def run(self, variables: Any, *, final: bool = False) -> dict[str, float]:
        """`{name}/mIoU`, `{name}/pixel_accuracy`, `{name}/loss` (+ `@<p>` per patch size)."""
        keys = ("mIoU", "pixel_accuracy", "loss")
        metrics: dict[str, float] = {}
        if not self.patch_sizes:
            first = self.evaluate(variables)
            metrics = {f"{self.name}/{k}": first[k] for k in keys}
        else:
            first = None
            for ps in self.patch_sizes:
                res = self.evaluate(variables, (("patch_size", ps),))
                first = first or res
                metrics.update({f"{self.name}/{k}@{ps}": res[k] for k in keys})
            for k in keys:
                metrics[f"{self.name}/{k}"] = float(np.mean(
                    [metrics[f"{self.name}/{k}@{p}"] for p in self.patch_sizes]))
        if final and self.ctx.workdir:
            self.draw(first["shown"], os.path.join(self.ctx.workdir, f"{self.name}_masks.png"))
            if self.patch_sizes:
                path = plots.plot_accuracy_vs_patch_size(
                    {os.path.basename(os.path.normpath(self.ctx.workdir)):
                     plots.read_per_size_metrics(metrics, f"{self.name}/mIoU")},
                    os.path.join(self.ctx.workdir, f"{self.name}_miou_vs_patch_size.png"),
                    image_size=self.image_hw, title=f"{self.name} mIoU per patch size")
                print(f"vitx: wrote {path}", flush=True)
        return metrics

    def draw(self, shown: dict[str, np.ndarray], path: str) -> str:
        """PNG: a column per image (up to `NUM_SHOWN`), rows image / true mask / predicted mask
        (one color per class, background black). Returns `path`."""
        from matplotlib import colormaps
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.colors import ListedColormap
        from matplotlib.figure import Figure

        k = self.ctx.task.num_classes
        cmap = ListedColormap([(0, 0, 0, 1)] + [colormaps["tab10"](i % 10) for i in range(k - 1)])
        images = shown["images"]
        fig = Figure(figsize=(1.6 * len(images), 5.0), dpi=100)
        FigureCanvasAgg(fig)
        axes = np.asarray(fig.subplots(3, len(images), squeeze=False))
        rows = [(images[..., 0] + 1) / 2, shown["labels"].reshape(images.shape[:3]),
                shown["preds"]]
        for r, (title, data) in enumerate(zip(("image", "true", "predicted"), rows, strict=True)):
            for i in range(len(images)):
                ax = axes[r, i]
                if r == 0:
                    ax.imshow(data[i], cmap="gray", vmin=0, vmax=1)
                else:
                    ax.imshow(data[i], cmap=cmap, vmin=-0.5, vmax=k - 0.5, interpolation="nearest")
                ax.set_axis_off()
            axes[r, 0].set_title(title, fontsize=8, loc="left")
        fig.suptitle(f"{self.name}: masks (class 1 + d = digit d, tab10 colors)", fontsize=9)
        fig.tight_layout()
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with atomic_write(path, "wb") as f:
            fig.savefig(f, format="png")
        print(f"vitx: wrote {path}", flush=True)
        return path
