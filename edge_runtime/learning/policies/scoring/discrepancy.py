"""DUS monitor: a cumulative modality discrepancy (our reading of the DUS paper).

The DUS paper ("Rebalanced Multimodal Learning with Data-aware Unimodal Sampling") monitors
learning with a *cumulative modality discrepancy* and sets, per iteration, how many unimodal
samples to draw; its exact formulas are not public.  What this module implements, and docs/policies.md
states as our reading:

* per step t, the discrepancy ``d_t = mean_i p_a(x_i) - mean_i p_v(x_i)`` of the per-modality
  confidences of the true class over the step's labelled samples (in [-1, 1]; the confidences
  of the learning step, step 2 (docs/design.md));
* cumulative, discounted: ``D_t = gamma * D_{t-1} + d_t`` (gamma = 0.9 by default), so a lasting
  imbalance accumulates while a one-off batch fades; ``|D_t| <= 1 / (1 - gamma)``;
* imbalance level ``iota_t = (1 - gamma) * |D_t|`` in [0, 1]; the weaker modality is video when
  ``D_t > 0`` and audio when ``D_t < 0``;
* heuristic quantity: ``n_t = round(n_max * iota_t)`` extra samples of the weaker modality,
  replayed through its unimodal head (only where ``iota_t`` exceeds a dead band ``epsilon``).
"""

from __future__ import annotations

from typing import Any, Mapping

import torch


class CumulativeDiscrepancy:
    """``D_t = gamma * D_{t-1} + (mean p_a - mean p_v)`` over the stream."""

    def __init__(self, gamma: float = 0.9) -> None:
        if not 0.0 <= gamma < 1.0:
            raise ValueError(f"gamma must be in [0, 1) (got {gamma})")
        self.gamma = gamma
        self.value = 0.0
        self.steps = 0

    def update(self, p_audio: torch.Tensor, p_video: torch.Tensor) -> float:
        """Fold in one step's confidences; returns the new ``D_t``."""
        valid = ~(torch.isnan(p_audio) | torch.isnan(p_video))
        if bool(valid.any()):
            d = float(p_audio[valid].float().mean() - p_video[valid].float().mean())
            self.value = self.gamma * self.value + d
            self.steps += 1
        return self.value

    @property
    def imbalance(self) -> float:
        """``iota_t = (1 - gamma) |D_t|`` in [0, 1]."""
        return min(1.0, (1.0 - self.gamma) * abs(self.value))

    @property
    def weaker(self) -> str | None:
        """``"video"`` when audio leads, ``"audio"`` when video leads, None when even."""
        if self.value > 0:
            return "video"
        if self.value < 0:
            return "audio"
        return None

    def quantity(self, n_max: int, epsilon: float = 0.0) -> int:
        """Heuristic number of extra weaker-modality samples: ``round(n_max * iota_t)`` (0 inside the dead band)."""
        level = self.imbalance
        if level <= epsilon or self.weaker is None:
            return 0
        return int(round(n_max * level))

    def state_dict(self) -> dict[str, Any]:
        return {"value": self.value, "steps": self.steps}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.value = float(state["value"])
        self.steps = int(state["steps"])
