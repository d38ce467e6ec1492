"""Stream orders: in which order a device replays the samples of a data set.

A scenario turns the labels of a data set into an order of sample indices (and, for
class-incremental streams, the task each position belongs to).  The data set itself is only
asked for ``sample(i)`` when the stream reaches position i, so nothing is held in memory.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Protocol

import numpy as np

from edge_runtime.core.sample import Sample


class IndexedDataset(Protocol):
    def __len__(self) -> int: ...
    def sample(self, index: int) -> Sample: ...
    def labels(self) -> np.ndarray: ...


@dataclass
class StreamOrder:
    """Sample indices in stream order, the task id of each position, and each task's classes."""

    indices: np.ndarray
    task_of: np.ndarray
    task_classes: list[list[int]]


def iid(labels: np.ndarray, seed: int = 0) -> StreamOrder:
    """Uniformly shuffled order; one task holding every class."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(labels))
    return StreamOrder(order, np.zeros(len(order), dtype=np.int64), [sorted(int(c) for c in np.unique(labels))])


def class_incremental(labels: np.ndarray, classes_per_task: int, seed: int = 0) -> StreamOrder:
    """Tasks of ``classes_per_task`` classes in a seeded class order; samples shuffled within a task."""
    if classes_per_task < 1:
        raise ValueError(f"classes_per_task must be at least 1 (got {classes_per_task})")
    rng = np.random.default_rng(seed)
    classes = rng.permutation(np.unique(labels))
    tasks = [sorted(int(c) for c in classes[i : i + classes_per_task]) for i in range(0, len(classes), classes_per_task)]
    parts, task_ids = [], []
    for t, cls in enumerate(tasks):
        idx = np.flatnonzero(np.isin(labels, cls))
        parts.append(rng.permutation(idx))
        task_ids.append(np.full(len(idx), t, dtype=np.int64))
    return StreamOrder(np.concatenate(parts), np.concatenate(task_ids), tasks)


def blurry(labels: np.ndarray, classes_per_task: int, blur: float, seed: int = 0) -> StreamOrder:
    """Class-incremental with blurred task boundaries (the "blurry" setting of online CL).

    Starting from :func:`class_incremental`, ``m_t = floor(blur * n_t)`` positions of every task t
    are chosen at random; the samples at all chosen positions are pooled, shuffled and put back
    into the chosen positions, then each task's segment is shuffled.  A task's segment keeps its
    size, and at most ``blur`` of it (its ``m_t`` positions) holds samples of other tasks' classes.
    ``task_of`` stays the segment's task.
    """
    if not 0.0 <= blur <= 1.0:
        raise ValueError(f"blur must be in [0, 1] (got {blur})")
    base = class_incremental(labels, classes_per_task, seed)
    rng = np.random.default_rng([seed, 0xB1])
    indices = base.indices.copy()
    chosen = []
    for t in range(len(base.task_classes)):
        seg = np.flatnonzero(base.task_of == t)
        chosen.append(rng.choice(seg, size=int(np.floor(blur * len(seg))), replace=False))
    slots = np.concatenate(chosen) if chosen else np.zeros(0, dtype=np.int64)
    indices[slots] = indices[rng.permutation(slots)]
    for t in range(len(base.task_classes)):
        seg = np.flatnonzero(base.task_of == t)
        indices[seg] = indices[rng.permutation(seg)]
    return StreamOrder(indices, base.task_of, base.task_classes)


def gradual(labels: np.ndarray, classes_per_task: int, width: float, seed: int = 0) -> StreamOrder:
    """Class-incremental with gradual drift between tasks.

    Every sample of task t gets a time ``t + U(0, 1) + U(-width/2, width/2)`` (a trapezoid with
    linear flanks of length ``width``) and the stream is sorted by time.  ``width = 0`` is the sharp class-incremental stream; with ``width = w`` (in task
    lengths, at most 1) each boundary becomes a transition of length w over which the share of the
    next task's samples grows linearly from 0 to 1, while the middle ``1 - w`` of every task holds
    only its own classes.  ``task_of`` is the task the sample belongs to.
    """
    if not 0.0 <= width <= 1.0:
        raise ValueError(f"width must be in [0, 1] (got {width})")
    base = class_incremental(labels, classes_per_task, seed)
    rng = np.random.default_rng([seed, 0x6D])
    n = len(base.indices)
    time_of = base.task_of + rng.uniform(0.0, 1.0, size=n) + rng.uniform(-width / 2, width / 2, size=n)
    order = np.argsort(time_of, kind="stable")
    return StreamOrder(base.indices[order], base.task_of[order], base.task_classes)


SCENARIOS = ("iid", "class-incremental", "blurry", "gradual")


def make_order(name: str, labels: np.ndarray, seed: int = 0, classes_per_task: int = 2, blur: float = 0.1,
               drift_width: float = 0.3) -> StreamOrder:
    """The stream order of scenario ``name`` (one of :data:`SCENARIOS`)."""
    if name == "iid":
        return iid(labels, seed)
    if name == "class-incremental":
        return class_incremental(labels, classes_per_task, seed)
    if name == "blurry":
        return blurry(labels, classes_per_task, blur, seed)
    if name == "gradual":
        return gradual(labels, classes_per_task, drift_width, seed)
    raise ValueError(f"unknown scenario {name!r}; choose one of {list(SCENARIOS)}")


def assign_devices(stream_labels: np.ndarray, devices: int, skew: float = 0.0, seed: int = 0) -> np.ndarray:
    """Device index (0 .. devices-1) of every stream position: each UAV sees its own region.

    Classes get home devices round-robin (class c -> c mod devices).  A sample goes to its class's
    home device with probability ``skew``, otherwise to device ``position mod devices``, so
    ``skew = 0`` deals the stream out round-robin (device k replays positions k, k+n, ...) and
    ``skew = 1`` gives each device only its home classes.
    """
    if devices < 1:
        raise ValueError(f"devices must be at least 1 (got {devices})")
    if not 0.0 <= skew <= 1.0:
        raise ValueError(f"skew must be in [0, 1] (got {skew})")
    rng = np.random.default_rng([seed, 0x5A])
    home = np.asarray(stream_labels, dtype=np.int64) % devices
    dealt = np.arange(len(home)) % devices
    return np.where(rng.random(len(home)) < skew, home, dealt)


def eval_mask(n: int, every: int | None) -> np.ndarray:
    """Interleaved eval split: True at every ``every``-th position (the 10th, 20th, ... for 10)."""
    mask = np.zeros(n, dtype=bool)
    if every:
        if every < 2:
            raise ValueError(f"eval every must be at least 2 (got {every})")
        mask[every - 1 :: every] = True
    return mask


CORRUPTIONS = ("noise", "occlusion", "drop", "degrade")
#: ``degrade``'s noise (times the tensor's std) per modality, calibrated on AV-Digits so that the
#: degraded modality's unimodal accuracy falls to about 50-60 % (docs/datasets.md, "Streams where modalities
#: are unequal"); other kinds default to 2.0.
DEGRADE_STRENGTH = {"video": 1.0, "audio": 1.0}
#: ``degrade``'s block size: video frames are averaged over blocks of this many pixels per side,
#: audio over this many time steps (then repeated back to the original shape).
DEGRADE_BLOCK = {"video": 2, "audio": 4}


def _block_average(x: np.ndarray, block: int, axes: tuple[int, ...]) -> np.ndarray:
    """Average ``x`` over blocks of ``block`` along each of ``axes`` and repeat back (a coarser copy, same shape)."""
    out = x
    for ax in axes:
        n = out.shape[ax]
        pad = (-n) % block
        if pad:
            widths = [(0, 0)] * out.ndim
            widths[ax] = (0, pad)
            out = np.pad(out, widths, mode="edge")
        shape = out.shape[:ax] + (out.shape[ax] // block, block) + out.shape[ax + 1 :]
        out = np.repeat(out.reshape(shape).mean(axis=ax + 1), block, axis=ax)
        out = np.take(out, np.arange(n), axis=ax)
    return out.astype(np.float32)


class Corrupted:
    """Wraps a data set and corrupts one modality of a seeded ``fraction`` of its samples.

    Exactly ``round(fraction * len(dataset))`` indices are corrupted (chosen once by ``seed``),
    creating modality imbalance on purpose:

    * ``noise``: add Gaussian noise of standard deviation ``strength`` times the tensor's own std;
    * ``occlusion``: zero a random block (video: half the height by half the width, a quarter of
      every frame; audio: a contiguous half of the time steps);
    * ``drop``: zero the whole modality (the sensor failed);
    * ``degrade``: a worse sensor: average over blocks (:data:`DEGRADE_BLOCK`: video 2x2 pixels,
      audio 4 time steps), then add Gaussian noise of ``strength`` times the original std
      (default :data:`DEGRADE_STRENGTH`).  With ``fraction=1`` every sample is degraded: a
      weak-modality stream.

    ``strength=None`` takes the kind's default.  The other modality and the label are unchanged; ``meta["corrupted"]`` names what was done.
    """

    def __init__(self, dataset, fraction: float, kind: str = "noise", modality: str = "video", strength: float | None = None,
                 seed: int = 0) -> None:
        if not 0.0 <= fraction <= 1.0:
            raise ValueError(f"corruption fraction must be in [0, 1] (got {fraction})")
        if kind not in CORRUPTIONS:
            raise ValueError(f"corruption kind must be one of {list(CORRUPTIONS)} (got {kind!r})")
        if modality not in ("audio", "video"):
            raise ValueError(f"corrupted modality must be audio or video (got {modality!r})")
        if strength is None:
            strength = DEGRADE_STRENGTH[modality] if kind == "degrade" else 2.0
        self.dataset, self.fraction, self.kind, self.modality, self.strength, self.seed = dataset, fraction, kind, modality, strength, seed
        n = len(dataset)
        rng = np.random.default_rng([seed, 0xC0])
        self._hit = np.zeros(n, dtype=bool)
        self._hit[rng.choice(n, size=int(round(fraction * n)), replace=False)] = True
        self.name = getattr(dataset, "name", "dataset")

    def __len__(self) -> int:
        return len(self.dataset)

    def labels(self) -> np.ndarray:
        return self.dataset.labels()

    def corrupted(self) -> np.ndarray:
        """Boolean mask of the corrupted indices."""
        return self._hit.copy()

    def sample(self, index: int, split: str = "train") -> Sample:
        s = self.dataset.sample(index, split=split)
        if not self._hit[index]:
            return s
        rng = np.random.default_rng([self.seed, 0xC1, int(index)])
        x = np.array(s.tensors[self.modality], dtype=np.float32, copy=True)
        if self.kind == "noise":
            x = x + rng.standard_normal(x.shape).astype(np.float32) * self.strength * float(x.std() or 1.0)
        elif self.kind == "drop":
            x[...] = 0.0
        elif self.kind == "degrade":
            std = float(x.std() or 1.0)
            axes = (x.ndim - 2, x.ndim - 1) if self.modality == "video" else (0,)
            x = _block_average(x, DEGRADE_BLOCK[self.modality], axes)
            x = x + rng.standard_normal(x.shape).astype(np.float32) * self.strength * std
        elif self.modality == "video":
            h, w = x.shape[-2:]
            bh, bw = max(1, h // 2), max(1, w // 2)
            r, c = int(rng.integers(0, h - bh + 1)), int(rng.integers(0, w - bw + 1))
            x[..., r : r + bh, c : c + bw] = 0.0
        else:
            t = x.shape[0]
            span = max(1, t // 2)
            start = int(rng.integers(0, t - span + 1))
            x[start : start + span] = 0.0
        s.tensors = {**s.tensors, self.modality: np.ascontiguousarray(x)}
        s.meta = {**s.meta, "corrupted": f"{self.kind}:{self.modality}"}
        return s


#: Named streams of issue 14 (modalities unequal on purpose), applied to the training split:
#: name -> (fraction, kind, modality) of :class:`Corrupted`, or None for the clean control.
#: ``weak-*`` degrade one modality of *every* sample and of the test split too (the sensor is
#: worse, not broken now and then); ``corrupted-*`` leave the test split clean.
STREAMS: dict[str, tuple[float, str, str] | None] = {
    "clean": None,
    "corrupted-video-25": (0.25, "noise", "video"),
    "corrupted-video-50": (0.5, "noise", "video"),
    "corrupted-audio-25": (0.25, "noise", "audio"),
    "corrupted-audio-50": (0.5, "noise", "audio"),
    "weak-video": (1.0, "degrade", "video"),
    "weak-audio": (1.0, "degrade", "audio"),
}


def make_stream(name: str, train, test=None, seed: int = 0):
    """``(train, test)`` of stream ``name`` (one of :data:`STREAMS`): the wrapped data sets.

    ``test`` (optional) is degraded too for the ``weak-*`` streams (with a different seed than the
    training split, so no sample shares its noise), else returned as given.
    """
    if name not in STREAMS:
        raise ValueError(f"unknown stream {name!r}; choose one of {list(STREAMS)}")
    spec = STREAMS[name]
    if spec is None:
        return train, test
    fraction, kind, modality = spec
    train = Corrupted(train, fraction, kind, modality, seed=seed)
    if test is not None and name.startswith("weak-"):
        test = Corrupted(test, fraction, kind, modality, seed=seed + 1_000_003)
    return train, test


def replay(dataset: IndexedDataset, order: StreamOrder, device: str = "sim-0") -> Iterator[Sample]:
    """Yield the samples in stream order, stamped with the device id and consecutive seq numbers."""
    for seq, index in enumerate(order.indices.tolist()):
        s = dataset.sample(int(index))
        s.device, s.seq = device, seq
        yield s
