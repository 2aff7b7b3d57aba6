"""`vitx predict`: files give the logits `vitx eval` computes for the same examples; a PolyViT
call over image + audio + video files equals one call per modality; bad input is one line."""

from __future__ import annotations

import contextlib
import io
import json
import os

import jax
import numpy as np
import pytest
import tensorflow as tf
from scipy.io import wavfile

from vitx import cli, predict
from vitx import config as config_lib
from vitx.data import pipeline
from vitx.data.builders import dtmf_keys, moving_digits
from vitx.data.info import dataset_info
from vitx.train import trainer
from vitx.utils import npz

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
N = 3  # examples per modality: batches of 2 cover a full and a zero-padded batch
VIT = ["model.width=16", "model.depth=1", "model.mlp_dim=32", "model.num_heads=2"]
POLY = ["model.width=16", "model.depth=1", "model.mlp_dim=32", "model.num_heads=2",
        "schedule.warmup_steps=1"]


@pytest.fixture(scope="module")
def tfds_dir(multimodal_data_dir) -> str:
    return multimodal_data_dir


def _config(spec: str, overrides: list[str], data_dir: str):
    c = config_lib.load_config(os.path.join(REPO, "configs", spec))
    config_lib.apply_overrides(c, [*overrides, f"data_dir={data_dir}"])
    return c


def _random_npz(config, path: str) -> str:
    """Params of the config's model shapes drawn from N(0, 0.3) (no zero head), as .npz."""
    with contextlib.redirect_stdout(io.StringIO()):
        shapes = trainer.setup(config).param_shapes
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda x: rng.normal(0, 0.3, x.shape).astype(x.dtype), shapes)
    npz.save_npz(path, params, layout="vitx")
    return path


def _test_examples(name: str, data_dir: str) -> list[dict]:
    ds = dataset_info(name, data_dir).read("test", skip_image_decoding=True)
    return list(ds.take(N).as_numpy_iterator())


@pytest.fixture(scope="module")
def samples(tfds_dir, tmp_path_factory) -> dict[str, list[str]]:
    """The first N test examples of each dataset as files: PNG scans, float WAVs, and clips as
    .npy or as a folder of PNG frames."""
    d = tmp_path_factory.mktemp("files")
    out: dict[str, list[str]] = {"image": [], "audio": [], "video": []}
    for i, ex in enumerate(_test_examples("digits", tfds_dir)):
        (d / f"digit{i}.png").write_bytes(ex["image"])  # the dataset's own PNG bytes
        out["image"].append(str(d / f"digit{i}.png"))
    for i, ex in enumerate(_test_examples("dtmf_keys", tfds_dir)):
        wavfile.write(d / f"key{i}.wav", dtmf_keys.SAMPLE_RATE, ex["audio"])
        out["audio"].append(str(d / f"key{i}.wav"))
    for i, ex in enumerate(_test_examples("moving_digits", tfds_dir)):
        if i % 2:
            os.makedirs(d / f"clip{i}")
            for t, frame in enumerate(ex["video"]):
                tf.io.write_file(str(d / f"clip{i}" / f"{t:02d}.png"), tf.io.encode_png(frame))
            out["video"].append(str(d / f"clip{i}"))
        else:
            np.save(d / f"clip{i}.npy", ex["video"])
            out["video"].append(str(d / f"clip{i}.npy"))
    return out


@pytest.fixture(scope="module")
def vit(tfds_dir, tmp_path_factory):
    c = _config("vit_digits.py", VIT, tfds_dir)
    ckpt = _random_npz(c, str(tmp_path_factory.mktemp("vit") / "vit.npz"))
    return c, ckpt, predict.Predictor(_config("vit_digits.py", VIT, tfds_dir), ckpt,
                                      batch_size=2)


@pytest.fixture(scope="module")
def poly(tfds_dir, tmp_path_factory):
    spec = "polyvit_digits.py:steps=4"
    ckpt = _random_npz(_config(spec, POLY, tfds_dir),
                       str(tmp_path_factory.mktemp("poly") / "poly.npz"))
    return predict.Predictor(_config(spec, POLY, tfds_dir), ckpt, batch_size=2)


def _eval_logits(p: predict.Predictor, name: str | None) -> np.ndarray:
    """Logits of the first N test examples read by `vitx eval`'s input pipeline (the same
    eval pp, in batches of the predictor's size, the last one padded), through the same
    compiled model function as the files."""
    t = p.tasks[name]
    ds = pipeline.build_dataset(name=t.info.name, split=f"test[:{N}]", data_dir=t.info.data_dir,
                                pp=t.pp, global_batch_size=t.batch_size, train=False,
                                cache=False)
    logits = [p._fns[name](p.variables, b[t.inputs])[0] for b in ds.as_numpy_iterator()]
    return np.concatenate(logits)[:N]


def test_vit_predict_on_png_files_equals_eval_logits(vit, samples):
    _, _, p = vit
    preds = p(samples["image"])
    assert [r.file for r in preds] == samples["image"] and {r.task for r in preds} == {None}
    got = np.stack([r.logits for r in preds])
    want = _eval_logits(p, None)
    assert np.ptp(want, axis=0).max() > 1e-2  # the examples give different logits
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(preds[0].probs, jax.nn.softmax(want[0]), rtol=1e-5, atol=1e-6)
    assert preds[0].label_names == tuple(str(i) for i in range(10))  # digits' ClassLabel


def test_polyvit_one_call_over_three_modalities_equals_one_call_each(poly, samples):
    files = [samples["video"][0], samples["image"][0], samples["audio"][0], *samples["video"][1:],
             *samples["image"][1:], *samples["audio"][1:]]
    together = poly(files)
    assert [(r.file, r.task) for r in together] == [
        (f, t) for f in files for t in ("digits", "video_digit", "video_direction", "dtmf")
        if poly.tasks[t].modality == {"png": "image", "wav": "audio"}.get(f[-3:], "video")]
    alone = {(r.file, r.task): r for m in ("image", "audio", "video") for r in poly(samples[m])}
    assert set(alone) == {(r.file, r.task) for r in together}
    for r in together:
        np.testing.assert_array_equal(r.logits, alone[(r.file, r.task)].logits)
        np.testing.assert_array_equal(r.probs, alone[(r.file, r.task)].probs)
    for name, modality in (("digits", "image"), ("dtmf", "audio"), ("video_digit", "video"),
                           ("video_direction", "video")):
        got = np.stack([alone[(f, name)].logits for f in samples[modality]])
        np.testing.assert_allclose(got, _eval_logits(poly, name), rtol=1e-5, atol=1e-5,
                                   err_msg=name)
    names = {n: t.label_names for n, t in poly.tasks.items()}
    assert names["dtmf"] == dtmf_keys.KEYS
    assert names["video_direction"] == moving_digits.DIRECTIONS
    assert names["video_digit"] == tuple(str(i) for i in range(10))  # the `digit` feature
    only = poly(samples["video"], tasks=["video_direction"])
    assert [r.task for r in only] == ["video_direction"] * N


def test_predict_cli_writes_top_k_json_lines(vit, samples, tmp_path, monkeypatch):
    c, ckpt, p = vit
    made = {}

    def fake_predictor(config, checkpoint, **kw):  # the fixture's, built from the same args
        made.update(config=config, checkpoint=checkpoint, **kw)
        return p
    monkeypatch.setattr(predict, "Predictor", fake_predictor)
    out = str(tmp_path / "preds.jsonl")
    argv = ["predict", "--config", os.path.join(REPO, "configs", "vit_digits.py"),
            "--checkpoint", ckpt, "--top_k", "3", "--output", out, *samples["image"],
            "--batch_size", "2", *[f"--config.{o}" for o in VIT], f"--config.data_dir={c.data_dir}"]
    assert cli.main(argv) == 0
    assert (made["checkpoint"], made["batch_size"], made["ema"]) == (ckpt, 2, False)
    assert made["config"].model.width == 16 and made["config"].data_dir == c.data_dir
    with open(out) as f:
        lines = [json.loads(line) for line in f]
    for line, pred in zip(lines, p(samples["image"]), strict=True):
        top = np.argsort(-pred.probs)[:3]
        assert line == {"file": pred.file, "task": None, "modality": "image",
                        "labels": [str(i) for i in top], "classes": [int(i) for i in top],
                        "probs": [round(float(pred.probs[i]), 6) for i in top]}
        assert line["probs"] == sorted(line["probs"], reverse=True)


def test_bad_input_is_one_line_naming_the_file_or_task(vit, poly, samples, tmp_path, capsys):
    _, _, p = vit
    with pytest.raises(ValueError, match=r"key0\.wav' is audio, but this checkpoint's tasks "
                                         r"take image; pass image files"):
        p(samples["audio"][:1])
    with pytest.raises(ValueError, match=r"--task 'digits' is not a task .* unnamed task; drop"):
        p(samples["image"], tasks=["digits"])
    with pytest.raises(ValueError, match=r"--task 'nope' is not a task .* use one of \['digits'"):
        poly(samples["image"], tasks=["nope"])
    with pytest.raises(ValueError, match=r"key0\.wav' is audio, but --task \['digits'\] take "
                                         r"image; pass image files or another --task"):
        poly(samples["audio"][:1], tasks=["digits"])
    (tmp_path / "broken.png").write_bytes(b"\x89PNG but cut")
    with pytest.raises(ValueError, match=r"cannot read image file .*broken\.png"):
        p([str(tmp_path / "broken.png")])
    (tmp_path / "notes.txt").write_text("hi")
    argv = ["predict", "--config", os.path.join(REPO, "configs", "vit_digits.py"),
            "--checkpoint", "nowhere.npz", str(tmp_path / "notes.txt")]
    assert cli.main(argv) == 2  # fails on the file before loading anything
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "notes.txt" in err and ".wav" in err, err
