"""MBS within each class (issue 14): class-balanced admission by modality balance.

The batch is split by label; each class c with ``n_c`` samples keeps its ``max(1, floor(keep_ratio
* n_c))`` samples of smallest deviation from the centre, pooled across sides (as ``mbs-pooled``),
so every class present in the batch is admitted in proportion to its share and a class whose
samples are all one-sided is not crowded out by the others.  The centre: ``median`` is the median
MBS *of the class in this batch* (modality balance differs between classes: in the MBS paper's
AVE some events are audio events, others visual ones); ``running`` the stream's running median
(all classes); ``one`` is 1.  Ties go to the lower index; NaN rows are never kept.
"""

from __future__ import annotations

from typing import Literal

import torch

from edge_runtime.selection.base import StepContext, keep_by_score
from edge_runtime.selection.mbs import Center, MBSFamilySettings, MBSPolicy, centre_and_deviation, check_mbs


class MBSClassSettings(MBSFamilySettings):
    """``mbs-class``: the family's centre (per class for ``median``) and deviation."""

    policy: Literal["mbs-class"] = "mbs-class"


def select_per_class(mbs: torch.Tensor, labels: torch.Tensor, keep_ratio: float, center: Center = "median",
                     deviation: str = "ratio") -> tuple[torch.Tensor, torch.Tensor]:
    """``(indices, per-row deviation)``: per class, the smallest deviations from that class's centre."""
    mbs = check_mbs(mbs)
    labels = torch.as_tensor(labels)
    if labels.shape != mbs.shape:
        raise ValueError(f"labels and mbs must have the same shape (got {tuple(labels.shape)} and {tuple(mbs.shape)})")
    dev = torch.full_like(mbs, float("nan"))
    chosen = []
    for c in torch.unique(labels).tolist():
        rows = torch.nonzero(labels == c).squeeze(1)
        m, d = centre_and_deviation(mbs.index_select(0, rows), center, deviation)  # type: ignore[arg-type]
        dev[rows] = d
        if m is not None:
            chosen.append(rows.index_select(0, keep_by_score(d, keep_ratio, largest=False)))
    if not chosen:
        return torch.empty(0, dtype=torch.long, device=mbs.device), dev
    indices, _ = torch.sort(torch.cat(chosen))
    return indices, dev


class MBSClassPolicy(MBSPolicy):
    """MBS selection within each class of the batch (see the module docstring)."""

    Settings = MBSClassSettings

    def choose(self, score: torch.Tensor, center: Center, ctx: StepContext) -> tuple[torch.Tensor, torch.Tensor]:
        return select_per_class(score, ctx.labels, self.cfg.keep_ratio, center, self.cfg.deviation)
