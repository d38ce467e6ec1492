"""CREMA-D (Cao et al. 2014): 7442 acted emotional clips by 91 actors, read from a user's copy.

Two layouts are recognised (``layout="auto"`` picks the preprocessed one when both are present):

``raw`` (the public release)
    ``AudioWAV/{name}.wav`` and ``VideoFlash/{name}.flv`` where ``name`` is
    ``{actor}_{sentence}_{emotion}_{level}``, e.g. ``1001_DFA_ANG_XX`` (actors 1001-1091; emotions
    ANG DIS FEA HAP NEU SAD; levels XX LO MD HI).  The label is the emotion field; frames are decoded
    from the FLV with PyAV at ``fps`` (default 1) frames per second.  The release has no split: by
    default a seeded sample-level split puts ``test_fraction`` (20 %) of the clips in ``test``;
    ``split_mode="actor"`` puts ``test_fraction`` of the *actors* (rounded, at least one on each
    side) and all their clips in ``test`` instead.  The clip list is the union of both folders, so
    a clip with only one of its two files counts as missing.

``preprocessed`` (the layout of public imbalance code)
    ``train.csv`` and ``test.csv`` (in the root or in ``annotations/``), rows ``1088_IOM_NEU_XX,NEU``
    without header (a UTF-8 BOM and CRLF line ends are fine); audio ``AudioWAV/{name}.wav``; frames
    ``Image-01-FPS/{name}/{index:05d}.jpg`` (one per second).  By default the split is the CSV
    files' (``split_mode="default"``); since that split shares actors between train and test,
    ``split_mode="actor"`` pools both files and makes the seeded actor-disjoint split above
    (``"sample"``: a seeded sample-level split of the pool).

Labels: NEU=0, HAP=1, SAD=2, FEA=3, DIS=4, ANG=5 (the order public results use).  A listed clip
whose files are missing (or empty) is dropped and reported in one :class:`MissingFilesWarning`
with the count; ``strict=True`` makes it a ``ValueError``.  Media are decoded lazily, one sample at
a time.
"""

from __future__ import annotations

import csv
import os
import re
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
)
from edge_runtime.core.config import FeatureConfig

EMOTIONS: tuple[str, ...] = ("NEU", "HAP", "SAD", "FEA", "DIS", "ANG")
"""Class names in label order: NEU=0, HAP=1, SAD=2, FEA=3, DIS=4, ANG=5."""
LEVELS: tuple[str, ...] = ("XX", "LO", "MD", "HI")
NAME_RE = re.compile(r"^(?P<actor>\d+)_(?P<sentence>[A-Za-z]+)_(?P<emotion>[A-Za-z]{3})_(?P<level>[A-Za-z]+)$")
"""A clip name ``{actor}_{sentence}_{emotion}_{level}``."""
DEFAULT_TEST_FRACTION = 0.2
"""Share of clips (``split_mode="sample"``) or of actors (``"actor"``) put in ``test`` by a seeded split."""

AUDIO_DIR = "AudioWAV"
VIDEO_DIR = "VideoFlash"
FRAMES_DIR = "Image-01-FPS"
SPLIT_FILES = {"train": "train.csv", "test": "test.csv"}

Layout = Literal["auto", "raw", "preprocessed"]
SplitMode = Literal["default", "sample", "actor"]


@dataclass(frozen=True)
class Clip:
    """One listed clip: its name, label, actor and media paths (video: FLV file or frame folder)."""

    name: str
    label: int
    actor: str
    audio: Path
    video: Path


def parse_name(name: str) -> dict[str, str] | None:
    """The fields of a CREMA-D clip name (``actor``, ``sentence``, ``emotion``, ``level``), or None."""
    m = NAME_RE.match(name)
    if m is None or m["emotion"].upper() not in EMOTIONS:
        return None
    return {k: v.upper() if k != "actor" else v for k, v in m.groupdict().items()}


def _csv_paths(root: Path) -> dict[str, Path] | None:
    """``{"train": path, "test": path}`` of the split CSVs in ``root`` or ``root/annotations``."""
    for folder in (root, root / "annotations"):
        paths = {split: folder / fname for split, fname in SPLIT_FILES.items()}
        if all(p.is_file() for p in paths.values()):
            return paths
    return None


_EXPECTED = (
    f"expected either the raw release ({AUDIO_DIR}/ and {VIDEO_DIR}/ folders) or the common "
    f"preprocessing (train.csv and test.csv, {AUDIO_DIR}/ and {FRAMES_DIR}/)"
)


def _missing_parts(root: Path) -> tuple[list[str], list[str]]:
    """What ``root`` lacks for the raw release and for the preprocessed layout."""
    has_audio = (root / AUDIO_DIR).is_dir()
    raw = [n for n, ok in ((f"{AUDIO_DIR}/", has_audio), (f"{VIDEO_DIR}/", (root / VIDEO_DIR).is_dir())) if not ok]
    pre = [
        n
        for n, ok in (
            ("train.csv + test.csv", _csv_paths(root) is not None),
            (f"{AUDIO_DIR}/", has_audio),
            (f"{FRAMES_DIR}/", (root / FRAMES_DIR).is_dir()),
        )
        if not ok
    ]
    return raw, pre


def detect_layout(root: str | os.PathLike[str], layout: Layout = "auto") -> str:
    """The layout of a CREMA-D copy at ``root``: ``"raw"`` or ``"preprocessed"``.

    ``"auto"`` prefers the preprocessed layout when both are complete.  ``FileNotFoundError`` when
    ``root`` is not a folder; ``ValueError`` naming what is missing when it holds no recognisable
    layout (or not the one asked for).
    """
    if layout not in ("auto", "raw", "preprocessed"):
        raise ValueError(f"layout must be 'auto', 'raw' or 'preprocessed' (got {layout!r})")
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"CREMA-D root {root} does not exist or is not a folder; {_EXPECTED}")
    raw_missing, pre_missing = _missing_parts(root)
    return choose_layout("CREMA-D", root, layout, raw_missing, pre_missing, _EXPECTED)


def available(root: str | None) -> tuple[bool, str]:
    """Whether CREMA-D can be loaded from ``root``, and a human reason (nothing is decoded)."""
    if not root:
        return False, "no --root given"
    path = Path(root)
    if not path.is_dir():
        return False, f"{root}: no such folder"
    raw_missing, pre_missing = _missing_parts(path)
    if not pre_missing:
        return True, f"{root}: preprocessed layout (train.csv/test.csv, {AUDIO_DIR}/, {FRAMES_DIR}/)"
    if not raw_missing:
        return True, f"{root}: raw release layout ({AUDIO_DIR}/, {VIDEO_DIR}/)"
    if f"{AUDIO_DIR}/" in raw_missing and "train.csv + test.csv" in pre_missing:
        return False, f"{root}: no {AUDIO_DIR}/ folder or train.csv found"
    return False, f"{root}: incomplete CREMA-D copy (raw needs {', '.join(raw_missing)}; preprocessed needs {', '.join(pre_missing)})"


def read_split_csv(path: Path) -> list[tuple[str, int]]:
    """Rows ``name,EMOTION`` of a split CSV as ``(name, label)``, in file order.

    A UTF-8 BOM, CRLF line ends, blank lines and a header line are tolerated; an unknown emotion
    raises ``ValueError`` naming the file and line.
    """
    rows: list[tuple[str, int]] = []
    with open(path, encoding="utf-8-sig", newline="") as fh:
        for lineno, row in enumerate(csv.reader(fh), start=1):
            fields = [f.strip() for f in row]
            if not any(fields):
                continue
            if len(fields) < 2:
                raise ValueError(f"{path}:{lineno}: expected 'name,EMOTION' (e.g. 1088_IOM_NEU_XX,NEU), got {','.join(row)!r}")
            name, emotion = fields[0], fields[1].upper()
            if emotion not in EMOTIONS:
                if not rows and parse_name(name) is None:
                    continue  # a header line
                raise ValueError(f"{path}:{lineno}: unknown emotion {fields[1]!r}; expected one of {', '.join(EMOTIONS)}")
            rows.append((name, EMOTIONS.index(emotion)))
    return rows


def seeded_split(names: list[str], groups: list[str] | None, test_fraction: float, seed: int) -> set[str]:
    """The names a seeded split puts in ``test``.

    With ``groups=None`` a sample-level split: ``round(test_fraction * n)`` names.  Otherwise a
    group-disjoint split: ``round(test_fraction * g)`` of the ``g`` distinct groups (at least one
    and at most ``g - 1`` when ``g >= 2``) with all their names.  The permutation is seeded by
    ``seed`` over the sorted names (groups), so it does not depend on listing order.
    """
    rng = np.random.default_rng(seed)
    if groups is None:
        ordered = sorted(set(names))
        n_test = int(round(test_fraction * len(ordered)))
        return {ordered[i] for i in rng.permutation(len(ordered))[:n_test]}
    units = sorted(set(groups))
    n_test = int(round(test_fraction * len(units)))
    if len(units) >= 2:
        n_test = min(max(n_test, 1), len(units) - 1)
    test_groups = {units[i] for i in rng.permutation(len(units))[:n_test]}
    return {n for n, g in zip(names, groups) if g in test_groups}


class CremaD(ClipDataset):
    """CREMA-D from a user's folder (raw release or common preprocessing), one lazy sample at a time."""

    name = "cremad"
    title = "CREMA-D"
    splits: ClassVar[tuple[str, ...]] = ("train", "test")
    num_classes = len(EMOTIONS)

    @classmethod
    def available(cls, root: str | None = None) -> tuple[bool, str]:
        """Whether a CREMA-D copy is at ``root`` (nothing is decoded)."""
        return available(root)

    def __init__(
        self,
        root: str | os.PathLike[str],
        split: Literal["train", "test"] = "train",
        features: FeatureConfig | None = None,
        send: Literal["features", "raw"] = "features",
        strict: bool = False,
        seed: int = 0,
        layout: Layout = "auto",
        split_mode: SplitMode = "default",
        test_fraction: float = DEFAULT_TEST_FRACTION,
        fps: float = 1.0,
    ) -> None:
        """List the clips of ``split`` (no media is decoded here).

        ``split_mode``: ``"default"`` (the CSV split of the preprocessed layout; a seeded
        sample-level split for the raw release), ``"sample"`` (seeded sample-level split) or
        ``"actor"`` (seeded actor-disjoint split); seeded splits put ``test_fraction`` of the
        clips / actors in ``test``.  ``fps`` is the frame rate at which FLV videos are sampled.
        """
        if split not in ("train", "test"):
            raise ValueError(f"CREMA-D has splits 'train' and 'test' only (got {split!r})")
        if send not in ("features", "raw"):
            raise ValueError(f"send must be 'features' or 'raw' (got {send!r})")
        if split_mode not in ("default", "sample", "actor"):
            raise ValueError(f"split_mode must be 'default', 'sample' or 'actor' (got {split_mode!r})")
        if not 0.0 < test_fraction < 1.0:
            raise ValueError(f"test_fraction must be in (0, 1) (got {test_fraction})")
        self.root = Path(root)
        self.split = split
        self.class_names: list[str] = list(EMOTIONS)
        self.features = features if features is not None else FeatureConfig()
        self.send = send
        self.strict = strict
        self.seed = seed
        self.split_mode = split_mode
        self.test_fraction = test_fraction
        self.fps = fps
        self.layout = detect_layout(self.root, layout)
        listed = self._list_raw() if self.layout == "raw" else self._list_preprocessed()
        self._clips = self._drop_missing(listed)
        self._labels = np.array([c.label for c in self._clips], dtype=np.int64)

    # ------------------------------------------------------------------ listing
    def _select(self, rows: list[tuple[str, int]]) -> list[tuple[str, int]]:
        """The rows of ``self.split`` under a seeded split (sample-level or actor-disjoint)."""
        names = [n for n, _ in rows]
        groups = None
        if self.split_mode == "actor":
            groups = []
            for n in names:
                fields = parse_name(n)
                if fields is None:
                    raise ValueError(f"{self.root}: clip name {n!r} is not actor_sentence_emotion_level; cannot split by actor")
                groups.append(fields["actor"])
        test = seeded_split(names, groups, self.test_fraction, self.seed)
        return [(n, y) for n, y in rows if (n in test) == (self.split == "test")]

    def _list_raw(self) -> list[Clip]:
        audio_dir, video_dir = self.root / AUDIO_DIR, self.root / VIDEO_DIR
        stems = {p.stem for p in audio_dir.glob("*.wav")} | {p.stem for p in video_dir.glob("*.flv")}
        rows = []
        for stem in sorted(stems):
            fields = parse_name(stem)
            if fields is not None:  # files with other names are not CREMA-D clips
                rows.append((stem, EMOTIONS.index(fields["emotion"])))
        if not rows:
            raise ValueError(f"{self.root}: no CREMA-D clips ({AUDIO_DIR}/*.wav or {VIDEO_DIR}/*.flv named like 1001_DFA_ANG_XX)")
        return [self._clip(n, y, video_dir / f"{n}.flv") for n, y in self._select(rows)]

    def _list_preprocessed(self) -> list[Clip]:
        paths = _csv_paths(self.root)
        assert paths is not None  # detect_layout checked it
        if self.split_mode == "default":
            rows = read_split_csv(paths[self.split])
        else:
            pooled: dict[str, int] = {}
            for p in paths.values():
                for n, y in read_split_csv(p):
                    pooled.setdefault(n, y)
            rows = self._select(list(pooled.items()))
        seen: set[str] = set()
        clips = []
        for n, y in rows:
            if n not in seen:
                seen.add(n)
                clips.append(self._clip(n, y, self.root / FRAMES_DIR / n))
        return clips

    def _clip(self, name: str, label: int, video: Path) -> Clip:
        fields = parse_name(name)
        return Clip(name, label, fields["actor"] if fields else "", self.root / AUDIO_DIR / f"{name}.wav", video)

    def _missing_path(self, clip: Clip) -> Path | None:
        """The first missing (or empty) media path of ``clip``, or None when all are there."""
        if not clip.audio.is_file() or clip.audio.stat().st_size == 0:
            return clip.audio
        if self.layout == "raw":
            if not clip.video.is_file() or clip.video.stat().st_size == 0:
                return clip.video
        elif not list_jpeg_frames(clip.video):
            return clip.video / "00000.jpg"
        return None

    # ------------------------------------------------------------------ interface
    def load(self, index: int) -> tuple[np.ndarray, int, np.ndarray]:
        """Decode clip ``index``: ``(waveform float32, sample rate, frames uint8 (T, H, W, 3))``."""
        from edge_runtime.core.features import read_wav

        clip = self._clips[index]
        wave, sr = read_wav(clip.audio)
        if self.layout == "raw":
            frames = decode_video(clip.video, fps=self.fps, audio=False).frames
        else:
            frames = load_jpeg_frames(clip.video)
        return wave, sr, frames

    def __repr__(self) -> str:
        return f"CremaD(root={str(self.root)!r}, split={self.split!r}, layout={self.layout!r}, clips={len(self)})"


__all__ = ["Clip", "CremaD", "EMOTIONS", "available", "detect_layout", "parse_name", "read_split_csv", "seeded_split"]
