"""Uniform replay: each update replays ``n`` distinct buffer samples drawn uniformly (ER's default)."""

from __future__ import annotations

from edge_runtime.core.policy_settings import UniformSettings
from edge_runtime.learning.policies.base import Forward, ReplayPlan, ReplayPolicy


class UniformReplay(ReplayPolicy):
    Settings = UniformSettings
    plans_ahead = True  # a uniform draw from the buffer, whatever the batch

    def __init__(self, cfg: UniformSettings, replay_batch_size: int, seed: int = 0) -> None:
        self.cfg = cfg

    def plan(self, buffer, n: int, forward: Forward) -> ReplayPlan:
        return ReplayPlan(buffer.sample(n) if len(buffer) else [])
