"""Confidence-gap selection (issue 14): modality balance as ``|p_1 - p_2|`` instead of a ratio.

MBS measures balance as the ratio ``p_1 / p_2`` of the true class's per-modality confidences (MBS
paper, Eq. 1; audio over video by default); balance is MBS = 1, i.e. ``p_1 = p_2``.  A ratio of two
small numbers is large whenever either is small, so a *hard* sample (both confidences low, e.g.
0.2 and 0.1: MBS 2, |log MBS| 0.69) looks as one-sided as a corrupted one (0.8 and 0.4), and
keeping the smallest deviations keeps the easy samples (the diagnosis in docs/results.md).  The gap
``|p_1 - p_2|`` has the same balance point (0 exactly when MBS = 1) but stays small when both
confidences are small: it flags a sample only when one modality is confident and the other is not.
This policy keeps the ``K = max(1, floor(keep_ratio * n))`` rows of smallest gap (ties to the lower
index, NaN never kept); the default ``keep_ratio: 0.8`` drops only the most one-sided fifth.  Every
row's gap is handed to the buffer as its deviation (for ``buffer.retention: mbs``).

N > 2 modalities (our generalisation): the gap is ``max_m p_m - min_m p_m``, the distance between
the most and the least confident modality (:func:`~edge_runtime.learning.policies.scoring.mbs.confidence_spread`;
``|p_1 - p_2|`` at N = 2).  One modality is a ValueError.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import torch

from edge_runtime.core.policy_settings import MBSGapSettings
from edge_runtime.learning.policies.admission.mbs import check_balance_modalities
from edge_runtime.learning.policies.base import Selection, SelectionPolicy, StepContext, keep_by_score
from edge_runtime.learning.policies.scoring.mbs import confidence_columns, confidence_spread

Confidences = Mapping[str, torch.Tensor] | Sequence[torch.Tensor] | torch.Tensor


def confidence_gap(p: Confidences) -> torch.Tensor:
    """The gap per row (float32): ``|p_1 - p_2|`` for two modalities, ``max_m p_m - min_m p_m`` for more;
    NaN where any confidence is not finite.  ``p``: name -> (B,), a sequence of (B,) or (B, N)."""
    cols = confidence_columns(p)
    if cols.shape[1] != 2:
        return confidence_spread(cols)
    pa, pv = cols[:, 0].float(), cols[:, 1].float()
    gap = (pa - pv).abs()
    return torch.where(torch.isfinite(pa) & torch.isfinite(pv), gap, torch.full_like(gap, float("nan")))


def select_gap(p: Mapping[str, torch.Tensor] | Sequence[torch.Tensor], keep_ratio: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(sorted indices, per-row gap)``: the ``max(1, floor(keep_ratio * n))`` rows of smallest gap.

    ``p``: the confidences, name -> (B,) or a sequence of (B,) tensors (one per modality, in order)."""
    columns = [torch.as_tensor(c) for c in (p.values() if isinstance(p, Mapping) else p)]
    shapes = sorted({tuple(c.shape) for c in columns})
    if len(shapes) != 1 or len(shapes[0]) != 1:
        raise ValueError(f"the confidences must be 1-D of the same length, one per modality (got shapes {shapes})")
    gap = confidence_gap(columns)
    if gap.numel() == 0:
        return torch.empty(0, dtype=torch.long, device=gap.device), gap
    return keep_by_score(gap, keep_ratio, largest=False), gap


class MBSGapPolicy(SelectionPolicy):
    """Keep the most balanced rows by confidence gap (see the module docstring)."""

    Settings = MBSGapSettings

    def __init__(self, cfg: MBSGapSettings, seed: int = 0) -> None:
        self.cfg = cfg

    def check_modalities(self, names) -> None:
        check_balance_modalities(self.cfg.policy, names)

    def select(self, ctx: StepContext) -> Selection:
        self.check_modalities(ctx.modalities)
        indices, gap = select_gap(ctx.p, self.cfg.keep_ratio)
        return Selection(indices=indices, deviation=gap)
