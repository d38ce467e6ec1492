"""Bounded replay buffer: retention policies over a payload store (DESIGN steps 5-6)."""

from edge_runtime.buffer.replay import OfferResult, ReplayBuffer
from edge_runtime.buffer.retention import RETENTION, RetentionPolicy, build_retention
from edge_runtime.buffer.sqlite import LedgerReader, SqliteStore
from edge_runtime.buffer.store import MemoryStore

__all__ = ["ReplayBuffer", "MemoryStore", "SqliteStore", "LedgerReader", "OfferResult", "RETENTION",
           "RetentionPolicy", "build_retention"]
