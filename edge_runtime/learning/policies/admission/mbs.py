"""MBS selection: Algorithm 1 of the MBS paper ("Multimodal Sample Selection based on MBS").

Given the MBS of every sample of a batch (``MBS_i = p_i^a / p_i^v``, lines 1-9):

- line 10: centre ``m`` = median of the batch MBS (numpy-style: the mean of the two middle values
  for an even count).  Also available: ``"one"`` (m = 1, the paper's theoretical strategy), a
  given float, and in :class:`MBSPolicy` ``"running"`` (median over the recent stream);
- lines 11-18: split into a left side (MBS <= m) and a right side (MBS > m), each sample with its
  deviation ``|MBS - m|`` (or ``|log MBS - log m|``);
- line 19: sort each side by deviation, ascending (stable: ties go to the lower index);
- line 20: ``K = floor(rho * n / 2)`` with rho the KEEP ratio;
- lines 21-24: keep the K samples of smallest deviation of each side (fewer when a side has
  fewer than K; the other side does not make up for it).

Where the split is: the paper's Algorithm 1 splits at 1 (line 13: ``0 < MBS <= 1``, line 15:
``MBS > 1``) while measuring the deviation from m.  The learning step, step 4 (docs/design.md), and the selection issue split
at the centre m instead, which is what this module does by default (``split="center"``);
``split="one"`` is the paper's lines 13-16 word for word (a sample with MBS exactly 0 is on no
side and never kept).  With ``center="one"`` both coincide except for MBS = 0.

Variants of the family (issue 14) reuse :class:`MBSPolicy` and override :meth:`MBSPolicy.choose`:
``mbs-pooled`` (:mod:`edge_runtime.learning.policies.admission.mbs_pooled`) and ``mbs-class``
(:mod:`edge_runtime.learning.policies.admission.mbs_class`).

Rows whose MBS is NaN (a diverged model) are never selected and do not enter the median; n in K
is still the batch size.

Modalities: with two (the default audio + video, or any two) ``MBS = p_1 / p_2``, the first over
the second in the model's order, and everything above holds as written.  With N > 2 (our
generalisation, not the paper's) the score is the spread ``s = max_m log p_m - min_m log p_m``
(:func:`~edge_runtime.learning.policies.scoring.mbs.spread`, ``|log MBS|`` at N = 2) and the policy keeps
the ``K = max(1, floor(keep_ratio * n))`` rows of smallest spread (the most balanced; ties to the
lower index, NaN never kept), handing every row's spread to the buffer as its deviation.  ``center``,
``running_window``, ``deviation`` and ``split`` are then ignored: the spread is already the distance
from perfect balance on the log scale (at N = 2 it is the ``center: one``, ``deviation: log``
deviation), N modalities have N - 1 independent ratios and no single ratio for a batch or running
median to centre, and Algorithm 1's two sides are the two directions of imbalance (which modality
dominates), of which N modalities have N, so the rows are pooled as in ``mbs-pooled``.  One modality
is a ValueError (there is nothing to balance).
"""

from __future__ import annotations

import math
from typing import Any, Literal, Mapping

import torch

from edge_runtime.core.policy_settings import MBSFamilySettings, MBSSettings
from edge_runtime.learning.policies.scoring.mbs import Deviation, mbs as mbs_score, mbs_deviation, spread
from edge_runtime.learning.policies.base import Selection, SelectionPolicy, StepContext, check_modality_count, keep_by_score
from edge_runtime.learning.policies.running_median import RunningMedian

Center = Literal["median", "running", "one"] | float


def _check_keep_ratio(keep_ratio: float) -> float:
    ratio = float(keep_ratio)
    if not (0.0 < ratio <= 1.0):  # also rejects NaN
        raise ValueError(f"keep_ratio must be in (0, 1] (got {keep_ratio!r})")
    return ratio


def batch_median(values: torch.Tensor) -> torch.Tensor:
    """numpy-style median of a 1-D tensor (mean of the two middle values for an even count), 0-dim.

    Algorithm 1 line 10.  NaN values are ignored; raises ValueError when nothing is left.
    """
    v = values[~torch.isnan(values)]
    n = v.numel()
    if n == 0:
        raise ValueError("median of an empty set of MBS values")
    s, _ = torch.sort(v)
    mid = n // 2
    if n % 2:
        return s[mid]
    return (s[mid - 1] + s[mid]) / 2


def _resolve_center(mbs: torch.Tensor, center: Center) -> torch.Tensor | None:
    """The centre m as a 0-dim tensor of ``mbs``'s dtype, or None when there is no valid MBS."""
    if isinstance(center, str):
        if center == "median":
            if bool(torch.isnan(mbs).all()):
                return None
            return batch_median(mbs)
        if center == "one":
            return torch.ones((), dtype=mbs.dtype, device=mbs.device)
        if center == "running":
            raise ValueError("center='running' needs the stream's running median: use MBSPolicy, or pass that median as a float")
        raise ValueError(f"center must be 'median', 'running', 'one' or a float >= 0 (got {center!r})")
    value = float(center)
    if not (math.isfinite(value) and value >= 0.0):
        raise ValueError(f"center must be a finite number >= 0 (got {center!r})")
    return torch.tensor(value, dtype=mbs.dtype, device=mbs.device)


Split = Literal["center", "one"]


def check_mbs(mbs: torch.Tensor) -> torch.Tensor:
    """``mbs`` as a 1-D floating tensor of values >= 0; ValueError otherwise."""
    mbs = torch.as_tensor(mbs)
    if mbs.dim() != 1:
        raise ValueError(f"mbs must be a 1-D tensor (got shape {tuple(mbs.shape)})")
    if not mbs.dtype.is_floating_point:
        mbs = mbs.to(torch.get_default_dtype())
    if bool((mbs < 0).any()):
        raise ValueError("MBS values must be >= 0 (a ratio of two probabilities)")
    return mbs


def centre_and_deviation(mbs: torch.Tensor, center: Center, deviation: Deviation) -> tuple[torch.Tensor | None, torch.Tensor]:
    """The centre m (None when no MBS is valid) and every row's deviation from it (NaN without a centre)."""
    if deviation not in ("ratio", "log"):
        raise ValueError(f"deviation must be 'ratio' or 'log' (got {deviation!r})")
    m = _resolve_center(mbs, center) if mbs.numel() else None
    if m is None:
        return None, torch.full_like(mbs, float("nan"))
    return m, mbs_deviation(mbs, m, deviation)


def select_with_deviation(
    mbs: torch.Tensor, keep_ratio: float, center: Center = "median", deviation: Deviation = "ratio", split: Split = "center"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Algorithm 1 (lines 10-24): ``(indices, per-row deviation)``; see :func:`select`."""
    ratio = _check_keep_ratio(keep_ratio)
    if split not in ("center", "one"):
        raise ValueError(f"split must be 'center' or 'one' (got {split!r})")
    mbs = check_mbs(mbs)
    n = mbs.numel()
    empty = torch.empty(0, dtype=torch.long, device=mbs.device)
    m, dev = centre_and_deviation(mbs, center, deviation)  # lines 10, 14, 16
    if m is None:
        return empty, dev
    k = int(math.floor(ratio * n / 2))  # line 20
    if k == 0:
        return empty, dev
    chosen = []
    sides = (mbs <= m, mbs > m) if split == "center" else ((mbs > 0) & (mbs <= 1), mbs > 1)
    for side in sides:  # lines 13, 15 (split at the centre m, or at 1 as the paper writes; NaN is on no side)
        rows = torch.nonzero(side).squeeze(1)
        order = torch.argsort(dev.index_select(0, rows), stable=True)  # line 19
        chosen.append(rows.index_select(0, order[:k]))  # lines 22-23
    indices, _ = torch.sort(torch.cat(chosen))
    return indices, dev


def select(mbs: torch.Tensor, keep_ratio: float, center: Center = "median", deviation: Deviation = "ratio",
           split: Split = "center") -> torch.Tensor:
    """Row indices kept by Algorithm 1 of the MBS paper, sorted ascending (LongTensor).

    ``mbs``: 1-D MBS of the batch (Algorithm 1 lines 1-9).  ``center``: ``"median"`` (line 10,
    numpy-style), ``"one"`` or a float >= 0 (``"running"`` is resolved by :class:`MBSPolicy`).
    Left side ``MBS <= m``, right side ``MBS > m`` (lines 11-18, split at m; see the module
    docstring for how this relates to the paper's split at 1).  ``K = floor(keep_ratio * n / 2)``
    (line 20); the K smallest deviations of each side (line 19, ties to the lower index) are kept
    (lines 22-23), fewer if a side has fewer than K, with no refilling from the other side.
    A tiny ``keep_ratio`` giving K = 0 selects nothing.  ``keep_ratio`` must be in (0, 1].
    ``split="one"``: the sides are ``0 < MBS <= 1`` and ``MBS > 1`` (the paper's lines 13-16).
    """
    return select_with_deviation(mbs, keep_ratio, center, deviation, split)[0]


def check_balance_modalities(policy: str, names) -> tuple[str, ...]:
    """The modality names; ValueError for fewer than two (a balance score compares modalities)."""
    return check_modality_count(policy, names, 2, why="compares the confidences of the modalities")


class MBSPolicy(SelectionPolicy):
    """Algorithm 1 on the micro-batch (the learning step, steps 3-4 (docs/design.md)), with
    ``MBS = p_1 / p_2`` of the context's two modalities (N > 2: the spread, see the module docstring).

    ``cfg.center == "running"``: the centre is the median of the last ``cfg.running_window`` MBS
    values of the stream, this batch included (the window is updated first, then the median taken).
    The returned :class:`Selection` carries the deviation of every row of the batch, which the
    buffer's ``mbs`` retention uses.
    """

    Settings = MBSSettings

    def __init__(self, cfg: MBSFamilySettings, seed: int = 0) -> None:
        self.cfg = cfg
        self.seed = seed  # deterministic policy; kept for the common constructor signature
        self.running = RunningMedian(cfg.running_window)

    def check_modalities(self, names) -> None:
        check_balance_modalities(self.cfg.policy, names)

    def select(self, ctx: StepContext) -> Selection:
        self.check_modalities(ctx.modalities)
        if len(ctx.p) > 2:
            score = spread(ctx.p)
            indices, dev = self.choose_spread(score, ctx)
            return Selection(indices=indices, deviation=dev)
        p_1, p_2 = ctx.p.values()
        score = mbs_score(p_1, p_2)  # line 7
        center: Center = self.cfg.center
        if center == "running":
            valid = score[~torch.isnan(score)]
            self.running.add(valid)
            if len(self.running) == 0:
                return Selection(torch.empty(0, dtype=torch.long, device=score.device), torch.full_like(score, float("nan")))
            center = self.running.median()
        indices, dev = self.choose(score, center, ctx)
        return Selection(indices=indices, deviation=dev)

    def choose(self, score: torch.Tensor, center: Center, ctx: StepContext) -> tuple[torch.Tensor, torch.Tensor]:
        """``(indices, per-row deviation)`` for the batch's MBS around ``center`` (resolved except
        for ``"median"``/``"one"``): Algorithm 1 here; the variants override this."""
        return select_with_deviation(score, self.cfg.keep_ratio, center, self.cfg.deviation, self.cfg.split)

    def choose_spread(self, score: torch.Tensor, ctx: StepContext) -> tuple[torch.Tensor, torch.Tensor]:
        """N > 2: ``(indices, per-row deviation)`` from the spread of every row: the
        ``max(1, floor(keep_ratio * n))`` smallest (see the module docstring); ``mbs-class`` overrides it."""
        return keep_by_score(score, self.cfg.keep_ratio, largest=False), score

    def state_dict(self) -> dict[str, Any]:
        return {"running_median": self.running.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if "running_median" in state:
            self.running.load_state_dict(state["running_median"])
