"""Audio ops: `log_mel` (a waveform under one key -> a log-mel spectrogram under another)."""

from __future__ import annotations

import tensorflow as tf

from vitx.data.pp.registry import Op, key_op, register


@register("log_mel")
def log_mel(
    key: str = "audio",
    out_key: str = "spectrogram",
    sample_rate: int = 8000,
    frame_length: int = 256,
    frame_step: int = 80,
    num_mel_bins: int = 64,
    lower_hz: float = 80.0,
    upper_hz: float = 3800.0,
    normalize: bool = False,
) -> Op:
    """Log-mel spectrogram of the waveform under `key`, written to `out_key`.

    The waveform (samples,) float at `sample_rate` Hz is cut into frames of
    `frame_length` samples every `frame_step` samples (no end padding; periodic Hann
    window; FFT length = next power of two >= frame_length) by `tf.signal.stft`; the
    magnitude spectrum is mapped to `num_mel_bins` HTK-mel bands between `lower_hz` and
    `upper_hz` by `tf.signal.linear_to_mel_weight_matrix` and compressed as
    `log(mel + 1e-6)` (natural log). With `normalize=True` each example is then
    standardised to zero mean and unit variance over all its (frame, bin) values.

    Output: float32 (frames, num_mel_bins, 1) with
    `frames = 1 + (samples - frame_length) // frame_step` (e.g. 97 for 8000 samples and the
    defaults: 10 ms hop, 32 ms window at 8 kHz). The input key is kept.

    Raises:
        ValueError: on non-positive sizes, `not 0 <= lower_hz < upper_hz <= sample_rate / 2`,
            or (when run) a missing `key` or a waveform that is not 1-D or is shorter than
            `frame_length`.
    """
    for name, value in (
        ("sample_rate", sample_rate),
        ("frame_length", frame_length),
        ("frame_step", frame_step),
        ("num_mel_bins", num_mel_bins),
    ):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"log_mel: {name}={value!r} must be a positive int.")
    if not 0 <= lower_hz < upper_hz <= sample_rate / 2:
        raise ValueError(
            f"log_mel: need 0 <= lower_hz < upper_hz <= sample_rate / 2, got lower_hz="
            f"{lower_hz!r}, upper_hz={upper_hz!r}, sample_rate={sample_rate!r}."
        )
    fft_length = 1 << (frame_length - 1).bit_length()
    mel_matrix = tf.signal.linear_to_mel_weight_matrix(
        num_mel_bins=num_mel_bins,
        num_spectrogram_bins=fft_length // 2 + 1,
        sample_rate=sample_rate,
        lower_edge_hertz=float(lower_hz),
        upper_edge_hertz=float(upper_hz),
        dtype=tf.float32,
    )

    def fn(wave: tf.Tensor) -> tf.Tensor:
        if wave.shape.rank != 1:
            raise ValueError(
                f"log_mel: key {key!r} must hold a 1-D waveform (samples,), got shape "
                f"{wave.shape}; select one channel first."
            )
        num_samples = wave.shape[0]
        if num_samples is not None and num_samples < frame_length:
            raise ValueError(
                f"log_mel: key {key!r} has {num_samples} samples < frame_length="
                f"{frame_length}; use a smaller frame_length."
            )
        stft = tf.signal.stft(
            tf.cast(wave, tf.float32),
            frame_length=frame_length,
            frame_step=frame_step,
            fft_length=fft_length,
            pad_end=False,
        )
        mel = tf.matmul(tf.abs(stft), mel_matrix)  # (frames, num_mel_bins)
        spec = tf.math.log(mel + 1e-6)
        if normalize:
            mean, var = tf.nn.moments(spec, axes=[0, 1])
            spec = (spec - mean) * tf.math.rsqrt(var + 1e-6)
        return spec[..., None]

    return key_op("log_mel", key, out_key, fn)
