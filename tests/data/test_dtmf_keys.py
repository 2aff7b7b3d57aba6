"""The `dtmf_keys` TFDS builder and the `log_mel` preprocessing op."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from vitx.data.builders import dtmf_keys, ensure_built
from vitx.data.pipeline import build_dataset
from vitx.data.pp import get_preprocess_fn

SR, N = dtmf_keys.SAMPLE_RATE, dtmf_keys.NUM_SAMPLES
# ITU-T Q.23 keypad, written out independently of the builder's table.
EXPECTED_FREQS = {
    "1": (697, 1209), "2": (697, 1336), "3": (697, 1477),
    "4": (770, 1209), "5": (770, 1336), "6": (770, 1477),
    "7": (852, 1209), "8": (852, 1336), "9": (852, 1477),
    "*": (941, 1209), "0": (941, 1336), "#": (941, 1477),
}  # fmt: skip


@pytest.fixture(scope="session")
def dtmf_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A TFDS data dir holding the prepared `dtmf_keys` dataset, built once per session."""
    data_dir = tmp_path_factory.mktemp("tfds_dtmf_keys")
    ensure_built("dtmf_keys", str(data_dir))
    return str(data_dir)


def _load(data_dir: str, split: str) -> dict[str, np.ndarray]:
    builder = tfds.builder("dtmf_keys", data_dir=data_dir)
    return tfds.as_numpy(builder.as_dataset(split=split, shuffle_files=False, batch_size=-1))


def _two_peaks_hz(audio: np.ndarray) -> tuple[float, float]:
    """The two strongest spectral peaks (Hz, ascending), 1 Hz FFT bins, +-30 Hz apart."""
    spectrum = np.abs(np.fft.rfft(audio * np.hanning(len(audio))))
    freqs = np.fft.rfftfreq(len(audio), 1.0 / SR)
    first = int(np.argmax(spectrum))
    spectrum = spectrum.copy()
    spectrum[np.abs(freqs - freqs[first]) < 30] = 0
    second = int(np.argmax(spectrum))
    return tuple(sorted((float(freqs[first]), float(freqs[second]))))


def _assert_key_freqs(peaks: tuple[float, float], key: str) -> None:
    for got, nominal in zip(peaks, EXPECTED_FREQS[key], strict=True):
        # Detuning is at most 1.5 %; allow 2 Hz for the 1 Hz bin grid.
        assert abs(got - nominal) <= 0.015 * nominal + 2, (key, peaks)


@pytest.mark.parametrize("split,size", [("train", 1200), ("test", 360)])
def test_split_sizes_features_and_labels(dtmf_dir: str, split: str, size: int) -> None:
    builder = ensure_built("dtmf_keys", dtmf_dir)
    assert builder.info.splits[split].num_examples == size
    assert builder.info.features["audio"].shape == (N,)
    assert builder.info.features["audio"].dtype == np.float32
    assert builder.info.features["label"].names == list(EXPECTED_FREQS)
    data = _load(dtmf_dir, split)
    assert data["audio"].shape == (size, N) and data["audio"].dtype == np.float32
    assert np.all(np.isfinite(data["audio"]))
    assert data["audio"].min() >= -1.0 and data["audio"].max() <= 1.0
    np.testing.assert_array_equal(np.bincount(data["label"], minlength=12), [size // 12] * 12)


def test_key_table_is_itu_q23() -> None:
    assert dtmf_keys.KEYS == tuple(EXPECTED_FREQS)
    expected = {k: (float(lo), float(hi)) for k, (lo, hi) in EXPECTED_FREQS.items()}
    assert dtmf_keys.KEY_FREQS == expected


@pytest.mark.parametrize("detune", [(0.0, 0.0), (0.015, -0.015), (-0.015, 0.015)])
def test_clean_tone_peaks_are_the_key_frequencies(detune: tuple[float, float]) -> None:
    for key_index, key in enumerate(dtmf_keys.KEYS):
        audio = dtmf_keys.synthesize(
            key_index, duration=0.3, onset=0.2, level_low=0.3, level_high=0.3, detune=detune
        )
        assert audio.shape == (N,) and audio.dtype == np.float32
        assert np.all(audio[: int(0.2 * SR)] == 0) and np.all(audio[int(0.5 * SR) + 1 :] == 0)
        _assert_key_freqs(_two_peaks_hz(audio), key)


def test_noisy_dataset_clips_have_their_key_frequencies(dtmf_dir: str) -> None:
    data = _load(dtmf_dir, "test")
    for audio, label in zip(data["audio"], data["label"], strict=True):
        _assert_key_freqs(_two_peaks_hz(audio), dtmf_keys.KEYS[label])


def test_random_timing_and_levels(dtmf_dir: str) -> None:
    audio = _load(dtmf_dir, "test")["audio"]
    # Tone duration 0.2-0.7 s: the loud part covers roughly 15 %..75 % of the clip.
    loud = np.mean(np.abs(audio) > 0.15 * np.abs(audio).max(axis=1, keepdims=True), axis=1)
    assert 0.05 < loud.min() and loud.max() < 0.8
    assert np.ptp(np.abs(audio).max(axis=1)) > 0.2  # levels vary


def test_built_data_equal_the_deterministic_generator(dtmf_dir: str) -> None:
    data = _load(dtmf_dir, "test")
    pairs = zip(data["audio"], data["label"], strict=True)
    built = sorted(a.tobytes() + bytes([lb]) for a, lb in pairs)
    clips = dtmf_keys.generate_clips("test")
    regenerated = sorted(ex["audio"].tobytes() + bytes([ex["label"]]) for _, ex in clips)
    assert built == regenerated
    train_first = next(dtmf_keys.generate_clips("train"))[1]["audio"]
    assert not any(np.array_equal(train_first, a) for a in data["audio"])  # different seeds


def test_log_mel_through_the_pipeline(dtmf_dir: str) -> None:
    ds = build_dataset(
        name="dtmf_keys",
        split="test",
        data_dir=dtmf_dir,
        pp="log_mel|keep('spectrogram', 'label')",
        global_batch_size=128,
        train=False,
    )
    batches = list(ds.as_numpy_iterator())
    assert len(batches) == 3  # ceil(360 / 128)
    spec = batches[0]["spectrogram"]
    frames = 1 + (N - 256) // 80
    assert spec.shape == (128, frames, 64, 1) and spec.dtype == np.float32
    assert np.all(np.isfinite(spec))
    assert spec.min() >= np.log(1e-6) - 1e-3
    assert batches[0]["label"].shape == (128,)


def test_log_mel_op() -> None:
    t = np.arange(N) / SR
    tone = tf.constant(0.5 * np.sin(2 * np.pi * 1000.0 * t), tf.float32)
    out = get_preprocess_fn("log_mel(num_mel_bins=40)")({"audio": tone})
    assert set(out) == {"audio", "spectrogram"}
    spec = out["spectrogram"].numpy()
    assert spec.shape == (97, 40, 1)
    # The loudest mel band is the one centred nearest 1000 Hz (HTK mel, 80..3800 Hz).
    mel = lambda f: 1127.0 * np.log1p(f / 700.0)
    centres = np.linspace(mel(80.0), mel(3800.0), 42)[1:-1]
    loudest = int(np.argmax(spec[:, :, 0].mean(0)))
    assert abs(loudest - int(np.argmin(abs(centres - mel(1000.0))))) <= 1
    norm = get_preprocess_fn("log_mel(normalize=True, out_key='s')")({"audio": tone})["s"].numpy()
    assert abs(norm.mean()) < 1e-4 and abs(norm.std() - 1) < 1e-3
    for bad in ("log_mel(upper_hz=5000.0)", "log_mel(frame_step=0)"):
        with pytest.raises(ValueError, match="log_mel"):
            get_preprocess_fn(bad)
    with pytest.raises(ValueError, match="'audio'"):
        get_preprocess_fn("log_mel")({"wave": tone})
    with pytest.raises(ValueError, match="1-D"):
        get_preprocess_fn("log_mel")({"audio": tone[None]})
