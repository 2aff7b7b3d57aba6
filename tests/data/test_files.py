"""vitx.data.files: a user's image, WAV and video files read as the datasets hold them."""

from __future__ import annotations

import os

import numpy as np
import pytest
import tensorflow as tf
from scipy.io import wavfile

from vitx.data import files


def test_modality_of_suffixes_and_folders(tmp_path):
    for name, want in (("a.PNG", "image"), ("b.jpeg", "image"), ("c.wav", "audio"),
                       ("d.npy", "video")):
        (tmp_path / name).write_bytes(b"")
        assert files.modality_of(str(tmp_path / name)) == want
    assert files.modality_of(str(tmp_path)) == "video"
    (tmp_path / "e.txt").write_bytes(b"")
    with pytest.raises(ValueError, match=r"e\.txt.*unknown file type '\.txt'.*\.wav"):
        files.modality_of(str(tmp_path / "e.txt"))
    with pytest.raises(FileNotFoundError, match="nope.png"):
        files.modality_of(str(tmp_path / "nope.png"))


def test_wav_pcm_is_scaled_to_unit_range_and_channels_averaged(tmp_path):
    pcm = np.array([[-32768, 16384], [0, 32767]], np.int16)  # (samples, channels)
    wavfile.write(tmp_path / "s.wav", 8000, pcm)
    wave, rate = files.read_wav(str(tmp_path / "s.wav"))
    assert rate == 8000 and wave.dtype == np.float32
    np.testing.assert_allclose(wave, [(-1.0 + 0.5) / 2, 32767 / 32768 / 2])
    wavfile.write(tmp_path / "u.wav", 4000, np.array([0, 128, 255], np.uint8))
    np.testing.assert_allclose(files.read_wav(str(tmp_path / "u.wav"))[0], [-1, 0, 127 / 128])


def test_audio_is_resampled_to_the_pp_rate_and_fitted_to_the_clip_length(tmp_path):
    t = np.arange(4000) / 4000.0
    wavfile.write(tmp_path / "tone.wav", 4000, np.sin(2 * np.pi * 440 * t).astype(np.float32))
    pp = "log_mel(frame_length=256, sample_rate=8000)|keep('spectrogram')"
    args = files.log_mel_args(pp)
    assert (args["key"], args["sample_rate"], args["frame_step"]) == ("audio", 8000, 80)
    fitted = files._fit_audio(*files.read_wav(str(tmp_path / "tone.wav")), 8000, 6000)
    assert fitted.shape == (6000,)  # 8000 resampled samples cut to the first 6000
    spectrum = np.abs(np.fft.rfft(fitted))
    assert abs(np.argmax(spectrum) * 8000 / 6000 - 440) < 2  # the tone keeps its pitch
    padded = files._fit_audio(np.ones(10, np.float32), 8000, 8000, 16)
    np.testing.assert_array_equal(padded, [1] * 10 + [0] * 6)


def test_video_folder_equals_npy_and_clips_are_fitted(tmp_path):
    rng = np.random.default_rng(0)
    clip = rng.integers(0, 256, (3, 4, 6, 1), dtype=np.uint8)
    np.save(tmp_path / "c.npy", clip[..., 0])  # (T, H, W) gets its channel axis
    os.makedirs(tmp_path / "frames")
    for i, f in enumerate(clip):
        tf.io.write_file(str(tmp_path / "frames" / f"{i:03d}.png"), tf.io.encode_png(f))
    np.testing.assert_array_equal(files.read_video(str(tmp_path / "c.npy")), clip)
    np.testing.assert_array_equal(files.read_video(str(tmp_path / "frames")), clip)
    longer = files._fit_video(clip, (5, 4, 6, 3))  # frames 0, 0|1, 1, 1|2, 2 and RGB
    assert longer.shape == (5, 4, 6, 3)
    np.testing.assert_array_equal(longer[[0, 2, 4], ..., 1], clip[[0, 1, 2], ..., 0])
    np.save(tmp_path / "f.npy", clip.astype(np.float32) / 255)
    with pytest.raises(ValueError, match=r"f\.npy.*float32.*uint8"):
        files.read_video(str(tmp_path / "f.npy"))
    os.makedirs(tmp_path / "empty")
    with pytest.raises(ValueError, match="empty.*no frames"):
        files.read_video(str(tmp_path / "empty"))


def test_channels_follow_the_decode_op():
    rgba = np.array([[[10, 20, 30, 255]]], np.uint8)
    np.testing.assert_array_equal(files.to_channels(rgba, 3), [[[10, 20, 30]]])
    gray = files.to_channels(rgba, 1)
    np.testing.assert_array_equal(gray, tf.image.rgb_to_grayscale(rgba[..., :3]).numpy())
    np.testing.assert_array_equal(files.to_channels(gray, 3), np.repeat(gray, 3, -1))
    with pytest.raises(ValueError, match="5 channels"):
        files.to_channels(np.zeros((1, 1, 5), np.uint8), 3)


def test_unreadable_files_name_the_file(tmp_path):
    for name in ("bad.png", "bad.wav", "bad.npy"):
        (tmp_path / name).write_bytes(b"not really")
    with pytest.raises(ValueError, match=r"cannot read image file .*bad\.png.*PNG"):
        files.read_image(str(tmp_path / "bad.png"))
    with pytest.raises(ValueError, match=r"cannot read WAV file .*bad\.wav"):
        files.read_wav(str(tmp_path / "bad.wav"))
    with pytest.raises(ValueError, match=r"cannot read video clip .*bad\.npy"):
        files.read_video(str(tmp_path / "bad.npy"))
