"""Pooled MBS selection (issue 14): the ``keep_ratio * n`` samples of smallest deviation, whatever their side.

Algorithm 1 keeps ``K = floor(rho * n / 2)`` samples on *each* side of the centre, so a batch with
many one-sided samples (e.g. corrupted video: MBS far above the centre) must still admit K of the
right side, however far they are.  This variant pools both sides: with ``K = max(1, floor(rho *
n))`` it keeps the K rows of smallest deviation ``|MBS - m|`` (or ``|log MBS - log m|``) from the
configured centre (batch median, running median or 1), ties to the lower index, NaN never kept.
With ``keep_ratio: 1`` it keeps everything but still hands every row's deviation to the buffer
(for ``buffer.retention: mbs``).

N > 2 modalities: the deviation is the spread ``max_m log p_m - min_m log p_m`` (ours; centre and
deviation settings ignored), as for ``mbs`` (see :mod:`edge_runtime.learning.policies.admission.mbs`),
which pools its rows at N > 2 as well.
"""

from __future__ import annotations

import torch

from edge_runtime.core.policy_settings import MBSPooledSettings
from edge_runtime.learning.policies.base import StepContext, keep_by_score
from edge_runtime.learning.policies.admission.mbs import Center, MBSPolicy, centre_and_deviation, check_mbs


def select_pooled(mbs: torch.Tensor, keep_ratio: float, center: Center = "median", deviation: str = "ratio") -> tuple[torch.Tensor, torch.Tensor]:
    """``(indices, per-row deviation)``: the ``max(1, floor(keep_ratio * n))`` smallest deviations, sorted."""
    mbs = check_mbs(mbs)
    m, dev = centre_and_deviation(mbs, center, deviation)  # type: ignore[arg-type]
    if m is None:
        return torch.empty(0, dtype=torch.long, device=mbs.device), dev
    return keep_by_score(dev, keep_ratio, largest=False), dev


class MBSPooledPolicy(MBSPolicy):
    """MBS with one pool instead of two sides (see the module docstring)."""

    Settings = MBSPooledSettings

    def choose(self, score: torch.Tensor, center: Center, ctx: StepContext) -> tuple[torch.Tensor, torch.Tensor]:
        return select_pooled(score, self.cfg.keep_ratio, center, self.cfg.deviation)
