"""EL2N selection (Paul et al. 2021): keep the ``keep_ratio`` share of the batch by EL2N score.

The MBS paper's baseline keeps the smallest scores (easy samples); ``selection.direction:
largest`` keeps the hardest instead.  The score is returned as the per-row ``deviation`` so the
buffer's ``mbs`` retention can use it as well.
"""

from __future__ import annotations

from edge_runtime.core.policy_settings import EL2NSettings
from edge_runtime.learning.policies.scoring.el2n import el2n
from edge_runtime.learning.policies.base import Selection, SelectionPolicy, StepContext, keep_by_score


class EL2NPolicy(SelectionPolicy):
    Settings = EL2NSettings

    def __init__(self, cfg: EL2NSettings, seed: int = 0) -> None:
        self.cfg = cfg
        self.largest = cfg.direction == "largest"

    def select(self, ctx: StepContext) -> Selection:
        score = el2n(ctx.output.logits, ctx.labels)
        return Selection(indices=keep_by_score(score, self.cfg.keep_ratio, self.largest), deviation=score)
