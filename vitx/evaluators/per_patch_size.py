"""Accuracy at every patch size of a FlexiViT (its Fig. 3 / Fig. 7), plus a plot.

    config.evals.test = dict(type="per_patch_size", patch_sizes=(4, 6, 8, 12, 16, 24),
                             dataset="digits", split="test", pp="...")

Metrics `<name>/accuracy@<p>` and `<name>/loss@<p>` per size, `<name>/accuracy` (the mean over
the sizes) and `<name>/accuracy_best`. With `patch_strides` (one per size, None = the size; the
training schedule's (size, stride) pairs, FlexiViT claim 3) a strided pair reports as
`<name>/accuracy@<p>s<s>` (e.g. `accuracy@8s4`; the plot shows the non-overlapping sizes).
At the end of training (`final=True`) it writes `<name>_accuracy_vs_patch_size.png` into the
workdir. Each size (pair) is one compiled program.

Source: Beyer et al., "FlexiViT: One Model for All Patch Sizes", CVPR 2023, Sec. 3 and Fig. 3.
"""

from __future__ import annotations

import os
from typing import Any

import ml_collections
import numpy as np

from vitx.evaluators import EvalContext, classification
from vitx.utils import plots
from vitx.utils.patch_sizes import check_patch_strides, scheme_name, validate_patch_sizes


class Evaluator(classification.Evaluator):
    """`classification.Evaluator` run once per patch size in `cfg.patch_sizes`.

    Raises:
      ValueError: a patch size that does not divide the split's image (H, W), naming
        `evals.<name>.patch_sizes` and sizes that would work; as `classification.Evaluator`.
    """

    def __init__(self, name: str, cfg: ml_collections.ConfigDict, ctx: EvalContext):
        super().__init__(name, cfg, ctx)
        self.patch_sizes = list(cfg.get("patch_sizes") or [])
        strides = cfg.get("patch_strides")
        if strides is None:
            validate_patch_sizes(self.patch_sizes, self.input_shape[:2],
                                 key=f"evals.{name}.patch_sizes")
        self.patch_strides = (check_patch_strides(self.patch_sizes, strides, self.input_shape[:2],
                                                  key=f"evals.{name}.patch_strides")
                              if strides is not None else (None,) * len(self.patch_sizes))

    def run(self, variables: Any, *, final: bool = False) -> dict[str, float]:
        metrics: dict[str, float] = {}
        names = []
        for ps, st in zip(self.patch_sizes, self.patch_strides, strict=True):
            static = (("patch_size", ps),) + ((("patch_stride", st),) if st is not None else ())
            res = self.evaluate(variables, static)
            names.append(scheme_name(ps, st))
            metrics[f"{self.name}/accuracy@{names[-1]}"] = res["accuracy"]
            metrics[f"{self.name}/loss@{names[-1]}"] = res["loss"]
        accs = [metrics[f"{self.name}/accuracy@{n}"] for n in names]
        metrics[f"{self.name}/accuracy"] = float(np.mean(accs))
        metrics[f"{self.name}/accuracy_best"] = max(accs)
        if final and self.ctx.workdir and any(n.isdigit() for n in names):  # strided: no plot
            self.plot(metrics)
        return metrics

    def plot(self, metrics: dict[str, float]) -> str:
        """Write accuracy vs patch size / sequence length into the workdir; returns the path."""
        workdir = self.ctx.workdir
        per_size = plots.read_per_size_metrics(metrics, f"{self.name}/accuracy")
        path = plots.plot_accuracy_vs_patch_size(
            {os.path.basename(os.path.normpath(workdir)): per_size},
            os.path.join(workdir, f"{self.name}_accuracy_vs_patch_size.png"),
            image_size=self.input_shape[:2], title=f"{self.name} accuracy per patch size")
        print(f"vitx: wrote {path}", flush=True)
        return path
