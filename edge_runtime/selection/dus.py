"""DUS replay (Data-aware Unimodal Sampling, seed paper 002; our reading, see below).

Each step the :class:`~edge_runtime.scoring.discrepancy.CumulativeDiscrepancy` folds in the
batch's mean per-modality confidences, ``D_t = gamma D_{t-1} + (mean p_a - mean p_v)``.  Each
update replays the usual uniform batch plus ``n_t = round(n_max * (1 - gamma) |D_t|)`` extra buffer
samples of the weaker modality (video when ``D_t > 0``), which the learner passes through that
modality's unimodal head only (cross-entropy weighted by ``replay.dus_weight``), so the lagging
encoder gets more gradient.  The paper's PPO-driven variant is not implemented.
"""

from __future__ import annotations

from typing import Any, Mapping

from edge_runtime.config import ReplayConfig
from edge_runtime.scoring.discrepancy import CumulativeDiscrepancy
from edge_runtime.selection.base import Forward, ReplayPlan, ReplayPolicy, StepContext


class DUSReplay(ReplayPolicy):
    def __init__(self, cfg: ReplayConfig, replay_batch_size: int, seed: int = 0) -> None:
        self.cfg = cfg
        self.n_max = replay_batch_size if cfg.dus_max is None else cfg.dus_max
        self.monitor = CumulativeDiscrepancy(cfg.dus_gamma)

    def observe(self, ctx: StepContext) -> None:
        self.monitor.update(ctx.p_audio, ctx.p_video)

    def plan(self, buffer, n: int, forward: Forward) -> ReplayPlan:
        if not len(buffer):
            return ReplayPlan([])
        samples = buffer.sample(n) if n > 0 else []
        extra = self.monitor.quantity(self.n_max, self.cfg.dus_epsilon)
        weak = self.monitor.weaker
        if extra and weak is not None:
            return ReplayPlan(samples, {weak: buffer.sample(extra)})
        return ReplayPlan(samples)

    def state_dict(self) -> dict[str, Any]:
        return {"monitor": self.monitor.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if "monitor" in state:
            self.monitor.load_state_dict(state["monitor"])
