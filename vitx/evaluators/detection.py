"""COCO box mAP of a per-token detector over a whole split, plus a PNG of predicted boxes.

    config.evals.test = dict(type="detection", dataset="digit_scenes", split="test",
                             pp="decode|value_range(-1, 1)|pad_objects(4)"
                                "|keep('image', 'boxes', 'box_labels')",
                             batch_size=100, patch_sizes=None)   # FlexiViT: e.g. (4, 8, 16)

Metrics: `<name>/mAP50` (COCO AP at IoU 0.5) and `<name>/mAP` (AP averaged over IoU 0.50:0.05:
0.95, COCO's primary metric), both from pycocotools' `COCOeval` (the field's reference
implementation: 101-point interpolated precision, up to 100 detections per image, averaged over
the classes present in the split), and `<name>/loss` (the task's DETR loss). With
`patch_sizes` (FlexiViT) every metric is given per size (`<name>/mAP50@8`, ...) and the
unsuffixed ones are the means over the sizes. At the end of training (`final=True`) it writes
`<name>_detections.png` (predicted boxes over the first test images, with their ground truth)
and, with patch sizes, `<name>_map50_vs_patch_size.png` into the workdir.

Detections: every token is one (DETR's post-processing: the best non-background class and its
probability; `vitx.tasks.detection.Task.detections`), no NMS, as OWL-ViT and DETR.
Source: Lin et al., "Microsoft COCO: Common Objects in Context", ECCV 2014 (the metric).
"""

from __future__ import annotations

import contextlib
import functools
import io
import os
from collections.abc import Sequence
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

__all__ = ["Evaluator", "coco_map"]

MAX_DETECTIONS = 100  # per image, COCO's maxDets


def coco_map(gt_boxes: Sequence[np.ndarray], gt_labels: Sequence[np.ndarray],
             boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray,
             image_hw: tuple[int, int] = (1, 1)) -> dict[str, float]:
    """COCO mAP@[.5:.95] and mAP@.5 of detections against ground truth, by pycocotools.

    Args:
      gt_boxes: per image an (M_i, 4) array of (ymin, xmin, ymax, xmax) in [0, 1].
      gt_labels: per image the (M_i,) int classes (entries < 0 are padding, dropped).
      boxes: (I, N, 4) detections, same format; scores (I, N); classes (I, N) int.
      image_hw: the image size in pixels (boxes are scaled to it; IoU does not depend on it).

    Returns:
      {"mAP": AP@[.5:.95], "mAP50": AP@.5}; 0.0 when there are no detections or no objects.
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    h, w = image_hw

    def xywh(b: np.ndarray) -> list[float]:
        return [float(b[1] * w), float(b[0] * h), float((b[3] - b[1]) * w),
                float((b[2] - b[0]) * h)]

    images, anns, cats = [], [], set()
    for i, (gb, gl) in enumerate(zip(gt_boxes, gt_labels, strict=True)):
        images.append({"id": i, "height": h, "width": w})
        for b, c in zip(np.asarray(gb).reshape(-1, 4), np.asarray(gl).reshape(-1), strict=True):
            if c < 0:
                continue
            box = xywh(b)
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": int(c),
                         "bbox": box, "area": box[2] * box[3], "iscrowd": 0})
            cats.add(int(c))
    dets = []
    for i in range(len(images)):
        top = np.argsort(-scores[i], kind="stable")[:MAX_DETECTIONS]
        dets += [{"image_id": i, "category_id": int(classes[i, j]), "bbox": xywh(boxes[i, j]),
                  "score": float(scores[i, j])} for j in top]
    if not anns or not dets:
        return {"mAP": 0.0, "mAP50": 0.0}
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = {"images": images, "annotations": anns,
                      "categories": [{"id": c} for c in sorted(cats)]}
        gt.createIndex()
        ev = COCOeval(gt, gt.loadRes(dets), iouType="bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {"mAP": max(float(ev.stats[0]), 0.0), "mAP50": max(float(ev.stats[1]), 0.0)}


class Evaluator:
    """COCO mAP (`coco_map`) of `ctx.predict_fn`'s per-token detections on one split.

    Raises:
      ValueError: an unknown dataset or split, a bad pp spec or batch size; batches without the
        task's box keys (a dataset without boxes, or no `pad_objects` in the pp); patch sizes
        that do not divide the image.
    """

    def __init__(self, name: str, cfg: ml_collections.ConfigDict, ctx: EvalContext):
        self.name, self.ctx = name, ctx
        task = ctx.task
        if not hasattr(task, "detections"):
            raise ValueError(f"task {type(task).__module__} has no detections; a detection "
                             f"eval needs task.type='detection'")
        self.ds = features.eval_dataset(cfg, ctx, cfg.split)
        spec = self.ds.element_spec
        missing = [k for k in (task.boxes, task.labels) if k not in spec]
        if missing:
            raise ValueError(f"dataset {cfg.dataset!r} with its pp gives no {missing} (keys: "
                             f"{sorted(spec)}); use a dataset with boxes (digit_scenes) and "
                             f"pad_objects(max_objects) in evals.{name}.pp")
        self.image_hw = tuple(int(d) for d in spec[task.inputs].shape[1:3])
        self.patch_sizes = list(cfg.get("patch_sizes") or [])
        if self.patch_sizes:
            validate_patch_sizes(self.patch_sizes, self.image_hw,
                                 key=f"evals.{name}.patch_sizes")
        self.batch_sharding = shd.batch_sharding(ctx.mesh)
        predict = ctx.predict_fn

        def outputs(variables: Any, batch: dict, **model_kw: Any) -> dict:
            logits, _ = predict(variables, batch, **model_kw)
            boxes, scores, classes = task.detections(logits)
            mask = batch.get(pipeline.MASK_KEY, jnp.ones(logits.shape[:1])).astype(jnp.float32)
            return {"boxes": boxes, "scores": scores, "classes": classes,
                    "loss": jnp.sum(task.loss(logits, batch) * mask)}
        self.cache = steps.StepCache(
            lambda plan: functools.partial(outputs, **dict(plan)),
            in_shardings=(ctx.variable_shardings, self.batch_sharding),
            out_shardings=shd.replicated(ctx.mesh))

    def predictions(self, variables: Any, plan: tuple = ()) -> dict[str, np.ndarray]:
        """Host arrays over the split (padding dropped): boxes (I, N, 4), scores, classes
        (I, N), gt_boxes (I, M, 4), gt_labels (I, M), images (first 8) and the loss sum."""
        fn, task = self.cache(plan), self.ctx.task
        parts: dict[str, list] = {k: [] for k in ("boxes", "scores", "classes", "gt_boxes",
                                                  "gt_labels", "images")}
        loss = 0.0
        for batch in pipeline.global_batches(self.ds, self.batch_sharding):
            out = jax.device_get(fn(variables, batch))
            keep = np.asarray(jax.device_get(batch.get(pipeline.MASK_KEY, np.ones(
                out["scores"].shape[:1])))) > 0
            for k in ("boxes", "scores", "classes"):
                parts[k].append(np.asarray(out[k])[keep])
            parts["gt_boxes"].append(np.asarray(jax.device_get(batch[task.boxes]))[keep])
            parts["gt_labels"].append(np.asarray(jax.device_get(batch[task.labels]))[keep])
            if sum(len(x) for x in parts["images"]) < 8:
                parts["images"].append(np.asarray(jax.device_get(batch[task.inputs]))[keep][:8])
            loss += float(out["loss"])
        res = {k: np.concatenate(v) for k, v in parts.items()}
        res["loss_sum"] = np.float64(loss)
        return res

    def evaluate(self, variables: Any, plan: tuple = ()) -> dict[str, Any]:
        """{"mAP", "mAP50", "loss", "count"} and the host predictions ("pred")."""
        p = self.predictions(variables, plan)
        res: dict[str, Any] = coco_map(list(p["gt_boxes"]), list(p["gt_labels"]), p["boxes"],
                                       p["scores"], p["classes"], self.image_hw)
        n = len(p["scores"])
        res.update(loss=float(p["loss_sum"]) / max(n, 1), count=n, pred=p)
        return res

    def run(self, variables: Any, *, final: bool = False) -> dict[str, float]:
        """`{name}/mAP`, `{name}/mAP50`, `{name}/loss` (+ `@<p>` per patch size)."""
        metrics: dict[str, float] = {}
        if not self.patch_sizes:
            res = self.evaluate(variables)
            metrics = {f"{self.name}/{k}": res[k] for k in ("mAP", "mAP50", "loss")}
            first = res
        else:
            first = None
            for ps in self.patch_sizes:
                res = self.evaluate(variables, (("patch_size", ps),))
                first = first or res
                metrics.update({f"{self.name}/{k}@{ps}": res[k] for k in ("mAP", "mAP50",
                                                                           "loss")})
            for k in ("mAP", "mAP50", "loss"):
                metrics[f"{self.name}/{k}"] = float(np.mean(
                    [metrics[f"{self.name}/{k}@{p}"] for p in self.patch_sizes]))
        if final and self.ctx.workdir:
            self.draw(first["pred"], os.path.join(self.ctx.workdir,
                                                  f"{self.name}_detections.png"))
            if self.patch_sizes:
                path = plots.plot_accuracy_vs_patch_size(
                    {os.path.basename(os.path.normpath(self.ctx.workdir)):
                     plots.read_per_size_metrics(metrics, f"{self.name}/mAP50")},
                    os.path.join(self.ctx.workdir, f"{self.name}_map50_vs_patch_size.png"),
                    image_size=self.image_hw, title=f"{self.name} mAP@0.5 per patch size")
                print(f"vitx: wrote {path}", flush=True)
        return metrics

    def draw(self, pred: dict[str, np.ndarray], path: str, threshold: float = 0.5) -> str:
        """PNG of the first (up to 8) images: ground truth dashed green, detections with score
        >= `threshold` red with "class score". Returns `path`."""
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.patches import Rectangle

        images = pred["images"]
        fig = Figure(figsize=(2.2 * len(images), 2.4), dpi=100)
        FigureCanvasAgg(fig)
        h, w = self.image_hw
        for i, ax in enumerate(np.atleast_1d(fig.subplots(1, len(images)))):
            ax.imshow((images[i][..., 0] + 1) / 2, cmap="gray", vmin=0, vmax=1)
            ax.set_axis_off()
            for b, c in zip(pred["gt_boxes"][i], pred["gt_labels"][i], strict=True):
                if c >= 0:
                    ax.add_patch(Rectangle((b[1] * w - .5, b[0] * h - .5), (b[3] - b[1]) * w,
                                           (b[2] - b[0]) * h, fill=False, ec="lime", ls="--"))
            for b, s, c in zip(pred["boxes"][i], pred["scores"][i], pred["classes"][i],
                               strict=True):
                if s >= threshold:
                    ax.add_patch(Rectangle((b[1] * w - .5, b[0] * h - .5), (b[3] - b[1]) * w,
                                           (b[2] - b[0]) * h, fill=False, ec="red"))
                    ax.text(b[1] * w, b[0] * h - 1, f"{c} {s:.2f}", color="red", fontsize=7)
        fig.suptitle(f"{self.name}: predicted (red, score >= {threshold}) and true (green)")
        fig.tight_layout()
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with atomic_write(path, "wb") as f:
            fig.savefig(f, format="png")
        print(f"vitx: wrote {path}", flush=True)
        return path
