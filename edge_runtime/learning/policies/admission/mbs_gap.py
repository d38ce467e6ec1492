"""Confidence-gap selection (issue 14): modality balance as ``|p_audio - p_video|`` instead of a ratio.

MBS measures balance as the ratio ``p_audio / p_video`` of the true class's per-modality
confidences (MBS paper, Eq. 1); balance is MBS = 1, i.e. ``p_audio = p_video``.  A ratio of two
small numbers is large whenever either is small, so a *hard* sample (both confidences low, e.g.
0.2 and 0.1: MBS 2, |log MBS| 0.69) looks as one-sided as a corrupted one (0.8 and 0.4), and
keeping the smallest deviations keeps the easy samples (the diagnosis in docs/results.md).  The gap
``|p_audio - p_video|`` has the same balance point (0 exactly when MBS = 1) but stays small when
both confidences are small: it flags a sample only when one modality is confident and the other
is not.  This policy keeps the ``K = max(1, floor(keep_ratio * n))`` rows of smallest gap (ties to
the lower index, NaN never kept); the default ``keep_ratio: 0.8`` drops only the most one-sided
fifth.  Every row's gap is handed to the buffer as its deviation (for ``buffer.retention: mbs``).
"""

from __future__ import annotations

import torch

from edge_runtime.core.policy_settings import MBSGapSettings
from edge_runtime.learning.policies.base import Selection, SelectionPolicy, StepContext, keep_by_score


def confidence_gap(p_audio: torch.Tensor, p_video: torch.Tensor) -> torch.Tensor:
    """``|p_audio - p_video|`` per row (float32); NaN where either confidence is not finite."""
    pa, pv = p_audio.float(), p_video.float()
    gap = (pa - pv).abs()
    return torch.where(torch.isfinite(pa) & torch.isfinite(pv), gap, torch.full_like(gap, float("nan")))


def select_gap(p_audio: torch.Tensor, p_video: torch.Tensor, keep_ratio: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(sorted indices, per-row gap)``: the ``max(1, floor(keep_ratio * n))`` rows of smallest gap."""
    if p_audio.shape != p_video.shape or p_audio.dim() != 1:
        raise ValueError(f"p_audio and p_video must be 1-D of the same length (got {tuple(p_audio.shape)} and {tuple(p_video.shape)})")
    gap = confidence_gap(p_audio, p_video)
    if gap.numel() == 0:
        return torch.empty(0, dtype=torch.long, device=gap.device), gap
    return keep_by_score(gap, keep_ratio, largest=False), gap


class MBSGapPolicy(SelectionPolicy):
    """Keep the most balanced rows by confidence gap (see the module docstring)."""

    Settings = MBSGapSettings

    def __init__(self, cfg: MBSGapSettings, seed: int = 0) -> None:
        self.cfg = cfg

    def select(self, ctx: StepContext) -> Selection:
        indices, gap = select_gap(ctx.p_audio, ctx.p_video, self.cfg.keep_ratio)
        return Selection(indices=indices, deviation=gap)
