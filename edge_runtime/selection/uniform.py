"""Uniform replay: each update replays ``n`` distinct buffer samples drawn uniformly (ER's default)."""

from __future__ import annotations

from edge_runtime.config import ReplayConfig
from edge_runtime.selection.base import Forward, ReplayPlan, ReplayPolicy


class UniformReplay(ReplayPolicy):
    def __init__(self, cfg: ReplayConfig, replay_batch_size: int, seed: int = 0) -> None:
        self.cfg = cfg

    def plan(self, buffer, n: int, forward: Forward) -> ReplayPlan:
        return ReplayPlan(buffer.sample(n) if len(buffer) else [])
