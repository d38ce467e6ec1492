"""Feature extraction shared by the device simulator and the node.

A device may send either *features* (``{"audio": (T, F), "video": (T, C, S, S)}`` float32) or
*raw* tensors (``{"waveform": (N,) float32 at cfg.sample_rate, "frames": (T, H, W, 3) uint8}``);
the node turns raw tensors into features with :func:`to_features`.  Both paths run the very same
functions with the same :class:`FeatureConfig`, so::

    to_features(raw_tensors(wave, frames, cfg, sr=sr), cfg)
        == {"audio": audio_features(wave, sr, cfg), "video": frame_features(frames, cfg)}

exactly (bit for bit): a device that sends raw data and one that sends features give the node
identical tensors.

Audio
    WAV files are read with :mod:`soundfile` (never ``torchaudio.load``, which needs torchcodec),
    averaged to mono and resampled to ``cfg.sample_rate`` with
    :func:`torchaudio.functional.resample`.  Frames are ``win_ms`` long every ``hop_ms``
    (``n_fft = win_length = round(win_ms * sr / 1000)``, Hann window, centred frames).
    ``audio="mfcc"`` gives ``n_mfcc`` coefficients (:class:`torchaudio.transforms.MFCC`, log-mel in
    dB over ``max(n_mels, n_mfcc)`` mel bands); ``audio="logmel"`` gives ``log(mel power + 1e-6)``
    over ``n_mels`` bands.  Each feature is then normalised to zero mean and unit variance over
    the clip's frames (a constant feature, e.g. silence, becomes 0, never NaN), after keeping at
    most ``max_audio_frames`` frames (the start of the clip).

Video
    Frames (uint8 RGB) are evenly subsampled to at most ``max_video_frames``, scaled to [0, 1],
    turned to grayscale by ITU-R BT.601 luminance (``0.299 R + 0.587 G + 0.114 B``) when
    ``channels == 1``, resized (squashed, no crop) to ``image_size x image_size`` with antialiased
    bilinear interpolation, and normalised with fixed constants: the ImageNet statistics
    :data:`RGB_MEAN` / :data:`RGB_STD` for RGB, and their luminance :data:`GRAY_MEAN` /
    :data:`GRAY_STD` for grayscale.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping

import numpy as np
import soundfile as sf
import torch
import torch.nn.functional as F
import torchaudio

from edge_runtime.core.config import FeatureConfig

RAW_AUDIO = "waveform"
"""Tensor name of a raw waveform: float32 (N,), mono, at ``FeatureConfig.sample_rate``."""
RAW_VIDEO = "frames"
"""Tensor name of raw video frames: uint8 (T, H, W, 3) RGB, at most ``max_video_frames``."""
AUDIO = "audio"
"""Tensor name of audio features: float32 (T, F)."""
VIDEO = "video"
"""Tensor name of video features: float32 (T, C, S, S)."""

RGB_MEAN = (0.485, 0.456, 0.406)
"""Per-channel mean of [0, 1] RGB pixels used for normalisation (ImageNet statistics)."""
RGB_STD = (0.229, 0.224, 0.225)
"""Per-channel std of [0, 1] RGB pixels used for normalisation (ImageNet statistics)."""
LUMA = (0.299, 0.587, 0.114)
"""ITU-R BT.601 luminance weights for R, G, B."""
GRAY_MEAN = 0.4589
"""Mean of [0, 1] grayscale pixels: the luminance of :data:`RGB_MEAN` (0.299*0.485+0.587*0.456+0.114*0.406)."""
GRAY_STD = 0.2255
"""Std of [0, 1] grayscale pixels: the luminance-weighted :data:`RGB_STD` (0.299*0.229+0.587*0.224+0.114*0.225)."""

LOG_EPS = 1e-6
"""Added to mel power before the log of ``audio="logmel"``."""
_STD_FLOOR = 1e-5


# ---------------------------------------------------------------------------------------------
# Audio
# ---------------------------------------------------------------------------------------------


def read_wav(path: str | os.PathLike[str]) -> tuple[np.ndarray, int]:
    """Read a WAV file with soundfile: ``(float32 mono waveform (N,), sample rate)``.

    Multi-channel files are averaged to mono.  Raises ``FileNotFoundError`` naming the path when
    it does not exist.
    """
    if not os.path.exists(path):
        raise FileNotFoundError(f"audio file not found: {os.fspath(path)}")
    data, sr = sf.read(os.fspath(path), dtype="float32", always_2d=True)
    return np.ascontiguousarray(data.mean(axis=1), dtype=np.float32), int(sr)


def resample(wave: np.ndarray, sr: int, target_sr: int) -> np.ndarray:
    """``wave`` (1-D) from ``sr`` to ``target_sr`` Hz with :func:`torchaudio.functional.resample`.

    Returns a float32 copy (unchanged values when the rates are equal).
    """
    wave = np.asarray(wave, dtype=np.float32).reshape(-1)
    sr, target_sr = int(sr), int(target_sr)
    if sr <= 0 or target_sr <= 0:
        raise ValueError(f"sample rates must be positive (got {sr} -> {target_sr})")
    if sr == target_sr or wave.size == 0:
        return wave.copy()
    out = torchaudio.functional.resample(torch.from_numpy(np.ascontiguousarray(wave)), sr, target_sr)
    return np.ascontiguousarray(out.numpy(), dtype=np.float32)


def _frame_lengths(cfg: FeatureConfig) -> tuple[int, int]:
    """``(n_fft, hop_length)`` in samples at ``cfg.sample_rate``."""
    n_fft = max(2, int(round(cfg.win_ms * cfg.sample_rate / 1000.0)))
    hop = max(1, int(round(cfg.hop_ms * cfg.sample_rate / 1000.0)))
    return n_fft, hop


@functools.lru_cache(maxsize=16)
def _transform(sample_rate: int, kind: str, n_mfcc: int, n_mels: int, n_fft: int, hop: int) -> torch.nn.Module:
    """The (cached) torchaudio transform for one configuration."""
    if kind == "mfcc":
        melkwargs = {"n_fft": n_fft, "win_length": n_fft, "hop_length": hop, "n_mels": max(n_mels, n_mfcc)}
        return torchaudio.transforms.MFCC(sample_rate=sample_rate, n_mfcc=n_mfcc, melkwargs=melkwargs)
    return torchaudio.transforms.MelSpectrogram(
        sample_rate=sample_rate, n_fft=n_fft, win_length=n_fft, hop_length=hop, n_mels=n_mels
    )


def normalise_time(x: np.ndarray) -> np.ndarray:
    """Per-feature zero mean / unit variance over time of ``x`` (T, F).

    Features whose standard deviation is below 1e-5 (constant ones, e.g. in silence) become exactly 0.
    """
    x = x.astype(np.float64)
    mean = x.mean(axis=0, keepdims=True)
    std = x.std(axis=0, keepdims=True)
    out = (x - mean) / np.maximum(std, _STD_FLOOR)
    out[:, std[0] < _STD_FLOOR] = 0.0  # (near-)constant features: exactly 0, not rounding noise
    return out.astype(np.float32)


def audio_features(wave: np.ndarray, sr: int, cfg: FeatureConfig) -> np.ndarray:
    """Audio features of a mono waveform: float32 ``(T, F)``, ``1 <= T <= cfg.max_audio_frames``.

    ``F`` is ``cfg.n_mfcc`` (``audio="mfcc"``) or ``cfg.n_mels`` (``audio="logmel"``).  The
    waveform is resampled to ``cfg.sample_rate`` first when ``sr`` differs; a clip shorter than
    one window (even an empty one) is zero-padded to one window (so it gives
    ``1 + n_fft // hop`` frames: 3 with the defaults), so there are always frames.
    Features are normalised per feature over the kept frames (see the module docstring).
    """
    wave = resample(wave, sr, cfg.sample_rate)
    n_fft, hop = _frame_lengths(cfg)
    if wave.size < n_fft:
        wave = np.pad(wave, (0, n_fft - wave.size))
    transform = _transform(cfg.sample_rate, cfg.audio, cfg.n_mfcc, cfg.n_mels, n_fft, hop)
    with torch.no_grad():
        spec = transform(torch.from_numpy(np.ascontiguousarray(wave)))  # (F, T)
    feats = spec.numpy().T[: cfg.max_audio_frames]
    if cfg.audio == "logmel":
        feats = np.log(feats.astype(np.float64) + LOG_EPS)
    feats = np.nan_to_num(feats, nan=0.0, posinf=0.0, neginf=0.0)
    return np.ascontiguousarray(normalise_time(feats))


# ---------------------------------------------------------------------------------------------
# Video
# ---------------------------------------------------------------------------------------------


def frame_indices(n_frames: int, max_frames: int) -> np.ndarray:
    """Indices of ``min(n_frames, max_frames)`` evenly spaced frames (all of them when they fit)."""
    if n_frames <= max_frames:
        return np.arange(n_frames, dtype=np.int64)
    return np.round(np.linspace(0, n_frames - 1, max_frames)).astype(np.int64)


def _check_frames(frames: np.ndarray) -> np.ndarray:
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be (T, H, W, 3) RGB, got shape {frames.shape}")
    if frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8, got {frames.dtype}")
    if frames.shape[0] == 0:
        raise ValueError("frames must hold at least one frame (got T=0)")
    return frames


def subsample_frames(frames: np.ndarray, cfg: FeatureConfig) -> np.ndarray:
    """At most ``cfg.max_video_frames`` evenly spaced frames of uint8 ``(T, H, W, 3)`` frames."""
    frames = _check_frames(frames)
    return np.ascontiguousarray(frames[frame_indices(frames.shape[0], cfg.max_video_frames)])


def frame_features(frames: np.ndarray, cfg: FeatureConfig) -> np.ndarray:
    """Video features of uint8 RGB frames ``(T, H, W, 3)``: float32 ``(T', C, S, S)``.

    ``T' = min(T, cfg.max_video_frames)`` evenly spaced frames, ``C = cfg.channels``,
    ``S = cfg.image_size``; pixels scaled to [0, 1], grayscale by BT.601 luminance when ``C == 1``,
    resized with antialiased bilinear interpolation and normalised with :data:`GRAY_MEAN` /
    :data:`GRAY_STD` (C = 1) or :data:`RGB_MEAN` / :data:`RGB_STD` (C = 3).
    """
    frames = subsample_frames(frames, cfg)
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).to(torch.float32) / 255.0  # (T, 3, H, W)
    if cfg.channels == 1:
        luma = torch.tensor(LUMA, dtype=torch.float32).view(1, 3, 1, 1)
        x = (x * luma).sum(dim=1, keepdim=True)
        mean = torch.tensor([GRAY_MEAN], dtype=torch.float32)
        std = torch.tensor([GRAY_STD], dtype=torch.float32)
    else:
        mean = torch.tensor(RGB_MEAN, dtype=torch.float32)
        std = torch.tensor(RGB_STD, dtype=torch.float32)
    size = cfg.image_size
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    x = (x - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)
    return np.ascontiguousarray(x.numpy(), dtype=np.float32)


# ---------------------------------------------------------------------------------------------
# Raw tensors and the node-side conversion
# ---------------------------------------------------------------------------------------------


def raw_tensors(wave: np.ndarray, frames: np.ndarray, cfg: FeatureConfig, sr: int | None = None) -> dict[str, np.ndarray]:
    """The raw tensors a device sends with ``--send raw``.

    ``{RAW_AUDIO: float32 (N,) waveform resampled from sr (default cfg.sample_rate) to
    cfg.sample_rate, RAW_VIDEO: uint8 (T, H, W, 3) frames subsampled to at most
    cfg.max_video_frames}``.  :func:`to_features` of this equals the features computed directly.
    """
    rate = cfg.sample_rate if sr is None else int(sr)
    return {
        RAW_AUDIO: resample(wave, rate, cfg.sample_rate),
        RAW_VIDEO: subsample_frames(frames, cfg),
    }


def is_raw(tensors: Mapping[str, np.ndarray]) -> bool:
    """Whether ``tensors`` holds raw tensors (``waveform`` / ``frames``) rather than features."""
    return RAW_AUDIO in tensors or RAW_VIDEO in tensors


def to_features(tensors: Mapping[str, np.ndarray], cfg: FeatureConfig, audio: str = AUDIO,
                video: str = VIDEO) -> dict[str, np.ndarray]:
    """Map raw ``{"waveform", "frames"}`` tensors to features ``{audio: (T, F), video: (T, C, S, S)}``.

    ``audio`` / ``video`` name the features: the node's one ``audio``-kind and one ``frames``-kind
    modality (the defaults are the default configuration's ``"audio"`` and ``"video"``). The
    waveform must be at ``cfg.sample_rate`` (as :func:`raw_tensors` makes it).  Tensors that
    already are features (named ``audio`` / ``video``) and any other names are passed through
    unchanged; a dict holding both a raw tensor and its feature (e.g. ``waveform`` and ``audio``)
    is ambiguous and raises ``ValueError``.
    """
    out: dict[str, np.ndarray] = {}
    for raw, feat in ((RAW_AUDIO, audio), (RAW_VIDEO, video)):
        if raw in tensors and feat in tensors:
            raise ValueError(f"tensors hold both raw {raw!r} and feature {feat!r}; send one or the other")
    for name, value in tensors.items():
        if name == RAW_AUDIO:
            out[audio] = audio_features(np.asarray(value, dtype=np.float32), cfg.sample_rate, cfg)
        elif name == RAW_VIDEO:
            out[video] = frame_features(np.asarray(value), cfg)
        else:
            out[name] = value
    return out


__all__ = [
    "AUDIO",
    "FeatureConfig",
    "GRAY_MEAN",
    "GRAY_STD",
    "LUMA",
    "RAW_AUDIO",
    "RAW_VIDEO",
    "RGB_MEAN",
    "RGB_STD",
    "VIDEO",
    "audio_features",
    "frame_features",
    "frame_indices",
    "is_raw",
    "normalise_time",
    "raw_tensors",
    "read_wav",
    "resample",
    "subsample_frames",
    "to_features",
]
