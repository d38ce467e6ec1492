"""Retention policies of the replay buffer: who gets in and who is evicted.

A policy is a small stateless object; everything it needs (stored keys per class, scores, sizes,
offered counters, the random generator) lives in the :class:`~edge_runtime.learning.buffer.ReplayBuffer`
it is asked about, so the buffer's ``state_dict`` captures the policy's state too.  Policies read
the buffer through its small public view, :class:`BufferView`, never its private fields.

The buffer calls :meth:`RetentionPolicy.plan` once per offer (after the duplicate and ``too_large``
checks and after counting the offer).  ``plan`` returns the keys to evict so that the incoming
sample fits under *both* bounds (``max_items`` and ``max_bytes``), or ``None`` to reject it.  It
never changes the buffer; the buffer applies the plan.  Each policy has two parts:

* :meth:`~RetentionPolicy.admit_full`: the admission rule when the buffer holds ``max_items``
  items (this is where reservoir sampling and CBRS differ);
* :meth:`~RetentionPolicy.victim`: which stored item goes next while the sample still does not fit
  (the byte bound, or the item bound for policies without a separate admission rule).
"""

from __future__ import annotations

from typing import Hashable, Mapping, Protocol, Sequence

import numpy as np

Key = Hashable


class BufferView(Protocol):
    """What a retention policy may read of the buffer (``ReplayBuffer`` implements it)."""

    max_items: int
    max_bytes: int
    offered: int
    offered_per_class: dict[int, int]
    rng: np.random.Generator

    def __len__(self) -> int: ...

    @property
    def nbytes(self) -> int: ...

    def slots(self) -> Sequence[Key]: ...

    def by_class(self) -> Mapping[int, Sequence[Key]]: ...

    def label_of(self, key: Key) -> int: ...

    def nbytes_of(self, key: Key) -> int: ...

    def score(self, key: Key) -> float: ...


class Plan:
    """Victims chosen so far for one offer, and what the buffer would look like without them."""

    __slots__ = ("buf", "label", "score", "nbytes", "victims", "excluded", "removed", "freed")

    def __init__(self, buf: BufferView, label: int, score: float, nbytes: int) -> None:
        self.buf = buf
        self.label = label
        self.score = score
        self.nbytes = nbytes
        self.victims: list[Key] = []
        self.excluded: set[Key] = set()
        self.removed: dict[int, int] = {}
        self.freed = 0

    def overflows(self) -> bool:
        """True while storing the incoming sample (after the planned evictions) breaks a bound."""
        buf = self.buf
        items = len(buf) - len(self.victims) + 1
        return items > buf.max_items or buf.nbytes - self.freed + self.nbytes > buf.max_bytes

    def evict(self, key: Key) -> None:
        """Add a stored key to the victims."""
        buf = self.buf
        self.victims.append(key)
        self.excluded.add(key)
        label = buf.label_of(key)
        self.removed[label] = self.removed.get(label, 0) + 1
        self.freed += buf.nbytes_of(key)

    def remaining(self, label: int) -> int:
        """Stored items of class ``label`` that are not planned victims."""
        keys = self.buf.by_class().get(label)
        return (len(keys) if keys else 0) - self.removed.get(label, 0)

    def counts(self, with_incoming: bool) -> dict[int, int]:
        """Per-class counts of the remaining stored items (plus the incoming sample if asked)."""
        out = {c: len(keys) - self.removed.get(c, 0) for c, keys in self.buf.by_class().items()}
        if with_incoming:
            out[self.label] = out.get(self.label, 0) + 1
        return out

    def _pick(self, keys: Sequence[Key]) -> Key:
        """A uniformly random element of ``keys`` that is not a planned victim (one must exist)."""
        rng = self.buf.rng
        excluded = self.excluded
        if not excluded:
            return keys[int(rng.integers(len(keys)))]
        if 2 * len(excluded) < len(keys):
            while True:  # rejection sampling: fewer than half of the draws are excluded
                key = keys[int(rng.integers(len(keys)))]
                if key not in excluded:
                    return key
        left = [k for k in keys if k not in excluded]
        return left[int(rng.integers(len(left)))]

    def random_any(self) -> Key:
        """A uniformly random remaining stored item."""
        return self._pick(self.buf.slots())

    def random_of_class(self, label: int) -> Key:
        """A uniformly random remaining stored item of class ``label``."""
        return self._pick(self.buf.by_class()[label])

    def random_of_largest(self, with_incoming: bool) -> Key:
        """A random remaining item of a largest class (ties: a class drawn uniformly among them).

        Only classes that still have a stored (non-victim) item are candidates.
        """
        counts = self.counts(with_incoming)
        candidates = {c: n for c, n in counts.items() if self.remaining(c) > 0}
        top = max(candidates.values())
        largest = sorted(c for c, n in candidates.items() if n == top)
        label = largest[0] if len(largest) == 1 else largest[int(self.buf.rng.integers(len(largest)))]
        return self.random_of_class(label)


class RetentionPolicy:
    """Base class: admit while there is room, evict random items when there is none."""

    name = "base"

    def plan(self, buf: BufferView, label: int, score: float, nbytes: int) -> list[Key] | None:
        """Victims that make room for the incoming sample (possibly none), or None to reject it."""
        plan = Plan(buf, label, score, nbytes)
        if len(buf) >= buf.max_items:
            if not self.admit_full(plan):
                return None
        while plan.overflows():
            key = self.victim(plan)
            if key is None:
                return None
            plan.evict(key)
        return plan.victims

    def admit_full(self, plan: Plan) -> bool:
        """Admission rule when the buffer holds ``max_items`` items; may add victims to ``plan``."""
        return True

    def victim(self, plan: Plan) -> Key | None:
        """The next stored item to evict while the sample does not fit; None evicts the incoming."""
        return plan.random_any()


class ReservoirRetention(RetentionPolicy):
    """Classic reservoir sampling (Vitter's algorithm R) over every sample offered.

    While fewer than ``max_items`` items are stored, every sample is admitted.  When full, with
    ``n`` the number of samples offered so far (this one included), draw ``j`` uniformly in
    ``[0, n)``; if ``j < max_items`` the sample replaces the item in slot ``j`` (a uniformly random
    stored item), else it is rejected.  Every offered sample then has the same probability
    ``max_items / n`` of being stored.  When the byte bound overflows, uniformly random stored
    items are evicted until the sample fits.
    """

    name = "reservoir"

    def admit_full(self, plan: Plan) -> bool:
        buf = plan.buf
        j = int(buf.rng.integers(buf.offered))
        if j >= buf.max_items:
            return False
        keys = buf.slots()
        plan.evict(keys[j] if j < len(keys) else plan.random_any())
        return True


class ClassBalancedRetention(RetentionPolicy):
    """Class-balanced reservoir sampling (CBRS, Chrysakis & Moens, ICML 2020).

    While fewer than ``max_items`` items are stored, every sample is admitted.  When full, let
    the *largest* classes be those with the most stored items right now:

    * if the incoming sample's class ``c`` is not among them, a random stored item of a largest
      class (ties: a class drawn uniformly among them) is evicted and the sample admitted;
    * otherwise, with ``m_c`` items of ``c`` stored and ``n_c`` offered so far (this one
      included), the sample is admitted with probability ``m_c / n_c``, replacing a random stored
      item of its own class, else rejected (reservoir sampling within the class).

    When the byte bound overflows, random items of the largest classes (counting the incoming
    sample in its class) are evicted until the sample fits.  (The paper also keeps classes that
    *were* once the largest "full"; this implementation uses the current counts only.)
    """

    name = "class_balanced"

    def admit_full(self, plan: Plan) -> bool:
        buf = plan.buf
        counts = plan.counts(with_incoming=False)
        top = max(counts.values())
        label = plan.label
        if counts.get(label, 0) < top:
            plan.evict(plan.random_of_largest(with_incoming=False))
            return True
        m_c = counts[label]
        n_c = buf.offered_per_class[label]
        if buf.rng.random() < m_c / n_c:
            plan.evict(plan.random_of_class(label))
            return True
        return False

    def victim(self, plan: Plan) -> Key | None:
        return plan.random_of_largest(with_incoming=True)


class MBSRetention(RetentionPolicy):
    """Keep the best-balanced samples of each class (scores are MBS deviations; lower is better).

    The sample is admitted; then, while the buffer is over a bound, the victim is taken from the
    currently largest class (counting the incoming sample in its class; ties between classes are
    resolved by considering all tied classes together): the item with the LARGEST deviation
    score.  That may be the incoming sample, which is then rejected and nothing is evicted.  On
    equal scores a stored item is evicted before the incoming one, and among stored items the
    first in the class's list.  NaN scores count as +inf (evicted first).
    """

    name = "mbs"

    def victim(self, plan: Plan) -> Key | None:
        buf = plan.buf
        counts = plan.counts(with_incoming=True)
        top = max(counts.values())
        best: Key | None = None
        best_score = float("-inf")
        score, excluded, by_class = buf.score, plan.excluded, buf.by_class()
        for c in sorted(c for c, n in counts.items() if n == top):
            for key in by_class.get(c, ()):
                if key in excluded:
                    continue
                s = score(key)
                if best is None or s > best_score:
                    best, best_score = key, s
        if best is None:
            return None
        if plan.label in counts and counts[plan.label] == top and plan.score > best_score:
            return None
        return best


RETENTION: dict[str, type[RetentionPolicy]] = {
    "reservoir": ReservoirRetention,
    "class_balanced": ClassBalancedRetention,
    "mbs": MBSRetention,
}


def build_retention(name: str) -> RetentionPolicy:
    """A retention policy by name (one of :data:`RETENTION`)."""
    try:
        return RETENTION[name]()
    except KeyError:
        raise ValueError(f"unknown retention policy {name!r}; choose one of {sorted(RETENTION)}") from None
