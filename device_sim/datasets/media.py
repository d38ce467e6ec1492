"""Media helpers for the real data sets: JPEG frame folders (Pillow) and video files (PyAV).

* :func:`list_jpeg_frames` / :func:`load_jpeg_frames`: the frames of a folder such as
  ``Image-01-FPS/{clip}/00000.jpg, 00001.jpg, ...``, sorted by file name, as uint8 ``(T, H, W, 3)``
  RGB.
* :class:`ClipDataset`, :func:`report_missing`, :func:`media_tensors`, :func:`read_split_lines`:
  shared by the CREMA-D and AVE readers (their common interface and command-line options, one
  warning for missing files, the tensors to send, split-file lines).
* :func:`decode_video`: an FLV or MP4 file decoded with PyAV into a float32 mono waveform (channels
  averaged) with its sample rate, and uint8 RGB frames sampled at ``fps`` frames per second
  (default 1, as the common preprocessing extracts them), optionally cut to ``[start_s, end_s)``.

Frame sampling: the sampling times are ``start + k / fps`` for ``k = 0, 1, ...`` while below the
end of the cut (or of the video), and each time takes the decoded frame whose presentation time is
nearest to it.  A 4 s clip cut to ``[1, 3)`` therefore gives the frames at 1 s and 2 s.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Iterator

import numpy as np

from device_sim.datasets.base import Dataset, MissingFilesWarning, Option
from edge_runtime.core.config import FeatureConfig, load_config
from edge_runtime.core.sample import Sample

JPEG_SUFFIXES = (".jpg", ".jpeg")


def list_jpeg_frames(folder: str | os.PathLike[str]) -> list[Path]:
    """The JPEG files (``.jpg`` / ``.jpeg``, any case) directly in ``folder``, sorted by name.

    Returns an empty list when ``folder`` does not exist or is not a directory.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted((p for p in folder.iterdir() if p.suffix.lower() in JPEG_SUFFIXES and p.is_file()), key=lambda p: p.name)


def load_jpeg_frames(folder: str | os.PathLike[str]) -> np.ndarray:
    """The JPEG frames of ``folder`` (sorted by name) as uint8 RGB ``(T, H, W, 3)``.

    Frames whose size differs from the first one are resized to it (bilinear).  Raises
    ``FileNotFoundError`` naming the folder when it holds no JPEG frame.
    """
    from PIL import Image

    paths = list_jpeg_frames(folder)
    if not paths:
        raise FileNotFoundError(f"no JPEG frames (*.jpg) in {os.fspath(folder)}")
    frames: list[np.ndarray] = []
    size: tuple[int, int] | None = None
    for path in paths:
        with Image.open(path) as img:
            img = img.convert("RGB")
            if size is None:
                size = img.size
            elif img.size != size:
                img = img.resize(size, Image.BILINEAR)
            frames.append(np.asarray(img, dtype=np.uint8))
    return np.ascontiguousarray(np.stack(frames))


@dataclass
class DecodedMedia:
    """What :func:`decode_video` returns.

    ``wave``: float32 mono ``(N,)`` (empty when the file has no audio or audio was not asked for);
    ``sample_rate``: its rate in Hz (0 when there is no audio); ``frames``: uint8 RGB
    ``(T, H, W, 3)`` (``T = 0`` when video was not asked for); ``times``: the presentation time
    (seconds from the start of the file) of each returned frame.
    """

    wave: np.ndarray
    sample_rate: int
    frames: np.ndarray
    times: np.ndarray


def _stream_start(stream) -> float:
    """The start time of a PyAV stream in seconds (0 when unknown)."""
    if stream.start_time is None or stream.time_base is None:
        return 0.0
    return float(stream.start_time * stream.time_base)


def _decode_audio(container, start_s: float, end_s: float | None) -> tuple[np.ndarray, int]:
    import av

    stream = container.streams.audio[0]
    origin = _stream_start(stream)
    resampler = av.AudioResampler(format="fltp")  # planar float32, channel layout and rate kept
    chunks: list[np.ndarray] = []
    sr = 0
    first_time: float | None = None
    for frame in container.decode(stream):
        if first_time is None and frame.time is not None:
            first_time = float(frame.time) - origin
        for out in resampler.resample(frame):
            sr = int(out.sample_rate)
            chunks.append(out.to_ndarray().astype(np.float32).mean(axis=0))
    for out in resampler.resample(None):
        sr = int(out.sample_rate)
        chunks.append(out.to_ndarray().astype(np.float32).mean(axis=0))
    if not chunks or sr == 0:
        return np.zeros(0, dtype=np.float32), int(stream.rate or 0)
    wave = np.concatenate(chunks).astype(np.float32)
    offset = max(0.0, first_time or 0.0)  # time of the first decoded sample
    lo = max(0, int(round((start_s - offset) * sr)))
    hi = wave.size if end_s is None else max(lo, int(round((end_s - offset) * sr)))
    return np.ascontiguousarray(wave[lo:hi]), sr


def _decode_frames(container, fps: float, start_s: float, end_s: float | None) -> tuple[np.ndarray, np.ndarray]:
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    origin = _stream_start(stream)
    step = 1.0 / fps
    picked: list[np.ndarray] = []
    times: list[float] = []
    k = 0
    prev: tuple[float, object] | None = None
    last: tuple[float, object] | None = None
    frame_dur = 0.0
    for frame in container.decode(stream):
        if frame.time is None:
            continue
        t = float(frame.time) - origin
        if last is not None and t > last[0]:
            frame_dur = t - last[0]
        last = (t, frame)
        while True:
            target = start_s + k * step
            if end_s is not None and target >= end_s - 1e-9:
                break
            if t < target:
                break
            # the frame nearest to ``target``: the previous one or this one
            chosen = prev if prev is not None and target - prev[0] < t - target else (t, frame)
            picked.append(chosen[1].to_ndarray(format="rgb24"))
            times.append(chosen[0])
            k += 1
        prev = (t, frame)
    if last is not None:
        # sampling times after the last frame's time but still within the video (or the cut)
        video_end = last[0] + (frame_dur if frame_dur > 0 else step)
        stop = video_end if end_s is None else min(end_s, video_end)
        while start_s + k * step < stop - 1e-9:
            picked.append(last[1].to_ndarray(format="rgb24"))
            times.append(last[0])
            k += 1
        if not picked:
            # a cut that falls between frames (or after the end): keep the nearest frame
            picked.append(last[1].to_ndarray(format="rgb24"))
            times.append(last[0])
    if not picked:
        return np.zeros((0, 0, 0, 3), dtype=np.uint8), np.zeros(0)
    return np.ascontiguousarray(np.stack(picked)), np.asarray(times, dtype=np.float64)


def decode_video(
    path: str | os.PathLike[str],
    fps: float = 1.0,
    start_s: float | None = None,
    end_s: float | None = None,
    audio: bool = True,
    video: bool = True,
) -> DecodedMedia:
    """Decode ``path`` (FLV, MP4, ...) with PyAV: mono waveform, and frames at ``fps`` per second.

    ``start_s`` / ``end_s`` cut both the audio and the frames to ``[start_s, end_s)`` seconds from
    the start of the file.  ``audio=False`` / ``video=False`` skip a stream.  A file with no audio
    stream gives an empty waveform; asking for video from a file without a video stream (or with
    no decodable frame) raises ``ValueError`` naming the file.
    """
    import av

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"video file not found: {path}")
    if fps <= 0:
        raise ValueError(f"fps must be positive (got {fps})")
    start = 0.0 if start_s is None else max(0.0, float(start_s))
    end = None if end_s is None else float(end_s)
    if end is not None and end <= start:
        raise ValueError(f"empty cut [{start}, {end}) for {path}: end must be after start")
    wave, sr = np.zeros(0, dtype=np.float32), 0
    frames, times = np.zeros((0, 0, 0, 3), dtype=np.uint8), np.zeros(0)
    try:
        if audio:
            with av.open(str(path)) as container:
                if container.streams.audio:
                    wave, sr = _decode_audio(container, start, end)
        if video:
            with av.open(str(path)) as container:
                if not container.streams.video:
                    raise ValueError(f"{path}: no video stream")
                frames, times = _decode_frames(container, fps, start, end)
            if frames.shape[0] == 0:
                raise ValueError(f"{path}: no decodable video frame")
    except av.error.FFmpegError as exc:
        raise ValueError(f"{path}: cannot decode ({exc})") from exc
    return DecodedMedia(wave=wave, sample_rate=sr, frames=frames, times=times)




# ---------------------------------------------------------------------------------------------
# Shared by the real data sets (CREMA-D, AVE)
# ---------------------------------------------------------------------------------------------


def choose_layout(title: str, root: Path, layout: str, raw_missing: list[str], pre_missing: list[str], expected: str) -> str:
    """``"preprocessed"`` or ``"raw"`` for a root lacking ``raw_missing`` / ``pre_missing`` parts.

    ``layout="auto"`` prefers the preprocessed layout when both are complete; a ValueError names
    what is missing when the asked-for (or any) layout is incomplete.
    """
    if layout in ("auto", "preprocessed") and not pre_missing:
        return "preprocessed"
    if layout in ("auto", "raw") and not raw_missing:
        return "raw"
    if layout == "preprocessed":
        raise ValueError(f"{root}: not a preprocessed {title} copy: missing {', '.join(pre_missing)}; {expected}")
    if layout == "raw":
        raise ValueError(f"{root}: not a raw {title} release: missing {', '.join(raw_missing)}; {expected}")
    raise ValueError(
        f"{root}: no {title} layout found: the raw release lacks {', '.join(raw_missing)}, the "
        f"preprocessed layout lacks {', '.join(pre_missing)}; {expected}"
    )


def report_missing(dataset: str, split: str, missing: list[tuple[str, Path]], strict: bool) -> None:
    """Report listed clips whose files are missing: ONE warning, or ``ValueError`` when ``strict``.

    ``missing`` holds ``(clip name, first missing or empty path)`` pairs.  Nothing happens when it
    is empty.  The message names the count, a few example clips and the first missing path.
    """
    if not missing:
        return
    count = len(missing)
    name, path = missing[0]
    if strict:
        raise ValueError(
            f"{dataset} ({split}): {count} listed clip(s) have missing or empty files; the first is "
            f"{path} (clip {name}). Restore the files, remove the clips from the list, or run without "
            f"--strict to drop them with a warning."
        )
    examples = ", ".join(n for n, _ in missing[:3]) + (", ..." if count > 3 else "")
    warnings.warn(
        f"{dataset} ({split}): dropped {count} listed clip(s) whose files are missing or empty "
        f"(e.g. {examples}; first missing file {path}); pass strict=True / --strict to make this an error",
        MissingFilesWarning,
        stacklevel=4,
    )


def media_tensors(
    wave: np.ndarray, sample_rate: int, frames: np.ndarray, cfg: FeatureConfig, send: str
) -> dict[str, np.ndarray]:
    """The tensors a device sends for one clip: features (``send="features"``) or raw tensors.

    Features are ``{"audio": (T, F), "video": (T, C, S, S)}`` float32; raw tensors are
    ``{"waveform": float32 at cfg.sample_rate, "frames": uint8 (T, H, W, 3)}`` (see
    :mod:`edge_runtime.core.features`).  A clip without audio (``sample_rate == 0``) gets an empty
    waveform at ``cfg.sample_rate``.
    """
    from edge_runtime.core.features import AUDIO, VIDEO, audio_features, frame_features, raw_tensors  # torch: only when a clip is decoded

    sr = int(sample_rate) if sample_rate else cfg.sample_rate
    if send == "raw":
        return raw_tensors(wave, frames, cfg, sr=sr)
    if send == "features":
        return {AUDIO: audio_features(wave, sr, cfg), VIDEO: frame_features(frames, cfg)}
    raise ValueError(f"send must be 'features' or 'raw' (got {send!r})")


def read_split_lines(path: Path) -> list[tuple[int, str]]:
    """Non-empty lines of a text file as ``(line number, stripped text)``.

    Handles a UTF-8 byte-order mark and CRLF / LF line ends.
    """
    with open(path, encoding="utf-8-sig", newline=None) as fh:
        return [(i, line.strip()) for i, line in enumerate(fh, start=1) if line.strip()]


__all__ = [
    "CONFIG_OPTION",
    "ClipDataset",
    "DecodedMedia",
    "JPEG_SUFFIXES",
    "MissingFilesWarning",
    "decode_video",
    "list_jpeg_frames",
    "load_jpeg_frames",
    "media_tensors",
    "read_split_lines",
    "report_missing",
    "ROOT_OPTION",
    "SEND_OPTION",
    "STRICT_OPTION",
]


#: ``--root DIR``: the folder of the user's copy of a data set (required).
ROOT_OPTION = Option("--root", "folder of your copy (raw release or common preprocessing layout)", metavar="DIR",
                     required=True, missing="point it at your copy of the data set (see docs/datasets.md, 'Real data sets')")
#: ``--send``: what a device sends for a clip.
SEND_OPTION = Option("--send", "send model features, or raw waveform + frames that the node turns into the same features",
                     default="features", choices=("features", "raw"))
#: ``--strict``: a listed clip without its files stops the run.
STRICT_OPTION = Option("--strict", "a listed clip with missing files is an error, not a warning", switch=True)
#: ``--config``: where the feature options come from.
CONFIG_OPTION = Option("--config", "YAML whose features: section sets MFCC / frame options (default: configs defaults)")


class ClipDataset(Dataset):
    """Shared behaviour of the folder-backed data sets: lazy per-clip decoding into samples.

    Subclasses set ``name``, ``title`` (for messages), ``splits``, ``self._clips`` (objects with
    ``label`` and ``name``), ``self._labels``, ``self.split``, ``self.features``, ``self.send``,
    ``num_classes``, and implement ``load(index) -> (waveform, sample rate, frames uint8 (T, H, W, 3))``.
    Their constructor takes ``(root, split=, features=, send=, strict=, seed=, ...)``.
    """

    name = "clips"
    title = "clips"
    cli_options: ClassVar[tuple[Option, ...]] = (ROOT_OPTION, SEND_OPTION, STRICT_OPTION, CONFIG_OPTION)

    @classmethod
    def from_options(cls, *, split: str = "train", seed: int = 0, samples: int | None = None, root: str | None = None,
                     config: str | None = None, **options: Any) -> ClipDataset:
        """The clips of ``split`` in the copy at ``root`` (required).

        ``config``: a YAML file whose ``features:`` section gives the feature options (instead of
        ``features=``; neither: the defaults).  ``samples`` is ignored (the caller cuts the stream);
        other keywords (``send``, ``strict``, ``layout``, ...) go to the constructor.
        """
        cls.check_required({"root": root})
        if config is not None:
            if "features" in options:
                raise ValueError(f"{cls.name}: give config or features, not both")
            options["features"] = load_config(config).features
        return cls(root, split=split, seed=seed, **options)  # type: ignore[call-arg]

    def __len__(self) -> int:
        return len(self._clips)

    def labels(self) -> np.ndarray:
        """Labels of all clips (int64), without decoding any media."""
        return self._labels.copy()

    def load(self, index: int) -> tuple[np.ndarray, int, np.ndarray]:  # pragma: no cover - interface
        raise NotImplementedError

    def _missing_path(self, clip: Any) -> Path | None:  # pragma: no cover - interface
        """The first missing (or empty) media path of ``clip``, or None when all are there."""
        raise NotImplementedError

    def _drop_missing(self, clips: list) -> list:
        """``clips`` without those whose files are missing, reported once (or an error when strict)."""
        kept, missing = [], []
        for clip in clips:
            path = self._missing_path(clip)
            if path is None:
                kept.append(clip)
            else:
                missing.append((clip.name, path))
        report_missing(self.title, self.split, missing, self.strict)
        return kept

    @property
    def clips(self) -> list:
        """The clips of this split, in stream-index order."""
        return list(self._clips)

    def sample(self, index: int, split: str = "train") -> Sample:
        """Clip ``index`` as a :class:`Sample` (features or raw tensors, per ``send``)."""
        if not 0 <= index < len(self._clips):
            raise IndexError(f"index {index} out of range for {self.title} {self.split} ({len(self._clips)} clips)")
        wave, sr, frames = self.load(index)
        clip = self._clips[index]
        return Sample(
            tensors=media_tensors(wave, sr, frames, self.features, self.send),
            label=clip.label,
            split=split,
            device=self.name,
            seq=int(index),
            meta={"clip": clip.name},
        )

    def __getitem__(self, index: int) -> Sample:
        n = len(self._clips)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for {self.title} {self.split} ({n} clips)")
        return self.sample(index % n)

    def __iter__(self) -> Iterator[Sample]:
        for i in range(len(self._clips)):
            yield self.sample(i)
