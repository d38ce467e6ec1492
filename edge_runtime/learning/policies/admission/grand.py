"""GraNd selection (Paul et al. 2021): keep the ``keep_ratio`` share of the batch by gradient norm.

Keeps the largest per-sample gradient norms by default (``selection.direction: smallest`` for the
opposite); ``selection.grad_params`` picks the fusion head (vmap, cheap) or every parameter.
Any number of modalities.
"""

from __future__ import annotations

import torch

from edge_runtime.core.policy_settings import GraNdSettings
from edge_runtime.learning.policies.scoring.grand import grand
from edge_runtime.learning.policies.base import Selection, SelectionPolicy, StepContext, keep_by_score


class GraNdPolicy(SelectionPolicy):
    Settings = GraNdSettings

    def __init__(self, cfg: GraNdSettings, seed: int = 0) -> None:
        self.cfg = cfg
        self.largest = cfg.direction == "largest"

    def select(self, ctx: StepContext) -> Selection:
        with torch.enable_grad():
            score = grand(ctx.model, ctx.batch.inputs(), ctx.labels, self.cfg.grad_params, z=ctx.output.z).detach()
        return Selection(indices=keep_by_score(score, self.cfg.keep_ratio, self.largest), deviation=-score if self.largest else score)
