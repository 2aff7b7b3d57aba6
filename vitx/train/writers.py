"""Metric writers: readable progress lines on stdout and a metrics.jsonl file (clu interface),
and the train loop's progress rows (`Progress`)."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any

from clu.metric_writers import interface as mw_interface


class TextWriter(mw_interface.MetricWriter):
    """clu MetricWriter: readable stdout lines `[step 100] loss=0.1234 ...` and, with
    `jsonl_path`, one JSON object per write (`{"step": 100, "loss": 0.1234, ...}`)."""

    def __init__(self, jsonl_path: str | None = None):
        self.jsonl_path = jsonl_path
        self.note = ""  # printed after the step (e.g. "tasks=video_direction"), not in jsonl

    def write_summaries(self, step: int, values: Mapping[str, Any],
                        metadata: Mapping[str, Any] | None = None) -> None:
        pass

    def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
        items = " ".join(f"{k}={fmt(v)}" for k, v in sorted(scalars.items()))
        print(f"[step {step}] {self.note + ' ' if self.note else ''}{items}", flush=True)
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


class Progress:
    """The train loop's progress rows: a step's metrics plus its throughput since the last row.

    Each row holds the step's metrics, `steps_per_sec`, `img_per_sec` (examples per second over
    all tasks of the step), `eta_min` (minutes to `total_steps` at that rate),
    `data_wait_frac` (host seconds blocked on the next batch over the wall seconds since the
    last row, in [0, 1]; near 1: input-bound) and, where the backend reports it (GPU, TPU; not
    CPU), `peak_memory_gib` (the first device's high-water mark since start, GiB); with a
    per-step plan also `compiled_programs` and the plan's numeric choices, and its other
    choices as the text line's note (e.g. `tasks=digits`).

    Args:
      writer: where rows go (a clu `MetricWriter`, e.g. TensorBoard + `text`).
      text: the `TextWriter` among them (its note is set for the row).
      total_steps: the run's length in steps.
      start_step: the step the run (re)started from.
      every: row cadence in steps (also the first step after the start and the last step).
      waited: () -> the host's seconds blocked on batches so far (e.g. the `data_wait` part
        of `vitx.train.profiling.RunClock`); None: no `data_wait_frac`.
      peak_memory: () -> the device's peak GiB or None (e.g.
        `vitx.train.profiling.peak_memory_gib`); None: no `peak_memory_gib`.
    """

    def __init__(self, writer: Any, text: TextWriter, *, total_steps: int, start_step: int,
                 every: int, waited: Callable[[], float] | None = None,
                 peak_memory: Callable[[], float | None] | None = None):
        self.writer, self.text = writer, text
        self.total_steps, self.start_step, self.every = total_steps, start_step, every
        self.waited, self.peak_memory = waited, peak_memory
        self.t_last, self.step_last = time.perf_counter(), start_step
        self.t_start = self.t_last
        self.waited_last = waited() if waited is not None else 0.0

    def due(self, step: int) -> bool:
        """Whether `step` (just done) gets a row."""
        return (step % self.every == 0 or step == self.total_steps
                or step == self.start_step + 1)

    def write(self, step: int, metrics: Mapping[str, Any], batch_size: int,
              plan: tuple | None = None, num_compiled: int | None = None) -> None:
        """Write the row of `step` (`metrics` on the host; `plan`: the step's (key, value)
        choices when the run has a per-step plan, then `num_compiled` is the programs so far)."""
        now = time.perf_counter()
        sps = (step - self.step_last) / max(now - self.t_last, 1e-9)
        extra = {"steps_per_sec": sps, "img_per_sec": sps * batch_size,
                 "eta_min": (self.total_steps - step) / max(sps, 1e-9) / 60}
        if self.waited is not None:
            waited = self.waited()
            extra["data_wait_frac"] = min(max((waited - self.waited_last)
                                              / max(now - self.t_last, 1e-9), 0.0), 1.0)
            self.waited_last = waited
        peak = self.peak_memory() if self.peak_memory is not None else None
        if peak is not None:
            extra["peak_memory_gib"] = peak
        if plan is not None:
            extra["compiled_programs"] = num_compiled
            extra.update({k: v for k, v in plan if isinstance(v, int | float)})
            self.text.note = " ".join(f"{k}={','.join(v) if isinstance(v, tuple) else v}"
                                      for k, v in plan if not isinstance(v, int | float))
        self.writer.write_scalars(step, {**{k: float(v) for k, v in metrics.items()}, **extra})
        self.text.note = ""
        self.t_last, self.step_last = now, step

    def elapsed(self) -> float:
        """Seconds since the loop started."""
        return time.perf_counter() - self.t_start


def fmt(v: Any) -> str:
    v = float(v)
    return f"{v:.4g}" if abs(v) < 1e4 else f"{v:.0f}"
