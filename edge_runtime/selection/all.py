"""BASE: keep every sample of the batch (the control of the MBS paper's Experiment B)."""

from __future__ import annotations

import torch

from edge_runtime.config import SelectionConfig
from edge_runtime.selection.base import Selection, SelectionPolicy, StepContext


class KeepAllPolicy(SelectionPolicy):
    """Select every row (``keep_ratio`` is ignored)."""

    def __init__(self, cfg: SelectionConfig, seed: int = 0) -> None:
        self.cfg = cfg

    def select(self, ctx: StepContext) -> Selection:
        return Selection(indices=torch.arange(int(ctx.labels.shape[0]), device=ctx.labels.device))
