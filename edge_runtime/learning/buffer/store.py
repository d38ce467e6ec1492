"""Payload stores of the replay buffer.

The buffer keeps its bookkeeping (keys, labels, scores, sizes) itself and hands the samples to a
store.  :class:`MemoryStore` keeps them in a dict; :class:`~edge_runtime.learning.buffer.sqlite.SqliteStore`
implements the same small interface (``put(key, sample, score)``, ``get``, ``delete``, ``clear``,
``keys``, ``__contains__``, ``__len__``, ``__iter__``) on disk, plus ``items_meta()``, and sets
``durable = True`` so that the buffer's ``state_dict`` does not copy payloads that already live on
disk and ``load_state_dict`` reconciles with the store instead.
"""

from __future__ import annotations

from typing import Hashable, Iterator

from edge_runtime.core.sample import Sample

Key = Hashable


class MemoryStore:
    """Samples in a dict keyed by ``sample.key`` (a ``(device, seq)`` tuple); nothing is copied."""

    durable: bool = False

    def __init__(self) -> None:
        self._items: dict[Key, Sample] = {}

    def put(self, key: Key, sample: Sample, score: float = 0.0) -> None:
        """Store ``sample`` under ``key`` (replacing any sample already stored there); ``score`` is for durable stores."""
        self._items[key] = sample

    def get(self, key: Key) -> Sample:
        """The sample stored under ``key``; ``KeyError`` when there is none."""
        return self._items[key]

    def delete(self, key: Key) -> None:
        """Remove ``key``; ``KeyError`` when it is not stored."""
        del self._items[key]

    def clear(self) -> None:
        """Remove every sample."""
        self._items.clear()

    def keys(self) -> list[Key]:
        """The stored keys (a new list)."""
        return list(self._items)

    def __contains__(self, key: object) -> bool:
        return key in self._items

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[Key]:
        return iter(list(self._items))
