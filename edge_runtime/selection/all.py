"""BASE: keep every sample of the batch (the control of the MBS paper's Experiment B)."""

from __future__ import annotations

from typing import Literal

import torch

from pydantic import Field

from edge_runtime.selection.base import Selection, SelectionPolicy, StepContext
from edge_runtime.selection.settings import SelectionSettings


class AllSettings(SelectionSettings):
    """``all`` has no settings of its own (it keeps everything, so it trains on everything)."""

    policy: Literal["all"] = "all"
    train_on: Literal["selected", "all"] = Field("all", description="the same either way: every row is selected")


class KeepAllPolicy(SelectionPolicy):
    """Select every row."""

    Settings = AllSettings

    def __init__(self, cfg: AllSettings, seed: int = 0) -> None:
        self.cfg = cfg

    def select(self, ctx: StepContext) -> Selection:
        return Selection(indices=torch.arange(int(ctx.labels.shape[0]), device=ctx.labels.device))
