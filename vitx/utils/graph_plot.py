"""A block graph drawn as a PNG, edge width = weight (AssembleNet++ connections and peers).

Source of what is drawn: Ryoo et al., "AssembleNet++", ECCV 2020, Fig. 1 / Fig. 5 (the learned
graph, connections drawn by weight); CN116157804A (seed 002): connection weights g(w) and
peer-attention weights, the basis of the pruning.

Matplotlib through `matplotlib.figure.Figure` and the Agg canvas only (no pyplot, no display);
the file is written atomically like `vitx.utils.plots`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from vitx.utils import atomic_write

__all__ = ["edge_style", "node_positions", "plot_block_graph"]

#: Line width (points) of an edge of weight 1; an edge of weight w is drawn MAX_WIDTH * w wide.
MAX_WIDTH = 6.0


def node_positions(levels: Mapping[str, int]) -> dict[str, tuple[float, float]]:
    """{name: (x, y)}: x = level, y = the node's rank within its level, centred on 0 (graph
    order kept)."""
    by_level: dict[int, list[str]] = {}
    for name, level in levels.items():
        by_level.setdefault(level, []).append(name)
    pos = {}
    for level, names in by_level.items():
        for i, name in enumerate(names):
            pos[name] = (float(level), i - (len(names) - 1) / 2)
    return pos


def edge_style(weight: float, removed: bool = False) -> dict[str, object]:
    """Matplotlib arrow properties of an edge: line width `MAX_WIDTH * weight` points (at least
    0.2 so a zero edge still shows), dashed grey when `removed`, else solid blue."""
    return dict(arrowstyle="-|>", lw=max(MAX_WIDTH * weight, 0.2),
                color="0.6" if removed else "C0", linestyle="--" if removed else "-",
                shrinkA=9, shrinkB=9, alpha=0.8)


def plot_block_graph(levels: Mapping[str, int], edges: Mapping[tuple[str, str], float],
                     path: str, *, peer_edges: Mapping[tuple[str, str], float] | None = None,
                     removed: frozenset[tuple[str, str]] = frozenset(), title: str = "") -> str:
    """Write a PNG of a levelled block graph; returns `path`.

    Args:
      levels: {block name: level} (stems level 1), in graph order.
      edges: {(src, dst): weight in [0, 1]}: connections, drawn src -> dst with width
        `MAX_WIDTH * weight` and labelled with the weight.
      path: the .png to write (its folder is created).
      peer_edges: {(peer, dst): weight in [0, 1]} drawn in a second panel the same way (the
        peer-attention weights), or None for one panel.
      removed: connections (src, dst) drawn dashed and grey (e.g. the ones pruning removes).
      title: the figure's title.

    Raises:
      ValueError: an edge whose end is not in `levels`, or a weight outside [0, 1].
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    panels = [("connections g(w)", edges)] + ([("peer attention (mean softmax weight)",
                                                 peer_edges)] if peer_edges is not None else [])
    for _, es in panels:
        for (src, dst), w in es.items():
            if src not in levels or dst not in levels:
                raise ValueError(f"edge {src}->{dst}: {src if src not in levels else dst!r} is "
                                 f"not a block of the graph; pass the graph's blocks as levels")
            if not 0.0 <= w <= 1.0:
                raise ValueError(f"edge {src}->{dst}: weight {w!r} is outside [0, 1]")
    pos = node_positions(levels)
    fig = Figure(figsize=(5.5 * len(panels), 4.5), dpi=100)
    FigureCanvasAgg(fig)
    for k, (name, es) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), k + 1)
        for (src, dst), w in es.items():
            (x0, y0), (x1, y1) = pos[src], pos[dst]
            ax.annotate("", xy=(x1, y1), xytext=(x0, y0),
                        arrowprops=edge_style(w, (src, dst) in removed and k == 0))
            ax.text(x0 + 0.6 * (x1 - x0), y0 + 0.6 * (y1 - y0), f"{w:.2f}", fontsize=6,
                    ha="center", va="center", color="0.25")
        for node, (x, y) in pos.items():
            ax.scatter([x], [y], s=260, color="C1" if levels[node] == 1 else "C2", zorder=3)
            ax.annotate(node, (x, y), xytext=(0, -12), textcoords="offset points", fontsize=7,
                        ha="center", va="top")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("level")
        ax.set_xticks(sorted(set(levels.values())))
        ax.set_yticks([])
        ax.margins(0.15)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with atomic_write(path, "wb") as f:
        fig.savefig(f, format="png")
    return path
