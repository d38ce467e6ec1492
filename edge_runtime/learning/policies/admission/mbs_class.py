"""MBS within each class (issue 14): class-balanced admission by modality balance.

The batch keeps ``K = max(1, floor(keep_ratio * n))`` samples, as every keep-ratio policy, shared
among the classes present in proportion to their counts (quota ``keep_ratio * n_c``: its floor,
and the rows left over go to the largest fractional parts, ties to the smaller label); each class c
keeps its quota of samples of smallest deviation from the centre, pooled across sides (as
``mbs-pooled``), so a class whose samples are all one-sided is not crowded out by the others.  The centre: ``median`` is the median
MBS *of the class in this batch* (modality balance differs between classes: in the MBS paper's
AVE some events are audio events, others visual ones); ``running`` the stream's running median
(all classes); ``one`` is 1.  Ties go to the lower index; NaN rows are never kept.

N > 2 modalities: each class keeps its quota of smallest spread ``max_m log p_m - min_m log p_m``
(ours; the centre and deviation settings are ignored, as for ``mbs``: see
:mod:`edge_runtime.learning.policies.admission.mbs`).
"""

from __future__ import annotations

from typing import Callable

import math

import torch

from edge_runtime.core.policy_settings import MBSClassSettings
from edge_runtime.learning.policies.base import StepContext, keep_count
from edge_runtime.learning.policies.admission.mbs import Center, MBSPolicy, centre_and_deviation, check_mbs


def class_quotas(counts: dict[int, int], keep_ratio: float) -> dict[int, int]:
    """Rows kept per class: ``K = keep_count(keep_ratio, n)`` shared by largest remainder of ``keep_ratio * n_c``."""
    k = keep_count(keep_ratio, sum(counts.values()))
    exact = {c: keep_ratio * n for c, n in counts.items()}
    quota = {c: min(counts[c], int(math.floor(round(x, 9)))) for c, x in exact.items()}
    order = sorted(counts, key=lambda c: (-round(exact[c] - math.floor(exact[c]), 9), c))  # rounded: 0.6 * 6 ties 0.6 * 1
    i = 0
    while sum(quota.values()) < k and i < 2 * len(order):
        c = order[i % len(order)]
        if quota[c] < counts[c]:
            quota[c] += 1
        i += 1
    return quota


def _smallest_per_class(labels: torch.Tensor, keep_ratio: float,
                        deviation_of: Callable[[torch.Tensor], torch.Tensor | None], device: torch.device) -> torch.Tensor:
    """Sorted indices: per class, its quota (:func:`class_quotas`) of rows of smallest deviation (ties to the
    lower index, NaN never kept); ``deviation_of(rows)`` gives the class's deviations (None: keep none)."""
    classes = torch.unique(labels).tolist()
    rows_of = {c: torch.nonzero(labels == c).squeeze(1) for c in classes}
    quota = class_quotas({c: int(r.numel()) for c, r in rows_of.items()}, keep_ratio)
    chosen = []
    for c in classes:
        rows = rows_of[c]
        d = deviation_of(rows)
        if d is not None and quota[c]:
            valid = torch.nonzero(~torch.isnan(d)).squeeze(1)
            order = torch.argsort(d.index_select(0, valid), stable=True)[: quota[c]]
            chosen.append(rows.index_select(0, valid.index_select(0, order)))
    if not chosen:
        return torch.empty(0, dtype=torch.long, device=device)
    indices, _ = torch.sort(torch.cat(chosen))
    return indices


def _same_shape(labels: torch.Tensor, values: torch.Tensor, what: str) -> torch.Tensor:
    labels = torch.as_tensor(labels)
    if labels.shape != values.shape:
        raise ValueError(f"labels and {what} must have the same shape (got {tuple(labels.shape)} and {tuple(values.shape)})")
    return labels


def select_per_class(mbs: torch.Tensor, labels: torch.Tensor, keep_ratio: float, center: Center = "median",
                     deviation: str = "ratio") -> tuple[torch.Tensor, torch.Tensor]:
    """``(indices, per-row deviation)``: per class, the smallest deviations from that class's centre."""
    mbs = check_mbs(mbs)
    labels = _same_shape(labels, mbs, "mbs")
    dev = torch.full_like(mbs, float("nan"))

    def deviation_of(rows: torch.Tensor) -> torch.Tensor | None:
        m, d = centre_and_deviation(mbs.index_select(0, rows), center, deviation)  # type: ignore[arg-type]
        dev[rows] = d
        return d if m is not None else None

    return _smallest_per_class(labels, keep_ratio, deviation_of, mbs.device), dev


def select_per_class_by_score(score: torch.Tensor, labels: torch.Tensor, keep_ratio: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(indices, score)``: per class, its quota (:func:`class_quotas`) of rows of smallest ``score``
    (ties to the lower index, NaN never kept), sorted; the N > 2 path of ``mbs-class``."""
    labels = _same_shape(labels, score, "score")
    return _smallest_per_class(labels, keep_ratio, lambda rows: score.index_select(0, rows), score.device), score


class MBSClassPolicy(MBSPolicy):
    """MBS selection within each class of the batch (see the module docstring)."""

    Settings = MBSClassSettings

    def choose(self, score: torch.Tensor, center: Center, ctx: StepContext) -> tuple[torch.Tensor, torch.Tensor]:
        return select_per_class(score, ctx.labels, self.cfg.keep_ratio, center, self.cfg.deviation)

    def choose_spread(self, score: torch.Tensor, ctx: StepContext) -> tuple[torch.Tensor, torch.Tensor]:
        return select_per_class_by_score(score, ctx.labels, self.cfg.keep_ratio)
