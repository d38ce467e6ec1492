"""Bounded replay buffer: retention policies over a payload store (DESIGN steps 5-6)."""

from edge_runtime.buffer.replay import OfferResult, ReplayBuffer
from edge_runtime.buffer.retention import RETENTION, RetentionPolicy, build_retention
from edge_runtime.buffer.ledger import Ledger, LedgerReader
from edge_runtime.buffer.sqlite import SqliteStore
from edge_runtime.buffer.store import MemoryStore

__all__ = ["ReplayBuffer", "MemoryStore", "SqliteStore", "Ledger", "LedgerReader", "OfferResult", "RETENTION",
           "RetentionPolicy", "build_retention"]
