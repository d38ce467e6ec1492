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


def ordered(labels: np.ndarray) -> StreamOrder:
    """The data set's own order (a folder's ``time``, recordings in sequence); one task holding every class."""
    n = len(labels)
    return StreamOrder(np.arange(n, dtype=np.int64), np.zeros(n, dtype=np.int64), [sorted(int(c) for c in np.unique(labels))])


SCENARIOS = ("iid", "class-incremental", "blurry", "gradual", "ordered")


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
    if name == "ordered":
        return ordered(labels)
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


def natural_shards(dataset) -> np.ndarray | None:
    """The natural shard of every index of ``dataset`` (a subject, a recording device), or None.

    A data set declares natural shards with a ``shards()`` method returning one value per index
    (ints or strings, computed without decoding samples); its samples carry the same value as
    ``meta["shard"]``.  Wrappers (:class:`Corrupted`) pass their data set's shards on.
    """
    get = getattr(dataset, "shards", None)
    if get is None:
        return None
    shards = get()
    if shards is None:
        return None
    shards = np.asarray(shards)
    if len(shards) != len(dataset):
        raise ValueError(f"{getattr(dataset, 'name', 'data set')}: shards() gave {len(shards)} values for {len(dataset)} samples")
    return shards


def assign_natural(stream_shards: np.ndarray, devices: int, noun: str = "shard") -> tuple[np.ndarray, str | None]:
    """Device index of every stream position from its natural shard, and a line saying how shards met devices.

    Shards are taken in sorted order (shard j = the j-th smallest value).  With as many devices as
    shards, device j replays shard j.  With fewer devices, shards are dealt round-robin (device k
    replays shards k, k + devices, ..., whole).  With more devices, every device still replays one
    shard only: shard j gets devices j, j + S, j + 2S, ... (S shards) and its positions are dealt
    among them in stream order, so no device idles and none mixes two shards.  The line (``noun``
    names a shard: "subject") is None when devices and shards match one to one.
    """
    if devices < 1:
        raise ValueError(f"devices must be at least 1 (got {devices})")
    keys, which = np.unique(np.asarray(stream_shards), return_inverse=True)
    which = which.reshape(-1)
    n_shards = len(keys)
    owner = np.empty(len(which), dtype=np.int64)
    if n_shards == 0 or devices == n_shards:
        owner[:] = which
        return owner, None
    names = [str(k) for k in keys.tolist()]
    if devices < n_shards:
        owner[:] = which % devices
        held = [", ".join(names[k::devices]) for k in range(devices)]
        shown = "; ".join(f"device {k}: {h}" for k, h in enumerate(held[:6])) + ("; ..." if devices > 6 else "")
        return owner, (f"{n_shards} {noun}s over {devices} device{'s' if devices > 1 else ''}: dealt round-robin, whole "
                       f"({shown})")
    for j in range(n_shards):
        mine = np.flatnonzero(which == j)
        theirs = np.arange(j, devices, n_shards)
        owner[mine] = theirs[np.arange(len(mine)) % len(theirs)]
    split = [f"{names[j]} (devices {', '.join(map(str, range(j, devices, n_shards)))})" for j in range(min(n_shards, devices - n_shards))]
    shown = "; ".join(split[:6]) + ("; ..." if len(split) > 6 else "")
    return owner, (f"{n_shards} {noun}s over {devices} devices: every device replays part of one {noun}; "
                   f"{noun}s split between devices: {shown}")


def eval_mask(n: int, every: int | None) -> np.ndarray:
    """Interleaved eval split: True at every ``every``-th position (the 10th, 20th, ... for 10)."""
    mask = np.zeros(n, dtype=bool)
    if every:
        if every < 2:
            raise ValueError(f"eval every must be at least 2 (got {every})")
        mask[every - 1 :: every] = True
    return mask


CORRUPTIONS = ("noise", "occlusion", "drop", "degrade")
#: How a modality is corrupted follows its array's rank: ``spatial`` for rank-4 frames (T, C, H, W)
#: (blocks of pixels), ``temporal`` for every other rank (blocks of the first, time axis).
LAYOUTS = ("spatial", "temporal")
#: ``degrade``'s noise (times the tensor's std) per layout, calibrated on AV-Digits so that the
#: degraded modality's unimodal accuracy falls to about 50-60 % (docs/datasets.md, "Streams where
#: modalities are unequal"); the other kinds default to 2.0.
DEGRADE_STRENGTH_BY_LAYOUT = {"spatial": 1.0, "temporal": 1.0}
#: ``degrade``'s block size per layout: frames are averaged over blocks of this many pixels per
#: side, other arrays over this many time steps (then repeated back to the original shape).
DEGRADE_BLOCK_BY_LAYOUT = {"spatial": 2, "temporal": 4}
#: The same numbers by the modality names of the preset streams (:data:`STREAMS`), for callers
#: that look them up by name: ``video`` is rank-4 frames, ``audio`` (T, F) features.
_PRESET_LAYOUT = {"video": "spatial", "audio": "temporal"}
DEGRADE_STRENGTH = {m: DEGRADE_STRENGTH_BY_LAYOUT[lay] for m, lay in _PRESET_LAYOUT.items()}
DEGRADE_BLOCK = {m: DEGRADE_BLOCK_BY_LAYOUT[lay] for m, lay in _PRESET_LAYOUT.items()}


def layout_of(x: np.ndarray) -> str:
    """``spatial`` for a rank-4 (T, C, H, W) array, ``temporal`` otherwise (:data:`LAYOUTS`)."""
    return "spatial" if np.ndim(x) == 4 else "temporal"


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

    Any modality the data set's samples hold can be named; what is done follows the rank of its
    array (:func:`layout_of`): rank-4 frames (T, C, H, W) are corrupted in space, every other rank
    along its first (time) axis.  Exactly ``round(fraction * len(dataset))`` indices are corrupted
    (chosen once by ``seed``), creating modality imbalance on purpose:

    * ``noise``: add Gaussian noise of standard deviation ``strength`` times the tensor's own std;
    * ``occlusion``: zero a random block (frames: half the height by half the width, a quarter of
      every frame; other arrays: a contiguous half of the time steps);
    * ``drop``: zero the whole modality (the sensor failed);
    * ``degrade``: a worse sensor: average over blocks (:data:`DEGRADE_BLOCK_BY_LAYOUT`: frames 2x2
      pixels, other arrays 4 time steps), then add Gaussian noise of ``strength`` times the original
      std (default :data:`DEGRADE_STRENGTH_BY_LAYOUT`).  With ``fraction=1`` every sample is
      degraded: a weak-modality stream.

    ``strength=None`` takes the kind's default.  The other modalities and the label are unchanged;
    ``meta["corrupted"]`` names what was done.  ValueError when the data set's samples have no
    such modality.
    """

    def __init__(self, dataset, fraction: float, kind: str = "noise", modality: str = "video", strength: float | None = None,
                 seed: int = 0) -> None:
        if not 0.0 <= fraction <= 1.0:
            raise ValueError(f"corruption fraction must be in [0, 1] (got {fraction})")
        if kind not in CORRUPTIONS:
            raise ValueError(f"corruption kind must be one of {list(CORRUPTIONS)} (got {kind!r})")
        self.name = getattr(dataset, "name", "dataset")
        n = len(dataset)
        layout = "temporal"
        if n:
            tensors = dataset.sample(0).tensors
            if modality not in tensors:
                raise ValueError(f"corrupted modality {modality!r}: the samples of {self.name} hold "
                                 f"{', '.join(sorted(tensors))}; name one of them")
            layout = layout_of(tensors[modality])
        if strength is None:
            strength = DEGRADE_STRENGTH_BY_LAYOUT[layout] if kind == "degrade" else 2.0
        self.dataset, self.fraction, self.kind, self.modality, self.strength, self.seed = dataset, fraction, kind, modality, strength, seed
        rng = np.random.default_rng([seed, 0xC0])
        self._hit = np.zeros(n, dtype=bool)
        self._hit[rng.choice(n, size=int(round(fraction * n)), replace=False)] = True

    def __len__(self) -> int:
        return len(self.dataset)

    def labels(self) -> np.ndarray:
        return self.dataset.labels()

    def shards(self) -> np.ndarray | None:
        """The wrapped data set's natural shards (:func:`natural_shards`), or None."""
        return natural_shards(self.dataset)

    @property
    def shard_noun(self) -> str:
        return getattr(self.dataset, "shard_noun", "natural shard")

    def corrupted(self) -> np.ndarray:
        """Boolean mask of the corrupted indices."""
        return self._hit.copy()

    def sample(self, index: int, split: str = "train") -> Sample:
        s = self.dataset.sample(index, split=split)
        if not self._hit[index]:
            return s
        rng = np.random.default_rng([self.seed, 0xC1, int(index)])
        x = np.array(s.tensors[self.modality], dtype=np.float32, copy=True)
        spatial = layout_of(x) == "spatial"
        if self.kind == "noise":
            x = x + rng.standard_normal(x.shape).astype(np.float32) * self.strength * float(x.std() or 1.0)
        elif self.kind == "drop":
            x[...] = 0.0
        elif self.kind == "degrade":
            std = float(x.std() or 1.0)
            axes = (x.ndim - 2, x.ndim - 1) if spatial else (0,)
            x = _block_average(x, DEGRADE_BLOCK_BY_LAYOUT[layout_of(x)], axes)
            x = x + rng.standard_normal(x.shape).astype(np.float32) * self.strength * std
        elif spatial:
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
