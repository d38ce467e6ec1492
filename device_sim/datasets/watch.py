"""Watch: shoulder-rehabilitation exercises recorded by a smartwatch IMU (real data, offline).

The data file is ``seglearn/data/watch_dataset.npy`` inside the ``seglearn`` 1.2.5 wheel: 140
recordings of 10 subjects (14 each) doing 7 exercises (PEN, ABD, FEL, IR, ER, TRAP, ROW), each
recording a (T, 6) float64 array at 50 Hz (accelerometer ax, ay, az; gyroscope wx, wy, wz;
T = 947 .. 2618).  The file is located through the installed distribution's metadata; seglearn
itself is never imported.

**Why ``allow_pickle``:** the file is a Python dict saved by ``numpy.save``, i.e. a pickle.  It is
read with ``np.load(..., allow_pickle=True)`` for that reason only: it comes from a pinned wheel
(``seglearn==1.2.5``, the ``watch`` extra) that we trust, found at a fixed path inside that
distribution.  Never point this reader at another file.

A sample is one window of 2 s (100 steps) taken every 1 s (hop 50) within a recording (windows
never straddle two recordings), so a recording of T steps gives ``(T - 100) // 50 + 1`` windows
(4,677 in all).  Two modalities of kind ``series``: ``accel`` (columns 0:3) and ``gyro`` (columns
3:6), each float32 C-contiguous (100, 3).  Every channel is standardised with the mean and standard
deviation of every time step of the *training* subjects' recordings (float64), applied to both
splits; they are :attr:`Watch.mean` / :attr:`Watch.std` (6 channels, ax .. wz).  Labels 0..6.

Splits leave subjects out: ``test`` holds the windows of 2 held-out subjects (chosen from
``seed``, or given with ``--test-subjects 3,7``), ``train`` the other 8.  Every sample's ``meta``
carries ``subject`` (also as ``shard``: the natural shard, one simulated device per subject),
``recording``, ``start`` (first step of the window) and ``side``.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from device_sim.datasets.base import Dataset, Option, file_in_wheel
from edge_runtime.core.sample import Sample

NPY_IN_WHEEL = "seglearn/data/watch_dataset.npy"
INSTALL_HINT = "install it: pip install seglearn==1.2.5 (or the extra: pip install -c constraints.txt -e '.[watch]')"
WINDOW, HOP = 100, 50
TEST_SUBJECTS = 2
MODALITIES = {"accel": slice(0, 3), "gyro": slice(3, 6)}


def npy_path() -> Path:
    """Where the installed ``seglearn`` distribution keeps watch_dataset.npy; FileNotFoundError with the fix otherwise."""
    return file_in_wheel("watch", "seglearn", NPY_IN_WHEEL, "watch_dataset.npy", INSTALL_HINT)


@functools.lru_cache(maxsize=2)
def load_raw(path: str | None = None) -> dict[str, Any]:
    """The file's dict: ``X`` (list of (T, 6) float64), ``y``, ``subject``, ``side``, ``X_labels``, ``y_labels``.

    ``allow_pickle``: the file is a numpy pickle from the pinned seglearn wheel (module docstring).
    """
    raw = np.load(path or npy_path(), allow_pickle=True).item()
    X = [np.asarray(x, dtype=np.float64) for x in raw["X"]]
    if any(x.ndim != 2 or x.shape[1] != 6 for x in X):
        raise ValueError("watch: watch_dataset.npy does not hold (T, 6) recordings; reinstall seglearn==1.2.5")
    return {"X": X, "y": np.asarray(raw["y"], dtype=np.int64), "subject": np.asarray(raw["subject"], dtype=np.int64),
            "side": np.asarray(raw["side"]), "X_labels": list(raw["X_labels"]), "y_labels": list(raw["y_labels"])}


def windows_of(length: int) -> int:
    """Windows of :data:`WINDOW` steps every :data:`HOP` steps in a recording of ``length`` steps."""
    return (length - WINDOW) // HOP + 1 if length >= WINDOW else 0


def available(root: str | None = None) -> tuple[bool, str]:
    """(True, where the data comes from) or (False, why not)."""
    try:
        path = npy_path()
    except FileNotFoundError as err:
        return False, str(err)
    return True, f"smartwatch IMU recordings from {path}"


def parse_subjects(spec: str | None) -> list[int] | None:
    """``"3,7"`` -> [3, 7]; None or empty -> None (choose from the seed)."""
    if spec is None or not str(spec).strip():
        return None
    try:
        ids = sorted({int(x) for x in str(spec).split(",") if x.strip()})
    except ValueError:
        raise ValueError(f"watch: --test-subjects {spec!r}: expected comma-separated subject ids, e.g. 3,7") from None
    return ids or None


class Watch(Dataset):
    """2-s windows of smartwatch accelerometer + gyroscope, 7 shoulder exercises, subject-disjoint splits."""

    name = "watch"
    title = "Watch (seglearn smartwatch IMU, shoulder exercises)"
    splits: ClassVar[tuple[str, ...]] = ("train", "test")
    cli_options: ClassVar[tuple[Option, ...]] = (
        Option("--test-subjects", "held-out subject ids, never streamed, e.g. 3,7 (default: 2 chosen by --seed)", metavar="IDS"),
    )
    num_classes = 7
    #: The split a run evaluates on after its training stream (``device-sim run --eval-split``).
    eval_split: ClassVar[str | None] = "test"
    #: What a natural shard is, for messages (``device-sim run`` gives each device its own).
    shard_noun: ClassVar[str] = "subject"

    @classmethod
    def available(cls, root: str | None = None) -> tuple[bool, str]:
        """Whether the seglearn wheel is installed (``root`` is not used)."""
        return available(root)

    def __init__(self, split: str = "train", seed: int = 0, test_subjects: str | list[int] | None = None) -> None:
        if split not in self.splits:
            raise ValueError(f"watch: split must be 'train' or 'test' (got {split!r})")
        raw = load_raw(str(npy_path()))
        X, y, subject = raw["X"], raw["y"], raw["subject"]
        self.class_names = raw["y_labels"]
        self.channel_names = raw["X_labels"]
        everyone = sorted(int(s) for s in np.unique(subject))
        held = parse_subjects(test_subjects) if not isinstance(test_subjects, list) else sorted(set(test_subjects))
        if held is None:
            rng = np.random.default_rng([seed, 0x3A7C])
            held = sorted(int(s) for s in rng.choice(everyone, size=TEST_SUBJECTS, replace=False))
        unknown = [s for s in held if s not in everyone]
        if unknown:
            raise ValueError(f"watch: --test-subjects: no subject {', '.join(map(str, unknown))}; "
                             f"the subjects are {', '.join(map(str, everyone))}")
        if len(held) >= len(everyone):
            raise ValueError("watch: --test-subjects holds out every subject; leave at least one to stream")
        self.split, self.seed = split, seed
        self.test_subjects = held
        self.train_subjects = [s for s in everyone if s not in held]
        train_recs = [i for i in range(len(X)) if int(subject[i]) in self.train_subjects]
        steps = np.concatenate([X[i] for i in train_recs])
        #: Per-channel mean and std (ax, ay, az, wx, wy, wz) of every time step of the training subjects' recordings.
        self.mean = steps.mean(axis=0)
        self.std = steps.std(axis=0)
        std = np.where(self.std > 0, self.std, 1.0)
        mine = set(self.train_subjects if split == "train" else self.test_subjects)
        recs = [i for i in range(len(X)) if int(subject[i]) in mine]
        self._series = {i: ((X[i] - self.mean) / std).astype(np.float32) for i in recs}
        rec_of, start_of = [], []
        for i in recs:
            n = windows_of(len(X[i]))
            rec_of.append(np.full(n, i, dtype=np.int64))
            start_of.append(np.arange(n, dtype=np.int64) * HOP)
        self._rec = np.concatenate(rec_of) if rec_of else np.zeros(0, dtype=np.int64)
        self._start = np.concatenate(start_of) if start_of else np.zeros(0, dtype=np.int64)
        self._labels = y[self._rec]
        self._subjects = subject[self._rec]
        self._side = raw["side"]
        self.recordings_total = len(X)

    def __len__(self) -> int:
        return len(self._rec)

    def labels(self) -> np.ndarray:
        return self._labels.copy()

    def shards(self) -> np.ndarray:
        """The subject of every index: the natural shard (one simulated device per subject)."""
        return self._subjects.copy()

    def sample(self, index: int, split: str = "train") -> Sample:
        if not 0 <= index < len(self):
            raise IndexError(f"watch: index {index} out of range for {len(self)} samples")
        rec, start = int(self._rec[index]), int(self._start[index])
        window = self._series[rec][start : start + WINDOW]
        tensors = {name: np.ascontiguousarray(window[:, cols]) for name, cols in MODALITIES.items()}
        subject = int(self._subjects[index])
        return Sample(tensors, int(self._labels[index]), split=split, device=self.name, seq=int(index),
                      meta={"subject": subject, "shard": subject, "recording": rec, "start": start,
                            "side": float(self._side[rec])})


__all__ = ["HOP", "MODALITIES", "WINDOW", "Watch", "available", "load_raw", "npy_path", "windows_of"]
