"""DUS replay ("Rebalanced Multimodal Learning with Data-aware Unimodal Sampling"; our reading, see below).

Each step the :class:`~edge_runtime.learning.policies.scoring.discrepancy.CumulativeDiscrepancy` folds in the
batch's mean per-modality confidences, ``D_t^m = gamma D_{t-1}^m + (mu^m - mean_{k != m} mu^k)`` for
each of the N >= 2 modalities (at N = 2: ``D_t = gamma D_{t-1} + (mean p_1 - mean p_2)`` and its
negative).  Each update replays the usual uniform batch plus ``n_t = round(n_max * iota_t)`` extra
buffer samples, ``iota_t = (1 - gamma) (N - 1) / N (max_m D_t^m - min_m D_t^m)`` (``(1 - gamma) |D_t|``
at N = 2), of the weaker modality (lowest ``D_t^m``; the second when ``D_t > 0`` at N = 2), which DUS's
own loss term passes through that modality's unimodal head ``unimodal[name]`` only (cross-entropy
weighted by ``replay.weight``), so the lagging encoder gets more gradient.  The paper's PPO-driven
variant is not implemented.  One modality is a ValueError.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
import torch.nn.functional as F

from edge_runtime.core.policy_settings import DUSSettings
from edge_runtime.learning.policies.scoring.discrepancy import CumulativeDiscrepancy
from edge_runtime.learning.policies.base import Forward, ReplayPlan, ReplayPolicy, StepContext, UpdateStep, check_modality_count


class DUSReplay(ReplayPolicy):
    """Uniform replay plus ``{weaker modality name: extra samples}`` in the plan's ``extra``, for :meth:`loss`."""

    Settings = DUSSettings

    def __init__(self, cfg: DUSSettings, replay_batch_size: int, seed: int = 0) -> None:
        self.cfg = cfg
        self.n_max = replay_batch_size if cfg.max_extra is None else cfg.max_extra
        self.monitor = CumulativeDiscrepancy(cfg.gamma)

    def check_modalities(self, names) -> None:
        names = check_modality_count("dus", names, 2, why="compares the modalities' confidences")
        self.monitor.bind(names)

    def observe(self, ctx: StepContext) -> None:
        self.monitor.update(ctx.p)

    def plan(self, buffer, n: int, forward: Forward) -> ReplayPlan:
        if not len(buffer):
            return ReplayPlan([])
        samples = buffer.sample(n) if n > 0 else []
        extra = self.monitor.quantity(self.n_max, self.cfg.epsilon)
        weak = self.monitor.weaker
        if extra and weak is not None:
            return ReplayPlan(samples, {weak: buffer.sample(extra)})
        return ReplayPlan(samples)

    def loss(self, step: UpdateStep) -> torch.Tensor | None:
        """``weight * CE`` of the planned extra samples through the weaker modality's unimodal head only."""
        total = None
        for modality, extra in (step.plan.extra or {}).items():
            if extra:
                out, labels = step.forward(extra)
                term = self.cfg.weight * F.cross_entropy(out.unimodal[modality].float(), labels)
                total = term if total is None else total + term
        return total

    def state_dict(self) -> dict[str, Any]:
        return {"monitor": self.monitor.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if "monitor" in state:
            self.monitor.load_state_dict(state["monitor"])
