"""plots: accuracy-vs-patch-size PNG, per-size metric parsing."""

import math
import os

import pytest

from vitx.utils import plots

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_plot_writes_png_atomically(tmp_path):
    results = {"FlexiViT": {4: 0.95, 8: 0.97, 2: 0.96}, "ViT/8": {8: 0.97, 4: 0.5}}
    path = str(tmp_path / "sub" / "acc.png")
    out = plots.plot_accuracy_vs_patch_size(results, path, image_size=16, title="digits")
    assert out == path
    data = open(path, "rb").read()
    assert data.startswith(PNG_MAGIC) and len(data) > 1000
    assert os.listdir(tmp_path / "sub") == ["acc.png"]  # no temporary file left behind
    # Overwriting an existing file works; rectangular images and NaN points are fine.
    plots.plot_accuracy_vs_patch_size({"a": {4: math.nan, 8: 0.5}}, path, image_size=(16, 32))
    assert open(path, "rb").read().startswith(PNG_MAGIC)


def test_plot_errors(tmp_path):
    path = str(tmp_path / "x.png")
    with pytest.raises(ValueError, match="patch size 5 does not divide the image size 16x16"):
        plots.plot_accuracy_vs_patch_size({"a": {5: 0.5}}, path, image_size=16)
    with pytest.raises(ValueError, match="no finite"):
        plots.plot_accuracy_vs_patch_size({"a": {}}, path, image_size=16)
    assert not os.listdir(tmp_path)


def test_sequence_length():
    assert plots.sequence_length(240, 16) == 225
    assert plots.sequence_length((16, 32), 8) == 8
    with pytest.raises(ValueError, match="does not divide"):
        plots.sequence_length(240, 7)


def test_read_per_size_metrics():
    metrics = {"test/accuracy@8": 0.9, "test/accuracy@16": 0.8, "test/accuracy@2": 1,
               "test/accuracy": 0.7, "test/accuracy@16x8": 0.1, "test/accuracy_top5@8": 0.2,
               "train/accuracy@8": 0.3, "test/accuracy@": 0.4, "test/accuracy@0": 0.5,
               "test/accuracy@8/extra": 0.6, "xtest/accuracy@8": 0.65}
    out = plots.read_per_size_metrics(metrics, "test/accuracy")
    assert out == {2: 1.0, 8: 0.9, 16: 0.8}
    assert list(out) == [2, 8, 16] and all(isinstance(v, float) for v in out.values())
    assert plots.read_per_size_metrics(metrics, "test/accuracy@") == out
    assert plots.read_per_size_metrics(metrics, "val/accuracy") == {}
    # Regex characters in the prefix are literal.
    assert plots.read_per_size_metrics({"a.b@4": 1.0, "aXb@4": 2.0}, "a.b") == {4: 1.0}
