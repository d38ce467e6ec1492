"""AVE, the Audio-Visual Event data set (Tian et al. 2018), read from a user's copy.

Split files (both layouts): ``trainSet.txt``, ``valSet.txt``, ``testSet.txt`` in the root, rows
``Category&VideoID&Quality&StartTime&EndTime`` (e.g. ``Church bell&c---zaDCTaE&good&0&10``) without
header; ``Annotations.txt`` lists every clip in the same format with the header
``Category&VideoID&Quality&StartTime&EndTime``.  A UTF-8 BOM, CRLF line ends, blank lines and a
header line are tolerated in every file.  A split that repeats an id keeps its first row.

Two layouts are recognised (``layout="auto"`` picks the preprocessed one when both are present):

``raw`` (the public release)
    videos ``AVE/{VideoID}.mp4``; audio and frames (``fps`` per second, default 1) are decoded
    with PyAV and cut to ``[StartTime, EndTime)``.
``preprocessed`` (the common preprocessing)
    audio ``Audios/{VideoID}.wav`` (used as it is) and frames
    ``Image-01-FPS-SE/{VideoID}/{index:05d}.jpg`` (already cut to the event, one per second).

Classes are derived from the files (the real set has 28).  With ``class_order="test"`` (default,
the convention of public results) the class index is the order of first appearance in
``testSet.txt``, then of classes not in it by first appearance in ``trainSet.txt``, ``valSet.txt``
and ``Annotations.txt``; ``class_order="alphabetical"`` sorts all class names.  A listed clip whose
files are missing (or empty) is dropped and reported in one :class:`MissingFilesWarning` with the
count; ``strict=True`` makes it a ``ValueError``.  Media are decoded lazily, one sample at a time.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal

import numpy as np

from device_sim.datasets.media import (
    ClipDataset,
    choose_layout,
    decode_video,
    list_jpeg_frames,
    load_jpeg_frames,
    read_split_lines,
)
from edge_runtime.core.config import FeatureConfig

SPLIT_FILES = {"train": "trainSet.txt", "val": "valSet.txt", "test": "testSet.txt"}
ANNOTATIONS = "Annotations.txt"
HEADER = ("Category", "VideoID", "Quality", "StartTime", "EndTime")
VIDEO_DIR = "AVE"
AUDIO_DIR = "Audios"
FRAMES_DIR = "Image-01-FPS-SE"

Layout = Literal["auto", "raw", "preprocessed"]
ClassOrder = Literal["test", "alphabetical"]

_EXPECTED = (
    f"expected the split files {', '.join(SPLIT_FILES.values())} and either the raw release "
    f"({VIDEO_DIR}/{{VideoID}}.mp4) or the common preprocessing ({AUDIO_DIR}/{{VideoID}}.wav and "
    f"{FRAMES_DIR}/{{VideoID}}/00000.jpg ...)"
)


@dataclass(frozen=True)
class Entry:
    """One row of an AVE list file."""

    category: str
    video_id: str
    quality: str
    start: float
    end: float


@dataclass(frozen=True)
class Clip:
    """One listed clip of a split: the row, its label and media paths."""

    entry: Entry
    label: int
    audio: Path
    video: Path

    @property
    def name(self) -> str:
        """The clip's VideoID."""
        return self.entry.video_id


def read_list(path: Path) -> list[Entry]:
    """The rows of an AVE list file (``Category&VideoID&Quality&StartTime&EndTime``) in file order.

    Repeated ids are kept (see :func:`dedupe`); a malformed row raises ``ValueError`` naming the
    file, line and expected format.
    """
    entries: list[Entry] = []
    for lineno, line in read_split_lines(path):
        fields = [f.strip() for f in line.split("&")]
        if tuple(fields) == HEADER:
            continue
        if len(fields) != 5:
            raise ValueError(f"{path}:{lineno}: expected 5 '&'-separated fields {'&'.join(HEADER)}, got {line!r}")
        try:
            start, end = float(fields[3]), float(fields[4])
        except ValueError:
            raise ValueError(f"{path}:{lineno}: StartTime and EndTime must be numbers, got {line!r}") from None
        if end <= start:
            raise ValueError(f"{path}:{lineno}: EndTime ({end}) must be after StartTime ({start})")
        entries.append(Entry(fields[0], fields[1], fields[2], start, end))
    return entries


def dedupe(entries: list[Entry]) -> list[Entry]:
    """``entries`` with each VideoID kept only at its first row."""
    seen: set[str] = set()
    out = []
    for e in entries:
        if e.video_id not in seen:
            seen.add(e.video_id)
            out.append(e)
    return out


def class_names_of(lists: dict[str, list[Entry]], order: ClassOrder = "test") -> list[str]:
    """Class names derived from the list files (``{"test": [...], "train": [...], ...}``).

    ``"test"``: first appearance in the test list, then train, val and annotations lists;
    ``"alphabetical"``: sorted.
    """
    names: list[str] = []
    seen: set[str] = set()
    for key in ("test", "train", "val", "annotations"):
        for e in lists.get(key, []):
            if e.category not in seen:
                seen.add(e.category)
                names.append(e.category)
    if order == "alphabetical":
        return sorted(names)
    if order != "test":
        raise ValueError(f"class_order must be 'test' or 'alphabetical' (got {order!r})")
    return names


def _missing_parts(root: Path) -> tuple[list[str], list[str], list[str]]:
    """What ``root`` lacks: split files, raw-release parts, preprocessed parts."""
    splits = [f for f in SPLIT_FILES.values() if not (root / f).is_file()]
    raw = [] if (root / VIDEO_DIR).is_dir() else [f"{VIDEO_DIR}/"]
    pre = [f"{d}/" for d in (AUDIO_DIR, FRAMES_DIR) if not (root / d).is_dir()]
    return splits, raw, pre


def detect_layout(root: str | os.PathLike[str], layout: Layout = "auto") -> str:
    """The layout of an AVE copy at ``root``: ``"raw"`` or ``"preprocessed"``.

    ``"auto"`` prefers the preprocessed layout when both are present.  ``FileNotFoundError`` when
    ``root`` is not a folder; ``ValueError`` naming what is missing otherwise.
    """
    if layout not in ("auto", "raw", "preprocessed"):
        raise ValueError(f"layout must be 'auto', 'raw' or 'preprocessed' (got {layout!r})")
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"AVE root {root} does not exist or is not a folder; {_EXPECTED}")
    splits, raw, pre = _missing_parts(root)
    if len(splits) == len(SPLIT_FILES):
        raise ValueError(f"{root}: no AVE split files ({', '.join(SPLIT_FILES.values())}) found; {_EXPECTED}")
    return choose_layout("AVE", root, layout, raw, pre, _EXPECTED)


def available(root: str | None) -> tuple[bool, str]:
    """Whether AVE can be loaded from ``root``, and a human reason (nothing is decoded)."""
    if not root:
        return False, "no --root given"
    path = Path(root)
    if not path.is_dir():
        return False, f"{root}: no such folder"
    try:
        layout = detect_layout(path)
    except ValueError:
        splits, raw, pre = _missing_parts(path)
        if len(splits) == len(SPLIT_FILES):
            return False, f"{root}: no trainSet.txt/valSet.txt/testSet.txt found"
        return False, f"{root}: no {VIDEO_DIR}/ folder or {AUDIO_DIR}/ + {FRAMES_DIR}/ folders found"
    return True, f"{root}: {layout} layout"


class AVE(ClipDataset):
    """AVE from a user's folder (raw release or common preprocessing), one lazy sample at a time."""

    name = "ave"
    title = "AVE"
    splits: ClassVar[tuple[str, ...]] = tuple(SPLIT_FILES)

    @classmethod
    def available(cls, root: str | None = None) -> tuple[bool, str]:
        """Whether an AVE copy is at ``root`` (nothing is decoded)."""
        return available(root)

    def __init__(
        self,
        root: str | os.PathLike[str],
        split: Literal["train", "val", "test"] = "train",
        features: FeatureConfig | None = None,
        send: Literal["features", "raw"] = "features",
        strict: bool = False,
        seed: int = 0,
        layout: Layout = "auto",
        class_order: ClassOrder = "test",
        fps: float = 1.0,
    ) -> None:
        """List the clips of ``split`` from its split file (no media is decoded here).

        ``seed`` is accepted for the common data-set interface; AVE's splits are the official
        files, so nothing is random.  ``fps`` is the frame rate at which MP4 videos are sampled.
        """
        if split not in SPLIT_FILES:
            raise ValueError(f"AVE has splits {', '.join(SPLIT_FILES)} (got {split!r})")
        if send not in ("features", "raw"):
            raise ValueError(f"send must be 'features' or 'raw' (got {send!r})")
        if class_order not in ("test", "alphabetical"):
            raise ValueError(f"class_order must be 'test' or 'alphabetical' (got {class_order!r})")
        self.root = Path(root)
        self.split = split
        self.features = features if features is not None else FeatureConfig()
        self.send = send
        self.strict = strict
        self.seed = seed
        self.fps = fps
        self.class_order = class_order
        self.layout = detect_layout(self.root, layout)
        split_path = self.root / SPLIT_FILES[split]
        if not split_path.is_file():
            raise FileNotFoundError(f"{split_path}: AVE split file for {split!r} not found; {_EXPECTED}")
        lists = {k: read_list(self.root / f) for k, f in SPLIT_FILES.items() if (self.root / f).is_file()}
        if (self.root / ANNOTATIONS).is_file():
            lists["annotations"] = read_list(self.root / ANNOTATIONS)
        self.class_names: list[str] = class_names_of(lists, class_order)
        self.num_classes = len(self.class_names)
        index = {c: i for i, c in enumerate(self.class_names)}
        listed = [self._clip(e, index[e.category]) for e in dedupe(lists[split])]
        self._clips = self._drop_missing(listed)
        self._labels = np.array([c.label for c in self._clips], dtype=np.int64)

    # ------------------------------------------------------------------ listing
    def _clip(self, entry: Entry, label: int) -> Clip:
        if self.layout == "raw":
            video = self.root / VIDEO_DIR / f"{entry.video_id}.mp4"
            return Clip(entry, label, video, video)
        return Clip(entry, label, self.root / AUDIO_DIR / f"{entry.video_id}.wav", self.root / FRAMES_DIR / entry.video_id)

    def _missing_path(self, clip: Clip) -> Path | None:
        """The first missing (or empty) media path of ``clip``, or None when all are there."""
        if not clip.audio.is_file() or clip.audio.stat().st_size == 0:
            return clip.audio
        if self.layout == "preprocessed" and not list_jpeg_frames(clip.video):
            return clip.video / "00000.jpg"
        return None

    # ------------------------------------------------------------------ interface
    def load(self, index: int) -> tuple[np.ndarray, int, np.ndarray]:
        """Decode clip ``index``: ``(waveform float32, sample rate, frames uint8 (T, H, W, 3))``.

        Raw layout: both cut to ``[StartTime, EndTime)``; sample rate 0 when the video has no audio.
        """
        clip = self._clips[index]
        if self.layout == "raw":
            media = decode_video(clip.video, fps=self.fps, start_s=clip.entry.start, end_s=clip.entry.end)
            return media.wave, media.sample_rate, media.frames
        from edge_runtime.core.features import read_wav

        wave, sr = read_wav(clip.audio)
        return wave, sr, load_jpeg_frames(clip.video)

    def __repr__(self) -> str:
        return f"AVE(root={str(self.root)!r}, split={self.split!r}, layout={self.layout!r}, clips={len(self)})"


__all__ = ["AVE", "Clip", "Entry", "available", "class_names_of", "dedupe", "detect_layout", "read_list"]
