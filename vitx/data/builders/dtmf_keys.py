"""TFDS builder `dtmf_keys`: synthetic telephone keypad (DTMF) tones, 12 classes.

Dual-tone multi-frequency signalling (ITU-T Recommendation Q.23, "Technical features of
push-button telephone sets"; receiver tolerances in ITU-T Q.24) encodes each key as the sum of
one low-group and one high-group sinusoid:

| low \\ high | 1209 Hz | 1336 Hz | 1477 Hz |
|------------|---------|---------|---------|
| 697 Hz     | 1       | 2       | 3       |
| 770 Hz     | 4       | 5       | 6       |
| 852 Hz     | 7       | 8       | 9       |
| 941 Hz     | \\*      | 0       | #       |

Each example is a 1.0 s clip at 8000 Hz (8000 float32 samples in [-1, 1]) holding one key
press, with every nuisance drawn from `numpy.random.default_rng` with a fixed seed per split:

* tone duration uniform in [0.2, 0.7] s, onset uniform so the tone fits in the clip, and
  5 ms raised-cosine ramps at both ends (no clicks);
* each of the two frequencies detuned independently by a factor uniform in [-1.5 %, +1.5 %]
  (Q.24 receivers must accept +-1.5 %);
* low-group amplitude uniform in [0.1, 0.35], high-group amplitude = low-group amplitude times
  a "twist" uniform in [-4, +4] dB; random start phases;
* additive white Gaussian noise with standard deviation uniform in [0.001, 0.05] over the
  whole clip; the sum is clipped to [-1, 1].

Features: `audio` float32 (samples=8000,), `label` ClassLabel(12) with names
`KEYS` = `("1", ..., "9", "*", "0", "#")` in keypad order.

Splits (disjoint seeds; keys balanced by a seeded permutation of `arange(n) % 12`):
`train` has 1,200 clips (100 per key), `test` 360 (30 per key).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from vitx.data.builders.base import LocalBuilder

SAMPLE_RATE = 8000  # Hz
CLIP_SECONDS = 1.0
NUM_SAMPLES = int(SAMPLE_RATE * CLIP_SECONDS)  # 8000
KEYS = ("1", "2", "3", "4", "5", "6", "7", "8", "9", "*", "0", "#")
LOW_HZ = (697.0, 770.0, 852.0, 941.0)  # ITU-T Q.23 low group (keypad rows)
HIGH_HZ = (1209.0, 1336.0, 1477.0)  # ITU-T Q.23 high group (keypad columns)
# Key -> (low, high) frequency in Hz; KEYS is row-major keypad order.
KEY_FREQS: dict[str, tuple[float, float]] = {
    key: (LOW_HZ[i // 3], HIGH_HZ[i % 3]) for i, key in enumerate(KEYS)
}
DURATION_RANGE = (0.2, 0.7)  # s
RAMP_SECONDS = 0.005
MAX_DETUNE = 0.015  # relative, +-1.5 %
LEVEL_RANGE = (0.1, 0.35)  # linear amplitude of the low-group tone
TWIST_DB_RANGE = (-4.0, 4.0)  # high-group level relative to low-group, dB
NOISE_STD_RANGE = (0.001, 0.05)
SPLIT_SIZES = {"train": 1200, "test": 360}
SPLIT_SEEDS = {"train": 20_240_901, "test": 20_240_902}


def synthesize(
    key: int,
    *,
    duration: float,
    onset: float,
    level_low: float,
    level_high: float,
    detune: tuple[float, float] = (0.0, 0.0),
    phases: tuple[float, float] = (0.0, 0.0),
    noise: np.ndarray | None = None,
) -> np.ndarray:
    """One DTMF clip: float32 (8000,) samples in [-1, 1] at 8000 Hz.

    Args:
        key: class index into `KEYS` (0..11).
        duration: tone length in seconds, > 2 * 5 ms ramp.
        onset: tone start in seconds; `onset + duration <= 1.0`.
        level_low, level_high: peak amplitudes of the low- and high-group sinusoids.
        detune: relative frequency offsets (low, high), e.g. 0.01 = +1 %.
        phases: start phases (low, high) in radians.
        noise: optional float (8000,) additive noise.

    Raises:
        ValueError: on a bad key, duration, onset or noise shape.
    """
    if not 0 <= key < len(KEYS):
        raise ValueError(f"key={key!r} must be a class index in [0, {len(KEYS)}).")
    if not 2 * RAMP_SECONDS < duration <= CLIP_SECONDS:
        raise ValueError(f"duration={duration!r} s must be in (0.01, 1.0].")
    if onset < 0 or onset + duration > CLIP_SECONDS + 1e-9:
        raise ValueError(f"onset={onset!r} s must be >= 0 with onset + duration <= 1.0 s.")
    t = np.arange(NUM_SAMPLES, dtype=np.float64) / SAMPLE_RATE
    f_low, f_high = KEY_FREQS[KEYS[key]]
    f_low *= 1.0 + detune[0]
    f_high *= 1.0 + detune[1]
    tone = level_low * np.sin(2 * np.pi * f_low * t + phases[0]) + level_high * np.sin(
        2 * np.pi * f_high * t + phases[1]
    )
    # Envelope: 1 inside [onset, onset + duration], raised-cosine ramps at both ends.
    rel = t - onset
    ramp = np.clip(np.minimum(rel, duration - rel) / RAMP_SECONDS, 0.0, 1.0)
    envelope = 0.5 - 0.5 * np.cos(np.pi * ramp)
    signal = tone * envelope
    if noise is not None:
        noise = np.asarray(noise, dtype=np.float64)
        if noise.shape != (NUM_SAMPLES,):
            raise ValueError(f"noise has shape {noise.shape}; pass shape ({NUM_SAMPLES},).")
        signal = signal + noise
    return np.clip(signal, -1.0, 1.0).astype(np.float32)


def generate_clips(split: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yields `(index, {"audio", "label"})` for `split` exactly as the builder stores them.

    Deterministic: a pure function of `split` (fixed seed `SPLIT_SEEDS`).

    Raises:
        ValueError: if `split` is not `"train"` or `"test"`.
    """
    if split not in SPLIT_SIZES:
        raise ValueError(f"split={split!r} is unknown; use one of {sorted(SPLIT_SIZES)}.")
    n = SPLIT_SIZES[split]
    rng = np.random.default_rng(SPLIT_SEEDS[split])
    labels = rng.permutation(np.arange(n) % len(KEYS))
    for i in range(n):
        duration = rng.uniform(*DURATION_RANGE)
        onset = rng.uniform(0.0, CLIP_SECONDS - duration)
        level_low = rng.uniform(*LEVEL_RANGE)
        level_high = level_low * 10.0 ** (rng.uniform(*TWIST_DB_RANGE) / 20.0)
        detune = tuple(rng.uniform(-MAX_DETUNE, MAX_DETUNE, size=2))
        phases = tuple(rng.uniform(0.0, 2 * np.pi, size=2))
        noise = rng.normal(0.0, rng.uniform(*NOISE_STD_RANGE), size=NUM_SAMPLES)
        audio = synthesize(
            int(labels[i]),
            duration=duration,
            onset=onset,
            level_low=level_low,
            level_high=level_high,
            detune=detune,
            phases=phases,
            noise=noise,
        )
        yield i, {"audio": audio, "label": int(labels[i])}


class DtmfKeys(LocalBuilder):
    """1 s, 8 kHz DTMF tones of the 12 telephone keys with random timing, level and noise."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release (1,200 train / 360 test clips)."}

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=(
                "Synthetic DTMF (ITU-T Q.23) key tones: 1.0 s float32 waveforms at 8000 Hz "
                "with random duration, onset, level, twist, +-1.5 % detuning and Gaussian "
                "noise; 12 classes (1-9, *, 0, #)."
            ),
            features=tfds.features.FeaturesDict(
                {
                    "audio": tfds.features.Tensor(
                        shape=(NUM_SAMPLES,),
                        dtype=np.float32,
                        encoding=tfds.features.Encoding.BYTES,
                    ),
                    "label": tfds.features.ClassLabel(names=KEYS),
                }
            ),
            supervised_keys=("audio", "label"),
            homepage="https://www.itu.int/rec/T-REC-Q.23",
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict[str, Any]:
        del dl_manager  # Synthesised: nothing to download.
        return {split: self._generate_examples(split) for split in ("train", "test")}

    def _generate_examples(self, split: str) -> Iterator[tuple[int, dict[str, Any]]]:
        yield from generate_clips(split)
