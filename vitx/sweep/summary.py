"""The summary of a sweep: one row per trial name (its most useful attempt), written as
`<dir>/summary.csv` and drawn as `<dir>/summary.png` (the metric per trial)."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Mapping, Sequence
from typing import Any

from vitx.sweep.plan import SweepPlan
from vitx.utils import atomic_write

__all__ = ["plot_summary", "summary_rows", "write_summary_csv"]

_STATE_ORDER = {"COMPLETE": 0, "PRUNED": 1, "RUNNING": 2, "WAITING": 3, "FAIL": 4}


def summary_rows(study: Any, plan: SweepPlan) -> list[dict[str, Any]]:
    """One row per trial name (its most useful attempt), grid points not yet started included
    (state PENDING): name, state, trial, each swept key, the metric, other results, note."""
    best: dict[str, Any] = {}
    for t in study.get_trials(deepcopy=False):
        name = t.user_attrs.get("name") or (t.params.get("grid") if plan.kind == "grid" else None)
        if name is None:
            continue
        rank = (_STATE_ORDER.get(t.state.name, 9), -t.number)
        if name not in best or rank < best[name][0]:
            best[name] = (rank, t)
    names = list(plan.names) if plan.kind == "grid" else []
    names += sorted((n for n in best if n not in set(names)),
                    key=lambda n: best[n][1].number)
    rows = []
    for name in names:
        row: dict[str, Any] = {"name": name}
        if name not in best:
            row.update(state="PENDING", trial="")
            row.update(plan.point(name))
            rows.append(row)
            continue
        t = best[name][1]
        state = t.state.name
        if state == "FAIL" and not t.user_attrs.get("error"):
            state = "INTERRUPTED"  # retried (resumed) by the next run
        row.update(state=state, trial=t.number)
        row.update(t.user_attrs.get("overrides") or (
            plan.point(name) if plan.kind == "grid" else t.params))
        results = t.user_attrs.get("results") or {}
        value = t.value if t.state.name == "COMPLETE" else None
        note = t.user_attrs.get("error") or ""
        if t.state.name == "PRUNED" and t.intermediate_values:
            step = max(t.intermediate_values)
            value, note = t.intermediate_values[step], f"pruned at step {step}"
        row[plan.metric] = value
        row.update({k: v for k, v in results.items() if k != plan.metric})
        row["note"] = note
        rows.append(row)
    return rows


def write_summary_csv(rows: Sequence[Mapping[str, Any]], plan: SweepPlan, path: str) -> str:
    """Write the summary rows as CSV (atomically). Returns `path`."""
    first = ["name", "state", "trial", *plan.keys, plan.metric]
    extra = sorted({k for r in rows for k in r} - set(first) - {"note"})
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=[*first, *extra, "note"], restval="",
                            extrasaction="ignore")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: ("" if v is None else v) for k, v in r.items()})
    with atomic_write(path, "wb") as f:
        f.write(out.getvalue().encode())
    return path


def plot_summary(rows: Sequence[Mapping[str, Any]], plan: SweepPlan, path: str, *,
                 title: str = "") -> str:
    """A PNG of the metric per trial: horizontal bars (the best one highlighted; pruned trials
    hatched at their last value; pending or failed ones labelled), or for more than 40 trials
    the metric vs trial number with the best so far. Returns `path`."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    metric = plan.metric
    values = [r.get(metric) if isinstance(r.get(metric), int | float) else None for r in rows]
    done = [(i, v) for i, v in enumerate(values) if v is not None and math.isfinite(v)
            and rows[i]["state"] == "COMPLETE"]
    pick = max if plan.direction == "maximize" else min
    best_i = pick(done, key=lambda iv: iv[1])[0] if done else None
    many = len(rows) > 40
    fig = Figure(figsize=(9, 4.5 if many else 1.2 + 0.4 * max(len(rows), 1)), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    if many:
        xs = [r["trial"] for r in rows]
        pts = [(x, v) for x, v, r in zip(xs, values, rows, strict=True)
               if v is not None and r["state"] == "COMPLETE"]
        if pts:
            pts.sort()
            ax.scatter([x for x, _ in pts], [v for _, v in pts], s=14, label="trial")
            run_best, best_line = None, []
            for _, v in pts:
                run_best = v if run_best is None else pick(run_best, v)
                best_line.append(run_best)
            ax.step([x for x, _ in pts], best_line, where="post", color="C3", label="best so far")
            ax.legend()
        ax.set_xlabel("trial")
        ax.set_ylabel(metric)
    else:
        ys = list(range(len(rows)))[::-1]
        for y, r, v, i in zip(ys, rows, values, range(len(rows)), strict=True):
            state = r["state"]
            if v is not None and math.isfinite(v):
                color = "C3" if i == best_i else "C0" if state == "COMPLETE" else "0.6"
                ax.barh(y, v, color=color, hatch="//" if state == "PRUNED" else None)
                ax.text(v, y, f" {v:.4g}" + ("" if state == "COMPLETE" else f" ({state})"),
                        va="center", fontsize=8)
            else:
                ax.text(0, y, f" {state}", va="center", fontsize=8, color="0.4")
        ax.set_yticks(ys)
        ax.set_yticklabels([r["name"] for r in rows], fontsize=8)
        ax.set_xlabel(metric + (" (best in red)" if best_i is not None else ""))
        if done:
            hi = max(v for _, v in done)
            ax.set_xlim(0, hi * 1.2 if hi > 0 else 1)
    ax.grid(True, axis="x", alpha=0.3)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    with atomic_write(path, "wb") as f:
        f.write(buf.getvalue())
    return path
