"""BASE: keep every sample of the batch (the control of the MBS paper's Experiment B)."""

from __future__ import annotations

import torch

from edge_runtime.core.policy_settings import AllSettings
from edge_runtime.learning.policies.base import Selection, SelectionPolicy, StepContext


class KeepAllPolicy(SelectionPolicy):
    """Select every row."""

    Settings = AllSettings

    def __init__(self, cfg: AllSettings, seed: int = 0) -> None:
        self.cfg = cfg

    def select(self, ctx: StepContext) -> Selection:
        return Selection(indices=torch.arange(int(ctx.labels.shape[0]), device=ctx.labels.device))
