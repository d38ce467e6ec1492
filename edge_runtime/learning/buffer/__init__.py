"""Bounded replay buffer: retention policies over a payload store (the learning step, steps 5-6, docs/design.md).

The node's verdict ledger shares the SQLite file and transaction of :class:`SqliteStore`, but it is the
node's record, not the learner's: it lives in :mod:`edge_runtime.node.ledger`.
"""

from edge_runtime.learning.buffer.replay import OfferResult, ReplayBuffer
from edge_runtime.learning.buffer.retention import RETENTION, RetentionPolicy, build_retention
from edge_runtime.learning.buffer.sqlite import SqliteStore
from edge_runtime.learning.buffer.store import MemoryStore

__all__ = ["ReplayBuffer", "MemoryStore", "SqliteStore", "OfferResult", "RETENTION", "RetentionPolicy", "build_retention"]
