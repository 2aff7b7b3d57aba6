"""Metric writers: readable progress lines on stdout and a metrics.jsonl file (clu interface)."""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
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


def fmt(v: Any) -> str:
    v = float(v)
    return f"{v:.4g}" if abs(v) < 1e4 else f"{v:.0f}"
