"""Plots of evaluation results: accuracy vs patch size / sequence length (FlexiViT Fig. 7).

Source: Beyer et al., "FlexiViT: One Model for All Patch Sizes", CVPR 2023, Fig. 7
(CN117556885A): one FlexiViT checkpoint evaluated at every patch size against fixed-patch ViTs,
which peak only at their training patch size.

Matplotlib is used through `matplotlib.figure.Figure` with the Agg canvas only (no pyplot, no
global backend switch, no display needed). Files are written atomically (temporary file in the
same folder, then `os.replace`), so a reader never sees a half-written PNG.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping

from vitx.utils import atomic_write, pair

__all__ = ["plot_accuracy_vs_patch_size", "read_per_size_metrics", "sequence_length"]


def sequence_length(image_size: int | tuple[int, int], patch_size: int) -> int:
    """Patch tokens (H/p) * (W/p) for an image (H, W) and square patch p (no cls token).

    Raises:
      ValueError: p is not an int > 0 or does not divide H or W.
    """
    h, w = pair(image_size, "image_size")
    if not isinstance(patch_size, int) or isinstance(patch_size, bool) or patch_size <= 0:
        raise ValueError(f"patch size {patch_size!r} is not an int > 0")
    if h % patch_size or w % patch_size:
        raise ValueError(f"patch size {patch_size} does not divide the image size {h}x{w}")
    return (h // patch_size) * (w // patch_size)


def read_per_size_metrics(metrics: Mapping[str, float], prefix: str) -> dict[int, float]:
    """Per-patch-size values from flat metrics: {"test/accuracy@8": v} -> {8: float(v)}.

    Keys must be exactly `f"{prefix}@{p}"` with p a positive decimal int (a trailing "@" on
    `prefix` is allowed); all other keys (other metrics, "test/accuracy", "test/accuracy@16x8",
    "test/accuracy_top5@8") are ignored. The result is sorted by patch size.
    """
    prefix = prefix.removesuffix("@")
    pattern = re.compile(re.escape(prefix) + r"@([0-9]+)")
    out: dict[int, float] = {}
    for key, value in metrics.items():
        m = pattern.fullmatch(key) if isinstance(key, str) else None
        if m and int(m[1]) > 0:
            out[int(m[1])] = float(value)
    return dict(sorted(out.items()))


def plot_accuracy_vs_patch_size(results: Mapping[str, Mapping[int, float]], path: str, *,
                                image_size: int | tuple[int, int], title: str = "") -> str:
    """Write a PNG with accuracy vs patch size (left) and vs sequence length (right).

    `results` maps a curve label to {patch size: accuracy}, e.g. {"FlexiViT": {8: 0.97, 16:
    0.95}, "ViT-B/16": {...}}; one line per label. Sequence length = (H/p) * (W/p) patch tokens
    (both x-axes logarithmic). Non-finite accuracies (NaN) are left out of the line. The file is
    written atomically; missing parent folders are created. Returns `path`.

    Raises:
      ValueError: no points at all; a patch size that is not an int > 0 or does not divide the
        image size.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import NullFormatter

    hw = pair(image_size, "image_size")
    curves = []
    for label, points in results.items():
        pts = sorted((int(p), float(a)) for p, a in points.items() if math.isfinite(float(a)))
        for p, _ in pts:
            sequence_length(hw, p)  # validates p
        if pts:
            curves.append((str(label), pts))
    if not curves:
        raise ValueError("results holds no finite (patch size, accuracy) points to plot; pass "
                         "e.g. {'FlexiViT': {8: 0.97, 16: 0.95}}")

    fig = Figure(figsize=(10, 4), dpi=100)
    FigureCanvasAgg(fig)
    ax_p, ax_s = fig.subplots(1, 2)
    all_sizes: set[int] = set()
    for label, pts in curves:
        sizes = [p for p, _ in pts]
        accs = [a for _, a in pts]
        all_sizes.update(sizes)
        ax_p.plot(sizes, accs, marker="o", label=label)
        ax_s.plot([sequence_length(hw, p) for p in sizes], accs, marker="o", label=label)
    ticks = sorted(all_sizes)
    ax_p.set_xscale("log")  # patch sizes are roughly geometric (8 ... 48)
    ax_p.xaxis.set_minor_formatter(NullFormatter())
    ax_p.set_xticks(ticks)
    ax_p.set_xticklabels([str(t) for t in ticks])
    ax_p.set_xlabel("patch size (pixels)")
    ax_p.set_ylabel("accuracy")
    ax_p.set_title(f"accuracy vs patch size ({hw[0]}x{hw[1]} px)")
    ax_s.set_xscale("log")
    ax_s.set_xlabel("sequence length (patch tokens)")
    ax_s.set_title("accuracy vs sequence length")
    for ax in (ax_p, ax_s):
        ax.grid(True, alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()

    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    with atomic_write(path, "wb") as f:
        fig.savefig(f, format="png")
    return path
