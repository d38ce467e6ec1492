"""What a simulated fleet streams: each node's classes, its samples per round, who is down or late when.

Everything here is a pure function of the :class:`SimPlan` (numpy only), so the driver, every Ray
worker and the tests compute the same shares without shipping them around.

Data: a :class:`FleetData` the caller builds (``edge-node federation-sim``: the synthetic data set of
``device_sim``, built in ``edge_runtime.cli``; the federation layer never imports ``device_sim``), split by classes: node ``k`` of
``N`` streams the ``classes_per_node`` classes ``k*c, k*c+1, ... (mod num_classes)``, so with 2 of
10 classes every node misses 80 % of them and every class is held by ``N * c / num_classes`` nodes.
Within a class, the stream's samples are dealt round-robin to its holders: no sample is streamed
twice. Round ``r`` (1-based) of a node is the ``r``-th slice of ``samples_per_round`` of its own
stream. The held-out test set is the data set's ``test_set`` (indices past the stream, every class).

Availability per round (``availability``): a node is ``down`` with probability ``dropout`` (it
keeps learning its slice but neither replies nor receives the merge: its box is unreachable) and
``late`` with probability ``stragglers`` (it learns its slice but its reply misses the round's
deadline, so the round is aggregated without it; it receives the merge, its learning carried over,
and counts in the next round), else ``up``. Drawn from ``(seed, round, node)``, so a rerun is the same.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol

import numpy as np

UP, DOWN, LATE = "up", "down", "late"


class FleetData(Protocol):
    """The data set a simulated fleet streams (e.g. ``device_sim``'s synthetic one, built by the caller)."""

    def labels(self) -> np.ndarray:
        """Labels of the stream's samples ``0 .. len-1``, without generating them."""

    def sample(self, index: int) -> Any:
        """Sample ``index`` of the stream (an ``edge_runtime.core.sample.Sample``)."""

    def test_set(self, n: int) -> list[Any]:
        """``n`` held-out samples of every class, never in the stream."""
_AVAILABILITY_TAG = 0x5EED


@dataclass(frozen=True)
class SimPlan:
    """A simulated fleet: how many nodes, rounds and samples, who holds which classes, dropout."""

    nodes: int
    rounds: int
    samples_per_round: int = 32
    classes_per_node: int = 2
    num_classes: int = 10
    seed: int = 0
    dropout: float = 0.0
    stragglers: float = 0.0
    test_samples: int = 300

    def __post_init__(self) -> None:
        checks = {
            "nodes": self.nodes >= 1, "rounds": self.rounds >= 1, "samples_per_round": self.samples_per_round >= 1,
            "classes_per_node": 1 <= self.classes_per_node <= self.num_classes, "num_classes": self.num_classes >= 2,
            "dropout": 0.0 <= self.dropout < 1.0, "stragglers": 0.0 <= self.stragglers < 1.0,
            "dropout + stragglers": self.dropout + self.stragglers < 1.0, "test_samples": self.test_samples >= 1,
        }
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"simulation plan: {bad[0]} out of range ({self})")

    # ------------------------------------------------------------------ classes and samples
    def classes(self, node: int) -> tuple[int, ...]:
        """The classes node ``node`` streams."""
        c = self.classes_per_node
        return tuple(sorted({(node * c + i) % self.num_classes for i in range(c)}))

    def holders(self, cls: int) -> list[int]:
        """The nodes that stream class ``cls``, in order."""
        return [k for k in range(self.nodes) if cls in self.classes(k)]

    def per_node(self) -> int:
        """Samples each node streams over all rounds."""
        return self.rounds * self.samples_per_round

    def stream_size(self) -> int:
        """Samples of the data set's stream needed so that every node gets ``per_node()`` of its classes.

        The synthetic labels come in shuffled blocks of one sample per class, so a stream of ``B``
        blocks holds exactly ``B`` samples of each class.
        """
        need = 0
        for cls in range(self.num_classes):
            holders = len(self.holders(cls))
            if holders:  # each holder takes at most ceil(per_node / c) samples of each of its classes
                need = max(need, holders * -(-self.per_node() // self.classes_per_node))
        return (need + 1) * self.num_classes

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> SimPlan:
        return cls(**json.loads(text))

    # ------------------------------------------------------------------ availability
    def availability(self, rnd: int, node: int) -> str:
        """``up``, ``down`` or ``late`` for node ``node`` in round ``rnd`` (see the module docstring)."""
        if self.dropout == 0.0 and self.stragglers == 0.0:
            return UP
        u = float(np.random.default_rng([self.seed, _AVAILABILITY_TAG, int(rnd), int(node)]).random())
        return DOWN if u < self.dropout else LATE if u < self.dropout + self.stragglers else UP


def shares(plan: SimPlan, labels: np.ndarray) -> list[np.ndarray]:
    """Each node's stream (indices into the data set's stream of ``labels``), shuffled by seed.

    A class's samples are dealt round-robin to its holders; a node takes its classes in turn so
    that every slice holds all of them, and at most ``per_node()`` samples.
    """
    per_class = {c: np.flatnonzero(labels == c) for c in range(plan.num_classes)}
    dealt: dict[tuple[int, int], np.ndarray] = {}
    for c, idx in per_class.items():
        holders = plan.holders(c)
        for j, k in enumerate(holders):
            dealt[(k, c)] = idx[j :: len(holders)]
    out = []
    for k in range(plan.nodes):
        mine = [dealt[(k, c)] for c in plan.classes(k)]
        depth = max(len(m) for m in mine)
        interleaved = [int(m[i]) for i in range(depth) for m in mine if i < len(m)][: plan.per_node()]
        if len(interleaved) < plan.per_node():
            raise ValueError(f"node {k} gets {len(interleaved)} samples, fewer than the {plan.per_node()} planned")
        rng = np.random.default_rng([plan.seed, k])
        stream = np.asarray(interleaved, dtype=np.int64)
        # shuffle within each round's slice only, so every slice keeps the class mix of the interleave
        for r in range(plan.rounds):
            part = stream[r * plan.samples_per_round : (r + 1) * plan.samples_per_round]
            rng.shuffle(part)
        out.append(stream)
    return out


def round_slice(plan: SimPlan, stream: np.ndarray, rnd: int) -> np.ndarray:
    """The indices node's ``stream`` learns in round ``rnd`` (1-based)."""
    if not 1 <= rnd <= plan.rounds:
        raise ValueError(f"round {rnd} is outside 1..{plan.rounds}")
    return stream[(rnd - 1) * plan.samples_per_round : rnd * plan.samples_per_round]


@lru_cache(maxsize=4)
def load_shares(path: str) -> tuple[np.ndarray, ...]:
    """``shares.npz`` written by the driver (``node0``, ``node1``, ...), cached per process."""
    with np.load(Path(path)) as z:
        return tuple(np.array(z[f"node{k}"]) for k in range(len(z.files)))
