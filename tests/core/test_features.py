"""Feature extraction (edge_runtime.core.features): audio, frames, and raw == features on the node."""

from __future__ import annotations

import numpy as np
import pydantic
import pytest
import soundfile as sf

from edge_runtime.core import features as fx
from edge_runtime.core.features import (
    FeatureConfig,
    audio_features,
    frame_features,
    raw_tensors,
    read_wav,
    resample,
    to_features,
)


def tone(seconds: float, sr: int, freq: float, amp: float = 0.3) -> np.ndarray:
    t = np.arange(int(round(seconds * sr))) / sr
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def hz_to_mel(f: np.ndarray | float) -> np.ndarray:
    return 2595.0 * np.log10(1.0 + np.asarray(f) / 700.0)


def mel_to_hz(m: np.ndarray) -> np.ndarray:
    return 700.0 * (10.0 ** (np.asarray(m) / 2595.0) - 1.0)


# --------------------------------------------------------------------------- config


def test_config_defaults_and_extra_forbidden():
    cfg = FeatureConfig()
    assert (cfg.sample_rate, cfg.audio, cfg.n_mfcc, cfg.n_mels) == (16000, "mfcc", 13, 40)
    assert (cfg.win_ms, cfg.hop_ms, cfg.max_audio_frames) == (25.0, 10.0, 300)
    assert (cfg.image_size, cfg.channels, cfg.max_video_frames) == (32, 1, 8)
    with pytest.raises(pydantic.ValidationError, match="n_mfccs"):
        FeatureConfig(n_mfccs=13)
    with pytest.raises(pydantic.ValidationError):
        FeatureConfig(channels=2)
    with pytest.raises(pydantic.ValidationError):
        FeatureConfig(audio="mel")


# --------------------------------------------------------------------------- audio I/O


def test_read_wav_averages_channels(tmp_path):
    left, right = tone(0.1, 8000, 200), tone(0.1, 8000, 900, amp=0.5)
    sf.write(str(tmp_path / "s.wav"), np.stack([left, right], axis=1), 8000, subtype="FLOAT")
    wave, sr = read_wav(tmp_path / "s.wav")
    assert sr == 8000
    assert wave.dtype == np.float32 and wave.shape == (800,)
    np.testing.assert_allclose(wave, (left + right) / 2, atol=1e-7)


def test_read_wav_missing_file_names_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.wav"):
        read_wav(tmp_path / "nope.wav")


def test_resample_length_and_content():
    wave = tone(0.5, 8000, 300)
    up = resample(wave, 8000, 16000)
    assert up.dtype == np.float32 and up.shape == (8000,)
    # a 300 Hz tone stays a 300 Hz tone: compare with the analytic one away from the edges
    np.testing.assert_allclose(up[400:-400], tone(0.5, 16000, 300)[400:-400], atol=2e-3)
    same = resample(wave, 8000, 8000)
    assert np.array_equal(same, wave) and same is not wave


# --------------------------------------------------------------------------- audio features


@pytest.mark.parametrize("kind,dim", [("mfcc", 13), ("logmel", 40)])
def test_audio_feature_shape_and_normalisation(kind, dim):
    cfg = FeatureConfig(audio=kind)
    rng = np.random.default_rng(0)
    wave = (0.1 * rng.standard_normal(12000)).astype(np.float32) + tone(0.75, 16000, 700)
    out = audio_features(wave, 16000, cfg)
    # centred frames every 160 samples: 1 + 12000 // 160 frames
    assert out.dtype == np.float32 and out.shape == (1 + 12000 // 160, dim)
    np.testing.assert_allclose(out.mean(axis=0), 0.0, atol=1e-5)
    np.testing.assert_allclose(out.std(axis=0), 1.0, atol=1e-4)


def test_logmel_band_follows_the_tone():
    """First half 500 Hz, second half 3 kHz: the band rising most in the first half is at ~500 Hz."""
    cfg = FeatureConfig(audio="logmel", n_mels=40)
    wave = np.concatenate([tone(0.5, 16000, 500), tone(0.5, 16000, 3000)])
    out = audio_features(wave, 16000, cfg)
    half = out.shape[0] // 2
    contrast = out[: half - 5].mean(axis=0) - out[half + 5 :].mean(axis=0)
    centres = mel_to_hz(np.linspace(0.0, hz_to_mel(8000.0), 40 + 2))[1:-1]  # HTK mel band centres
    assert abs(centres[int(np.argmax(contrast))] - 500.0) < 80.0
    assert abs(centres[int(np.argmin(contrast))] - 3000.0) < 300.0


def test_silence_gives_zeros_not_nan():
    for kind in ("mfcc", "logmel"):
        out = audio_features(np.zeros(16000, dtype=np.float32), 16000, FeatureConfig(audio=kind))
        assert out.shape[0] == 101
        assert np.all(np.isfinite(out)) and np.all(out == 0.0)


def test_short_and_empty_clips_still_give_frames():
    """Shorter than one 25 ms window: zero-padded to 400 samples, centred every 160: 1 + 400 // 160."""
    cfg = FeatureConfig()
    short = audio_features(tone(0.001, 16000, 440), 16000, cfg)
    assert short.shape == (3, 13) and np.all(np.isfinite(short))
    empty = audio_features(np.zeros(0, dtype=np.float32), 16000, cfg)
    assert empty.shape == (3, 13) and np.all(empty == 0.0)
    assert audio_features(tone(0.025, 16000, 440), 16000, cfg).shape == (3, 13)
    assert audio_features(tone(0.030, 16000, 440), 16000, cfg).shape == (1 + 480 // 160, 13)
    # a window shorter than the hop: 1 + 128 // 160 = exactly one frame
    assert audio_features(tone(0.001, 16000, 440), 16000, FeatureConfig(win_ms=8.0, n_mels=16)).shape == (1, 13)


def test_long_clip_truncated():
    cfg = FeatureConfig(max_audio_frames=50)
    assert audio_features(tone(5.0, 16000, 440), 16000, cfg).shape == (50, 13)
    assert audio_features(tone(5.0, 16000, 440), 16000, FeatureConfig()).shape == (300, 13)


def test_audio_resampled_first():
    cfg = FeatureConfig()
    wave = tone(1.0, 22050, 440) + tone(1.0, 22050, 1300, amp=0.1)
    direct = audio_features(wave, 22050, cfg)
    expected_len = int(np.ceil(22050 * 16000 / 22050))  # 16000 samples after resampling
    assert direct.shape == (1 + expected_len // 160, 13)
    assert np.array_equal(direct, audio_features(resample(wave, 22050, 16000), 16000, cfg))


# --------------------------------------------------------------------------- frames


def test_gray_frames_values_and_subsampling():
    levels = np.arange(20) * 10
    frames = np.stack([np.full((40, 48, 3), v, dtype=np.uint8) for v in levels])
    out = frame_features(frames, FeatureConfig())
    assert out.dtype == np.float32 and out.shape == (8, 1, 32, 32)
    picked = [0, 3, 5, 8, 11, 14, 16, 19]  # round(linspace(0, 19, 8))
    expected = (levels[picked] / 255.0 - 0.4589) / 0.2255
    np.testing.assert_allclose(out.mean(axis=(1, 2, 3)), expected, atol=1e-5)
    np.testing.assert_allclose(out.std(axis=(1, 2, 3)), 0.0, atol=1e-5)


def test_rgb_frames_use_imagenet_constants():
    frame = np.empty((1, 32, 32, 3), dtype=np.uint8)
    frame[..., 0], frame[..., 1], frame[..., 2] = 255, 128, 0
    out = frame_features(frame, FeatureConfig(channels=3))
    assert out.shape == (1, 3, 32, 32)
    expected = [(1.0 - 0.485) / 0.229, (128 / 255 - 0.456) / 0.224, (0.0 - 0.406) / 0.225]
    np.testing.assert_allclose(out[0].mean(axis=(1, 2)), expected, atol=1e-5)


def test_grayscale_is_luminance():
    frame = np.zeros((1, 16, 16, 3), dtype=np.uint8)
    frame[..., 1] = 200  # pure green
    out = frame_features(frame, FeatureConfig(image_size=16))
    np.testing.assert_allclose(out, (0.587 * 200 / 255 - 0.4589) / 0.2255, atol=1e-5)


def test_downsizing_is_antialiased():
    """A 1-pixel checkerboard shrunk 2x becomes flat grey, not an aliased pattern."""
    board = ((np.indices((64, 64)).sum(axis=0) % 2) * 255).astype(np.uint8)
    frames = np.repeat(board[None, :, :, None], 3, axis=3)
    out = frame_features(frames, FeatureConfig()) * 0.2255 + 0.4589  # back to [0, 1]
    assert out.shape == (1, 1, 32, 32)
    assert abs(float(out.mean()) - 0.5) < 0.01
    assert float(out.std()) < 0.02


def test_frames_validated():
    cfg = FeatureConfig()
    with pytest.raises(ValueError, match="uint8"):
        frame_features(np.zeros((2, 8, 8, 3), dtype=np.float32), cfg)
    with pytest.raises(ValueError, match="T, H, W, 3"):
        frame_features(np.zeros((2, 8, 8), dtype=np.uint8), cfg)
    with pytest.raises(ValueError, match="at least one frame"):
        frame_features(np.zeros((0, 8, 8, 3), dtype=np.uint8), cfg)


# --------------------------------------------------------------------------- raw == features


@pytest.mark.parametrize(
    "cfg",
    [FeatureConfig(), FeatureConfig(audio="logmel", channels=3, image_size=24, max_video_frames=5)],
)
def test_raw_then_features_equals_direct_features(cfg):
    rng = np.random.default_rng(1)
    wave = (tone(1.3, 22050, 440) + 0.05 * rng.standard_normal(int(1.3 * 22050))).astype(np.float32)
    frames = rng.integers(0, 256, (13, 40, 48, 3), dtype=np.uint8)
    raw = raw_tensors(wave, frames, cfg, sr=22050)
    assert set(raw) == {"waveform", "frames"}
    assert raw["waveform"].dtype == np.float32 and raw["waveform"].ndim == 1
    assert raw["waveform"].shape[0] == int(np.ceil(wave.size * cfg.sample_rate / 22050))
    assert raw["frames"].dtype == np.uint8 and raw["frames"].shape == (cfg.max_video_frames, 40, 48, 3)
    node = to_features(raw, cfg)
    direct = {"audio": audio_features(wave, 22050, cfg), "video": frame_features(frames, cfg)}
    assert set(node) == {"audio", "video"}
    for key in ("audio", "video"):
        assert node[key].dtype == direct[key].dtype and node[key].shape == direct[key].shape
        assert np.array_equal(node[key], direct[key]), key


def test_raw_tensors_default_rate_and_short_video():
    cfg = FeatureConfig()
    wave = tone(0.2, 16000, 440)
    frames = np.zeros((3, 8, 8, 3), dtype=np.uint8)
    raw = raw_tensors(wave, frames, cfg)
    assert np.array_equal(raw["waveform"], wave)
    assert raw["frames"].shape == (3, 8, 8, 3)


def test_to_features_passes_features_through():
    feats = {"audio": np.ones((4, 13), np.float32), "video": np.ones((2, 1, 32, 32), np.float32)}
    out = to_features(feats, FeatureConfig())
    assert out.keys() == feats.keys()
    assert all(out[k] is feats[k] for k in feats)
    with pytest.raises(ValueError, match="both raw 'waveform' and feature 'audio'"):
        to_features({"waveform": np.zeros(10, np.float32), "audio": feats["audio"]}, FeatureConfig())


def test_module_names():
    assert fx.RAW_AUDIO == "waveform" and fx.RAW_VIDEO == "frames"
