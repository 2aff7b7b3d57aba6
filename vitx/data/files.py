"""A user's own files as dataset examples: images, WAV audio and video clips (`vitx predict`).

A file becomes one example of a prepared TFDS dataset (`vitx.data.info.DatasetInfo`), so that
the dataset's own eval preprocessing (`pp`) turns it into a model input exactly as it turns a
dataset example into one:

* image: `.png`, `.jpg`, `.jpeg`, `.bmp`, `.gif` (its first frame) -> uint8 (height, width,
  channels);
* audio: `.wav` (PCM 8/16/32-bit or float, read by `scipy.io.wavfile`) -> float32 (samples,)
  in [-1, 1];
* video: a `.npy` clip, uint8 (time, height, width[, channels]), or a folder of image frames
  (sorted by file name) -> uint8 (time, height, width, channels).

`example_from_file` puts the data under the dataset's feature of that modality and fills every
other feature with zeros (the pp may read them, e.g. `onehot` reads `label`). Adaptations, each
only where the dataset's feature has a fixed size that the file does not match:

* channels (images and frames): 1 -> 3 by repeating, 4 -> 3 by dropping alpha, 3/4 -> 1 by
  `tf.image.rgb_to_grayscale` (ITU-R BT.601 luma), as the pp op `decode(channels=...)` does;
  also 2 (gray + alpha) -> 1 by dropping alpha;
* audio: several channels are averaged; a sample rate other than the pp's (`log_mel`'s
  `sample_rate`) is resampled with `scipy.signal.resample_poly` (polyphase, Kaiser window);
  then the clip is cut to its first `samples` or zero-padded at the end;
* video: `time` frames picked at `round(linspace(0, T - 1, time))` (frames repeat when the clip
  is shorter), each resized bilinearly to (height, width) and rounded back to uint8.

Image sizes are left to the pp (`resize`).
"""

from __future__ import annotations

import inspect
import math
import os
import warnings
from typing import Any

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from vitx.data.info import DatasetInfo
from vitx.data.pp import SEED_KEY, audio, get_preprocess_fn
from vitx.data.pp.registry import _parse_op

__all__ = ["AUDIO_SUFFIXES", "IMAGE_SUFFIXES", "MODALITIES", "VIDEO_SUFFIXES",
           "example_from_file", "feature_modality", "input_key", "modality_of", "preprocess",
           "log_mel_args", "read_image", "read_video", "read_wav", "to_channels"]

MODALITIES = ("image", "audio", "video")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif")
AUDIO_SUFFIXES = (".wav",)
VIDEO_SUFFIXES = (".npy",)
_KINDS = ("images (.png, .jpg, .jpeg, .bmp, .gif), audio (.wav) or video (a .npy clip or a "
          "folder of frames)")


def modality_of(path: str) -> str:
    """"image", "audio" or "video" from the file's suffix (a folder is a video of frames).

    Raises:
      FileNotFoundError: `path` does not exist.
      ValueError: a suffix that is none of the three (the message lists the known ones).
    """
    if not os.path.exists(path):
        raise FileNotFoundError(f"input file {path!r} does not exist; check the path")
    if os.path.isdir(path):
        return "video"
    suffix = os.path.splitext(path)[1].lower()
    for modality, suffixes in zip(MODALITIES, (IMAGE_SUFFIXES, AUDIO_SUFFIXES, VIDEO_SUFFIXES),
                                  strict=True):
        if suffix in suffixes:
            return modality
    raise ValueError(f"input file {path!r}: unknown file type {suffix or '(no suffix)'!r}; "
                     f"pass {_KINDS}")


def _first_line(e: BaseException) -> str:
    text = getattr(e, "message", None) or str(e) or type(e).__name__
    return text.strip().splitlines()[0][:160]


def read_image(path: str) -> np.ndarray:
    """The image in `path`: uint8 (height, width, channels) (16-bit images scaled to 8 bits;
    the first frame of an animated GIF).

    Raises:
      ValueError: the file is not a readable PNG / JPEG / BMP / GIF image (naming the file).
    """
    try:
        image = tf.io.decode_image(tf.io.read_file(path), expand_animations=False)
    except (tf.errors.OpError, ValueError) as e:
        raise ValueError(f"cannot read image file {path!r} ({_first_line(e)}); pass a PNG, "
                         f"JPEG, BMP or GIF image") from None
    if image.dtype != tf.uint8:
        image = tf.image.convert_image_dtype(image, tf.uint8, saturate=True)
    return image.numpy()


def read_wav(path: str) -> tuple[np.ndarray, int]:
    """(waveform float32 (samples,) in [-1, 1], sample rate in Hz) of a WAV file.

    PCM integers are scaled by their full range (int16 / 32768, int32 / 2**31, uint8
    (x - 128) / 128); float WAVs are kept as they are; several channels are averaged.

    Raises:
      ValueError: not a readable WAV file, or one without samples (naming the file).
    """
    from scipy.io import wavfile

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # WavFileWarning: unknown chunks are skipped
            rate, data = wavfile.read(path)
    except (ValueError, OSError, EOFError) as e:
        raise ValueError(f"cannot read WAV file {path!r} ({_first_line(e)}); pass a PCM or "
                         f"float .wav file") from None
    data = np.asarray(data)
    if data.dtype == np.uint8:
        wave = (data.astype(np.float32) - 128.0) / 128.0
    elif data.dtype.kind == "i":
        wave = data.astype(np.float32) / float(2 ** (8 * data.dtype.itemsize - 1))
    else:
        wave = data.astype(np.float32)
    if wave.ndim == 2:
        wave = wave.mean(axis=1)
    if wave.ndim != 1 or wave.size == 0:
        raise ValueError(f"WAV file {path!r} holds no samples; pass a non-empty recording")
    return wave.astype(np.float32), int(rate)


def read_video(path: str) -> np.ndarray:
    """The clip in `path`: uint8 (time, height, width, channels).

    `path` is a `.npy` array (time, height, width[, channels]) of integers in [0, 255] or a
    folder of image frames (all the same shape), in the order of their sorted file names.

    Raises:
      ValueError: an unreadable `.npy`, one of another rank or with values outside 0..255 (or
        floats), an empty folder, frames of different shapes (each naming the file).
    """
    if os.path.isdir(path):
        names = sorted(n for n in os.listdir(path) if n.lower().endswith(IMAGE_SUFFIXES))
        if not names:
            raise ValueError(f"video folder {path!r} holds no frames; put the frames in it as "
                             f"image files ({', '.join(IMAGE_SUFFIXES)}), sorted by name")
        frames = [read_image(os.path.join(path, n)) for n in names]
        for n, f in zip(names, frames, strict=True):
            if f.shape != frames[0].shape:
                raise ValueError(f"video frame {os.path.join(path, n)!r} has shape {f.shape}, "
                                 f"the first frame {frames[0].shape}; give all frames one size")
        return np.stack(frames)
    try:
        clip = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise ValueError(f"cannot read video clip {path!r} ({_first_line(e)}); save it with "
                         f"numpy.save as uint8 (time, height, width[, channels])") from None
    if clip.ndim == 3:
        clip = clip[..., None]
    if clip.ndim != 4 or clip.dtype.kind not in "iu" or clip.size == 0 or (
            clip.min() < 0 or clip.max() > 255):
        raise ValueError(f"video clip {path!r} is {clip.dtype} {clip.shape}; save it as uint8 "
                         f"(time, height, width[, channels]) with values 0..255")
    return clip.astype(np.uint8)


def to_channels(x: np.ndarray, channels: int) -> np.ndarray:
    """uint8 (..., c) -> (..., `channels`) as the pp op `decode(channels=...)` converts, and
    2 (gray + alpha) -> 1 or 3.

    Raises:
      ValueError: a conversion those rules do not have (e.g. 5 channels).
    """
    have = x.shape[-1]
    if have == channels:
        return x
    if have in (2, 4):  # drop alpha
        x, have = x[..., :have - 1], have - 1
        if have == channels:
            return x
    if have == 1 and channels == 3:
        return np.repeat(x, 3, axis=-1)
    if have == 3 and channels == 1:
        return tf.image.rgb_to_grayscale(x).numpy()
    raise ValueError(f"cannot convert {have} channels to {channels}")


def feature_modality(feature: Any) -> str | None:
    """The modality a TFDS feature holds: an `Image` or a 3-D tensor "image", a 1-D float tensor
    "audio", a 4-D tensor "video"; None for anything else (labels, ids, text)."""
    if isinstance(feature, tfds.features.Image):
        return "image"
    if not isinstance(feature, tfds.features.Tensor):
        return None
    rank = len(feature.shape)
    if rank == 1 and feature.tf_dtype.is_floating:
        return "audio"
    return {3: "image", 4: "video"}.get(rank)


def input_key(info: DatasetInfo, modality: str, prefer: tuple[str, ...] = ()) -> str:
    """The dataset feature a file of `modality` is written to: the first key of `prefer` that
    holds that modality, else the feature named like the modality, else the first such feature.

    Raises:
      ValueError: the dataset has no feature of that modality.
    """
    features = info.features
    keys = [k for k in features if feature_modality(features[k]) == modality]
    for k in (*prefer, modality):
        if k in keys:
            return k
    if not keys:
        raise ValueError(f"dataset {info.name!r} has no {modality} feature; pass files of the "
                         f"modality it has")
    return keys[0]


def log_mel_args(pp: str) -> dict[str, Any] | None:
    """All arguments (defaults filled in) of the first `log_mel` op of the pp spec `pp`, e.g.
    {"key": "audio", "sample_rate": 8000, ...}; None if it has none.

    Raises:
      ValueError: a malformed op in `pp`, or bad `log_mel` arguments.
    """
    for part in pp.split("|"):
        if not part.strip():
            continue
        name, args, kwargs = _parse_op(part.strip())
        if name == "log_mel":
            try:
                bound = inspect.signature(audio.log_mel).bind(*args, **kwargs)
            except TypeError as e:
                raise ValueError(f"bad arguments for preprocessing op {part!r}: {e}") from None
            bound.apply_defaults()
            return dict(bound.arguments)
    return None


def _fit_audio(wave: np.ndarray, rate: int, want_rate: int | None,
               samples: int | None) -> np.ndarray:
    if want_rate is not None and rate != want_rate:
        from scipy import signal

        g = math.gcd(rate, want_rate)
        wave = signal.resample_poly(wave, want_rate // g, rate // g).astype(np.float32)
    if samples is not None and wave.shape[0] != samples:
        wave = np.pad(wave[:samples], (0, max(0, samples - wave.shape[0])))
    return wave


def _fit_video(clip: np.ndarray, shape: tuple[int | None, ...]) -> np.ndarray:
    t, h, w, c = shape
    if c is not None:
        clip = to_channels(clip, c)
    if t is not None and clip.shape[0] != t:
        clip = clip[np.round(np.linspace(0, clip.shape[0] - 1, t)).astype(int)]
    if (h, w) != (None, None) and clip.shape[1:3] != (h, w):
        size = (h or clip.shape[1], w or clip.shape[2])
        out = tf.image.resize(clip.astype(np.float32), size, method="bilinear").numpy()
        clip = np.clip(np.round(out), 0, 255).astype(np.uint8)
    return clip


def _zeros(feature: Any) -> tf.Tensor:
    shape = [1 if d is None else d for d in (feature.shape or ())]
    dtype = feature.tf_dtype
    if dtype == tf.string:
        return tf.fill(shape, "")
    return tf.zeros(shape, dtype)


def example_from_file(info: DatasetInfo, path: str, modality: str, key: str,
                      sample_rate: int | None = None) -> dict[str, tf.Tensor]:
    """One example of dataset `info` holding the file `path` under the feature `key`.

    Every other (non-nested) feature is zeros of its shape and dtype (unknown dims: 1). See
    the module docstring for the adaptations; `sample_rate` is the rate (Hz) audio is
    resampled to (None: kept).

    Raises:
      ValueError: an unreadable file, or a channel count that cannot be converted (naming the
        file).
    """
    features = info.features
    example = {k: _zeros(f) for k, f in features.items()
               if isinstance(f, tfds.features.Tensor | tfds.features.Image)}
    shape = tuple(features[key].shape)
    try:
        if modality == "image":
            value = read_image(path)
            if len(shape) == 3 and shape[-1] is not None:
                value = to_channels(value, shape[-1])
        elif modality == "audio":
            wave, rate = read_wav(path)
            value = _fit_audio(wave, rate, sample_rate, shape[0] if shape else None)
        else:
            value = _fit_video(read_video(path), shape)
    except ValueError as e:
        if path in str(e):
            raise
        raise ValueError(f"input file {path!r}: {e}; pass another file") from None
    example[key] = tf.constant(value, dtype=features[key].tf_dtype)
    return example


def preprocess(examples: list[dict[str, tf.Tensor]], pp: str) -> list[dict[str, np.ndarray]]:
    """Each example through the pp spec `pp` (eagerly, per-op seeds from a fixed seed 0 and
    the example's position, as an eval split's). Returns numpy dicts.

    Raises:
      ValueError: a bad pp spec, or an op that rejects the example.
    """
    fn = get_preprocess_fn(pp)
    base = tf.constant([0, 0], tf.int64)
    out = []
    for i, ex in enumerate(examples):
        seed = tf.random.experimental.stateless_fold_in(base, i)
        out.append({k: v.numpy() for k, v in fn({**ex, SEED_KEY: seed}).items()})
    return out
