"""GraNd selection (Paul et al. 2021): keep the ``keep_ratio`` share of the batch by gradient norm.

Keeps the largest per-sample gradient norms by default (``selection.direction: smallest`` for the
opposite); ``selection.grad_params`` picks the fusion head (vmap, cheap) or every parameter.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from edge_runtime.scoring.grand import grand
from edge_runtime.selection.base import Selection, SelectionPolicy, StepContext, keep_by_score
from edge_runtime.selection.settings import KeepRatioSettings


class GraNdSettings(KeepRatioSettings):
    """``grand``: which end of the score is kept, and over which parameters the gradient is taken."""

    policy: Literal["grand"] = "grand"
    direction: Literal["smallest", "largest"] = Field("largest", description="keep the largest (the paper's baseline) or smallest norms")
    grad_params: Literal["last_layer", "all"] = Field("last_layer", description="gradient over the fusion head (vmap) or every parameter")


class GraNdPolicy(SelectionPolicy):
    Settings = GraNdSettings

    def __init__(self, cfg: GraNdSettings, seed: int = 0) -> None:
        self.cfg = cfg
        self.largest = cfg.direction == "largest"

    def select(self, ctx: StepContext) -> Selection:
        with torch.enable_grad():
            score = grand(ctx.model, ctx.batch.inputs(), ctx.labels, self.cfg.grad_params,
                          z=(ctx.output.z_audio, ctx.output.z_video)).detach()
        return Selection(indices=keep_by_score(score, self.cfg.keep_ratio, self.largest), deviation=-score if self.largest else score)
