"""The bounded replay buffer (the learning step, steps 5-6, docs/design.md).

:class:`ReplayBuffer` stores labelled :class:`~edge_runtime.core.sample.Sample` records under two bounds,
``max_items`` and ``max_bytes`` (``Sample.nbytes``), and is never over either, not even for a
moment: the retention policy plans its evictions before anything is stored.  Payloads live in a
store (:class:`~edge_runtime.learning.buffer.store.MemoryStore` by default); the buffer keeps the keys in a
list with a key -> position dict (and the same per class) so that removals are O(1) swap-removes,
and ``sample(n)`` and "a random item of class c" cost O(n) and O(1), not O(buffer).
"""

from __future__ import annotations

import copy
import logging
import math
from dataclasses import dataclass, field
from typing import Any, Hashable, Iterator, Mapping, Sequence

import numpy as np
import torch

from edge_runtime.learning.buffer.retention import Plan, build_retention
from edge_runtime.learning.buffer.store import MemoryStore
from edge_runtime.core.config import BufferConfig
from edge_runtime.core.names import LOGGER_BUFFER
from edge_runtime.core.sample import Sample

log = logging.getLogger(LOGGER_BUFFER)

Key = Hashable
STATE_VERSION = 1


@dataclass
class OfferResult:
    """What :meth:`ReplayBuffer.offer` did with a sample.

    ``reason`` is ``"admitted"``, ``"rejected"`` (the retention policy said no), ``"duplicate"``
    (its key is already stored) or ``"too_large"`` (bigger than ``max_bytes`` on its own).
    ``evicted`` lists the keys removed to make room, in eviction order.
    """

    admitted: bool
    evicted: list[Key] = field(default_factory=list)
    reason: str = "admitted"


def _sample_to_state(sample: Sample) -> dict[str, Any]:
    return {
        # torch tensors, not numpy arrays: checkpoints are read with torch.load(weights_only=True)
        "tensors": {name: torch.from_numpy(np.array(t, copy=True, order="C")) for name, t in sample.tensors.items()},
        "label": sample.label,
        "split": sample.split,
        "device": sample.device,
        "seq": sample.seq,
        "ts": sample.ts,
        "meta": copy.deepcopy(sample.meta),
    }


def _sample_from_state(state: dict[str, Any]) -> Sample:
    return Sample(
        tensors={name: np.ascontiguousarray(t.numpy() if isinstance(t, torch.Tensor) else t)
                 for name, t in state["tensors"].items()},
        label=state["label"],
        split=state.get("split", "train"),
        device=state["device"],
        seq=state["seq"],
        ts=state.get("ts", 0.0),
        meta=copy.deepcopy(state.get("meta", {})),
    )


class ReplayBuffer:
    """A replay buffer bounded by ``cfg.max_items`` and ``cfg.max_bytes``.

    ``cfg.retention`` names the policy in :data:`~edge_runtime.learning.buffer.retention.RETENTION` that
    decides admission and eviction.  Randomness comes from ``numpy.random.Generator(PCG64(seed))``
    and is part of :meth:`state_dict`, so a restored buffer behaves identically afterwards.
    """

    def __init__(self, cfg: BufferConfig, seed: int = 0, store: Any | None = None) -> None:
        self.cfg = cfg
        self.max_items = int(cfg.max_items)
        self.max_bytes = int(cfg.max_bytes)
        self.policy = build_retention(cfg.retention)
        self.store = store if store is not None else MemoryStore()
        self.rng = np.random.Generator(np.random.PCG64(seed))
        self._reset()

    def _reset(self) -> None:
        self._keys: list[Key] = []
        self._pos: dict[Key, int] = {}
        self._class_keys: dict[int, list[Key]] = {}
        self._class_pos: dict[Key, int] = {}
        self._labels: dict[Key, int] = {}
        self._scores: dict[Key, float] = {}
        self._sizes: dict[Key, int] = {}
        self._nbytes = 0
        self.offered = 0
        self.offered_per_class: dict[int, int] = {}

    # ------------------------------------------------------------------ queries
    def __len__(self) -> int:
        return len(self._keys)

    def __contains__(self, key: object) -> bool:
        return key in self._pos

    def __iter__(self) -> Iterator[Key]:
        return iter(list(self._keys))

    @property
    def nbytes(self) -> int:
        """Tensor bytes currently stored (the sum of ``Sample.nbytes``)."""
        return self._nbytes

    def keys(self) -> list[Key]:
        """The stored keys, in storage-slot order (a new list)."""
        return list(self._keys)

    def class_counts(self) -> dict[int, int]:
        """Stored items per class (classes with none are absent)."""
        return {c: len(keys) for c, keys in self._class_keys.items()}

    def score(self, key: Key) -> float:
        """The score the sample ``key`` was offered with."""
        return self._scores[key]

    # The read-only view the retention policies plan with (no copies: do not modify what they return).
    def slots(self) -> Sequence[Key]:
        """The stored keys in storage-slot order (a live view, not a copy)."""
        return self._keys

    def by_class(self) -> Mapping[int, Sequence[Key]]:
        """Stored keys per class, classes with none absent (a live view, not a copy)."""
        return self._class_keys

    def label_of(self, key: Key) -> int:
        """The class of the stored sample ``key``."""
        return self._labels[key]

    def nbytes_of(self, key: Key) -> int:
        """Tensor bytes of the stored sample ``key``."""
        return self._sizes[key]

    def get(self, key: Key) -> Sample:
        """The stored sample ``key``."""
        return self.store.get(key)

    # ------------------------------------------------------------------ offer / sample
    def offer(self, sample: Sample, score: float = 0.0) -> OfferResult:
        """Offer a labelled sample with its retention score (MBS deviation for ``mbs``).

        Duplicates (a key already stored) and samples bigger than ``max_bytes`` are refused
        before the retention policy sees them and are not counted as offered.
        """
        if sample.label is None:
            raise ValueError(f"cannot offer unlabelled sample {sample.key} to the replay buffer")
        label = int(sample.label)
        key = sample.key
        if key in self._pos:
            return OfferResult(False, [], "duplicate")
        nbytes = sample.nbytes
        if nbytes > self.max_bytes:
            return OfferResult(False, [], "too_large")
        score = float(score)
        if math.isnan(score):
            score = math.inf
        self.offered += 1
        self.offered_per_class[label] = self.offered_per_class.get(label, 0) + 1
        victims = self.policy.plan(self, label, score, nbytes)
        if victims is None:
            return OfferResult(False, [], "rejected")
        for victim in victims:
            self._remove(victim)
        self._insert(key, label, score, nbytes, sample)
        return OfferResult(True, victims, "admitted")

    def sample(self, n: int) -> list[Sample]:
        """``n`` distinct stored samples drawn uniformly without replacement (all if fewer).

        A partial Fisher-Yates shuffle over a virtual copy of the key list: O(n), one RNG call.
        """
        size = len(self._keys)
        n = min(int(n), size)
        if n <= 0:
            return []
        offsets = self.rng.integers(0, np.arange(size, size - n, -1))
        moved: dict[int, int] = {}
        keys = self._keys
        out: list[Sample] = []
        for i, off in enumerate(offsets.tolist()):
            j = i + off
            at_j = moved.get(j, j)
            moved[j] = moved.get(i, i)
            out.append(self.store.get(keys[at_j]))
        return out

    # ------------------------------------------------------------------ bookkeeping
    def _insert(self, key: Key, label: int, score: float, nbytes: int, sample: Sample) -> None:
        self._bookkeep(key, label, score, nbytes)
        self.store.put(key, sample, score)

    def _bookkeep(self, key: Key, label: int, score: float, nbytes: int) -> None:
        self._pos[key] = len(self._keys)
        self._keys.append(key)
        members = self._class_keys.get(label)
        if members is None:
            members = self._class_keys[label] = []
        self._class_pos[key] = len(members)
        members.append(key)
        self._labels[key] = label
        self._scores[key] = score
        self._sizes[key] = nbytes
        self._nbytes += nbytes

    @staticmethod
    def _swap_remove(items: list[Key], pos: dict[Key, int], key: Key) -> None:
        i = pos.pop(key)
        last = items.pop()
        if last != key:
            items[i] = last
            pos[last] = i

    def _remove(self, key: Key) -> None:
        self._swap_remove(self._keys, self._pos, key)
        label = self._labels.pop(key)
        members = self._class_keys[label]
        self._swap_remove(members, self._class_pos, key)
        if not members:
            del self._class_keys[label]
        del self._scores[key]
        self._nbytes -= self._sizes.pop(key)
        self.store.delete(key)

    def remove(self, key: Key) -> None:
        """Evict ``key`` now (``KeyError`` when it is not stored)."""
        if key not in self._pos:
            raise KeyError(key)
        self._remove(key)

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """Items, scores, offered counters, slot orders and RNG state; payloads too for a memory store.

        Tensors are copied into plain numpy arrays, so later changes to the buffer do not leak
        into the snapshot.  A durable store (``store.durable``) keeps its own payloads.
        """
        keys = list(self._keys)
        durable = bool(getattr(self.store, "durable", False))
        return {
            "version": STATE_VERSION,
            "retention": self.policy.name,
            "keys": keys,
            "labels": [self._labels[k] for k in keys],
            "scores": [self._scores[k] for k in keys],
            "sizes": [self._sizes[k] for k in keys],
            "class_keys": [(c, list(members)) for c, members in self._class_keys.items()],
            "offered": self.offered,
            "offered_per_class": dict(self.offered_per_class),
            "rng": copy.deepcopy(self.rng.bit_generator.state),
            "samples": None if durable else [_sample_to_state(self.store.get(k)) for k in keys],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`; the next offers and samples match the original buffer's."""
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"replay buffer state version {state.get('version')!r} is not supported (expected {STATE_VERSION})")
        keys = [tuple(k) if isinstance(k, list) else k for k in state["keys"]]
        if getattr(self.store, "durable", False):
            self._reconcile(state, keys)  # the store's bounds are enforced there
            return
        sizes = [int(s) for s in state["sizes"]]
        if len(keys) > self.max_items or sum(sizes) > self.max_bytes:
            raise ValueError(
                f"replay buffer state holds {len(keys)} items / {sum(sizes)} bytes, over this buffer's bounds "
                f"({self.max_items} items / {self.max_bytes} bytes)"
            )
        samples = state.get("samples")
        if samples is None:
            raise ValueError("replay buffer state has no samples (saved from a durable store) but this buffer's store is in memory")
        self._reset()
        if hasattr(self.store, "clear"):
            self.store.clear()
        else:
            for k in list(self.store.keys()):
                self.store.delete(k)
        for i, (key, label, score, size) in enumerate(zip(keys, state["labels"], state["scores"], sizes)):
            self._insert(key, int(label), float(score), size, _sample_from_state(samples[i]))
        self._class_keys, self._class_pos = {}, {}  # the saved per-class order, so class draws repeat exactly
        for label, members in state["class_keys"]:
            members = [tuple(k) if isinstance(k, list) else k for k in members]
            self._class_keys[int(label)] = members
            for j, key in enumerate(members):
                self._class_pos[key] = j
        self._restore_counters(state)

    def _restore_counters(self, state: dict[str, Any]) -> None:
        self.offered = int(state["offered"])
        self.offered_per_class = {int(c): int(n) for c, n in state["offered_per_class"].items()}
        self.rng.bit_generator.state = copy.deepcopy(state["rng"])

    def _reconcile(self, state: dict[str, Any], keys: list[Key]) -> None:
        """Restore over a durable store: its committed items are the truth, the (older) checkpoint gives order and counters.

        Items of the checkpoint that the store no longer holds were evicted after it was written
        (the store logged that): they are dropped.  Items the store holds beyond the checkpoint were
        admitted after it: they are added with the store's label, score and size.  Offered counters
        and the RNG come from the checkpoint.
        """
        meta = {key: (label, score, nbytes) for key, label, score, nbytes in self.store.items_meta()}
        in_state = set(keys)
        kept = [k for k in keys if k in meta]
        added = [k for k in meta if k not in in_state]
        self._reset()
        for key in kept + added:
            self._bookkeep(key, *meta[key])
        self._restore_counters(state)
        dropped = len(keys) - len(kept)
        log.info("replay buffer reconciled with its durable store: %d items, %d evicted and %d admitted after the checkpoint",
                 len(self), dropped, len(added),
                 extra={"event": "buffer_reconciled", "items": len(self), "evicted_after_checkpoint": dropped,
                        "admitted_after_checkpoint": len(added)})
        self._enforce_bounds()

    def restore_from_store(self) -> None:
        """Rebuild the bookkeeping from a durable store alone (a node that crashed before its first checkpoint).

        Every stored item counts as offered once; the RNG keeps its seed state.
        """
        self._reset()
        for key, label, score, nbytes in self.store.items_meta():
            self._bookkeep(key, label, score, nbytes)
            self.offered += 1
            self.offered_per_class[label] = self.offered_per_class.get(label, 0) + 1
        log.info("replay buffer rebuilt from its durable store: %d items", len(self),
                 extra={"event": "buffer_restored_from_store", "items": len(self)})
        self._enforce_bounds()

    def _enforce_bounds(self) -> None:
        """Evict, as the retention policy chooses, until within both bounds.

        Only a store written under larger bounds needs it.  The policy is asked for victims as if
        an empty sample of no class (label -1, best possible score) were coming in; the store logs
        each eviction.
        """
        evicted = 0
        while len(self) > self.max_items or self._nbytes > self.max_bytes:
            victim = self.policy.victim(Plan(self, -1, -math.inf, 0))
            self._remove(victim if victim is not None else self._keys[0])
            evicted += 1
        if evicted:
            log.warning("replay buffer store held more than the bounds allow: %d items evicted", evicted,
                        extra={"event": "buffer_over_bounds", "evicted": evicted, "items": len(self)})
