"""Stream orders: in which order a device replays the samples of a data set.

A scenario turns the labels of a data set into an order of sample indices (and, for
class-incremental streams, the task each position belongs to).  The data set itself is only
asked for ``sample(i)`` when the stream reaches position i, so nothing is held in memory.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Protocol

import numpy as np

from edge_runtime.wire import Sample


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


SCENARIOS = {"iid": iid, "class-incremental": class_incremental}


def make_order(name: str, labels: np.ndarray, seed: int = 0, classes_per_task: int = 2) -> StreamOrder:
    """The stream order of scenario ``name`` (one of :data:`SCENARIOS`)."""
    if name == "iid":
        return iid(labels, seed)
    if name == "class-incremental":
        return class_incremental(labels, classes_per_task, seed)
    raise ValueError(f"unknown scenario {name!r}; choose one of {sorted(SCENARIOS)}")


def replay(dataset: IndexedDataset, order: StreamOrder, device: str = "sim-0") -> Iterator[Sample]:
    """Yield the samples in stream order, stamped with the device id and consecutive seq numbers."""
    for seq, index in enumerate(order.indices.tolist()):
        s = dataset.sample(int(index))
        s.device, s.seq = device, seq
        yield s
