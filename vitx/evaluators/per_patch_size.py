"""Accuracy at every patch size of a FlexiViT (its Fig. 3 / Fig. 7), plus a plot.

    config.evals.test = dict(type="per_patch_size", patch_sizes=(4, 6, 8, 12, 16, 24),
                             dataset="digits", split="test", pp="...")

Metrics `<name>/accuracy@<p>` and `<name>/loss@<p>` per size, `<name>/accuracy` (the mean over
the sizes) and `<name>/accuracy_best`. At the end of training (`final=True`) it writes
`<name>_accuracy_vs_patch_size.png` into the workdir. Each size is one compiled program.

Source: Beyer et al., "FlexiViT: One Model for All Patch Sizes", CVPR 2023, Sec. 3 and Fig. 3.
"""

from __future__ import annotations

import os
from typing import Any

import ml_collections
import numpy as np

from vitx.evaluators import EvalContext, classification
from vitx.utils import plots
from vitx.utils.patch_sizes import validate_patch_sizes


class Evaluator(classification.Evaluator):
    """`classification.Evaluator` run once per patch size in `cfg.patch_sizes`.

    Raises:
      ValueError: a patch size that does not divide the split's image (H, W), naming
        `evals.<name>.patch_sizes` and sizes that would work; as `classification.Evaluator`.
    """

    def __init__(self, name: str, cfg: ml_collections.ConfigDict, ctx: EvalContext):
        super().__init__(name, cfg, ctx)
        self.patch_sizes = list(cfg.get("patch_sizes") or [])
        validate_patch_sizes(self.patch_sizes, self.input_shape[:2],
                             key=f"evals.{name}.patch_sizes")

    def run(self, variables: Any, *, final: bool = False) -> dict[str, float]:
        metrics: dict[str, float] = {}
        for ps in self.patch_sizes:
            res = self.evaluate(variables, (("patch_size", ps),))
            metrics[f"{self.name}/accuracy@{ps}"] = res["accuracy"]
            metrics[f"{self.name}/loss@{ps}"] = res["loss"]
        accs = [metrics[f"{self.name}/accuracy@{p}"] for p in self.patch_sizes]
        metrics[f"{self.name}/accuracy"] = float(np.mean(accs))
        metrics[f"{self.name}/accuracy_best"] = max(accs)
        if final and self.ctx.workdir:
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
