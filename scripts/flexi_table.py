"""Markdown table + plot of accuracy per patch size: plain ViT (PI-resized) vs FlexiViT.

Reads the metrics that `vitx train` (results.json) and `vitx eval` (eval_metrics.json) wrote:

  python scripts/flexi_table.py --run "ViT-mu/8 (PI-resize)=workdirs/vit8/eval_metrics.json" \
      --run "FlexiViT=workdirs/flexi/results.json" --image_size 48 --plot docs/flexivit_digits.png

Prints one row per patch size (tokens, accuracy of each run) — the FlexiViT paper's Fig. 3/7
on our data — and writes the two-panel plot (accuracy vs patch size and vs sequence length).
A run given as comma-separated paths (one per seed) is their mean, e.g. the README's plot from
`python scripts/seeds_table.py flexi --run`'s workdirs:

  python scripts/flexi_table.py --image_size 48 --plot docs/flexivit_digits.png \
      --run "FlexiViT=workdirs/flexi_flexi_s0/results.json,workdirs/flexi_flexi_s1/results.json"
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from vitx.utils import plots


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", action="append", required=True, help="NAME=path/to/metrics.json")
    ap.add_argument("--image_size", type=int, required=True)
    ap.add_argument("--prefix", default="test/accuracy")
    ap.add_argument("--plot", default=None)
    args = ap.parse_args()
    runs: dict[str, dict[int, float]] = {}
    for item in args.run:
        name, _, paths = item.partition("=")
        seeds = []
        for path in paths.split(","):
            with open(path) as f:
                seeds.append(plots.read_per_size_metrics(json.load(f), args.prefix))
        sizes = sorted(set.intersection(*(set(r) for r in seeds)))
        runs[name] = {p: float(np.mean([r[p] for r in seeds])) for p in sizes}
    sizes = sorted({p for r in runs.values() for p in r})
    print("| patch size | tokens | " + " | ".join(runs) + " |")
    print("|---|---|" + "---|" * len(runs))
    for p in sizes:
        cells = [f"{100 * r[p]:.1f} %" if p in r else "–" for r in runs.values()]
        tokens = plots.sequence_length(args.image_size, p)
        print(f"| {p} | {tokens} | " + " | ".join(cells) + " |")
    if args.plot:
        print(plots.plot_accuracy_vs_patch_size(runs, args.plot, image_size=args.image_size,
                                                title="digits 48x48: accuracy per patch size"))


if __name__ == "__main__":
    main()
