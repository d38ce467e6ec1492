"""Modality Balance Score (MBS paper, Section 4.1 and Algorithm 1 line 7; the learning step, step 3 (docs/design.md)).

Two modalities: ``MBS(x) = p_1 / p_2``, the ratio of the per-modality confidences of the true class
(the first and second modality in the model's order; audio and video by default).  MBS near the
centre m means both modalities contribute comparably; far above m the first modality dominates,
far below it the second does.

More than two modalities (our generalisation, not the paper's): the *spread*
``s(x) = max_m log p_m - min_m log p_m`` (each p clamped from below at ``finfo.tiny``), the log
ratio of the most to the least confident modality.  It is 0 exactly when every modality is equally
confident and equals ``|log MBS|`` at N = 2 (see :func:`spread`).  ``confidence_spread`` is the same
on the probability scale, ``max_m p_m - min_m p_m`` (``|p_1 - p_2|`` at N = 2).
"""

from __future__ import annotations

from typing import Literal, Mapping, Sequence

import torch

Deviation = Literal["ratio", "log"]


def _floating(t: torch.Tensor) -> torch.Tensor:
    return t if t.dtype.is_floating_point else t.to(torch.get_default_dtype())


def mbs(p_1: torch.Tensor, p_2: torch.Tensor) -> torch.Tensor:
    """``MBS_i = p_i^1 / p_i^2`` (MBS paper Eq. for MBS(x_t), Algorithm 1 line 7).

    ``p_2`` is clamped from below at the smallest positive normal number of its dtype
    (``torch.finfo(dtype).tiny``) so that a confidence that underflowed to 0 gives a large
    finite score instead of inf/NaN.  Since ``p_1 <= 1`` the score stays finite
    (``<= 1 / tiny``).  Integer inputs are converted to the default float dtype.
    """
    p_1 = _floating(torch.as_tensor(p_1))
    p_2 = _floating(torch.as_tensor(p_2))
    tiny = torch.finfo(p_2.dtype).tiny
    return p_1 / p_2.clamp_min(tiny)


def confidence_columns(p: Mapping[str, torch.Tensor] | Sequence[torch.Tensor] | torch.Tensor) -> torch.Tensor:
    """The confidences as one (B, N) floating tensor, a column per modality in order.

    ``p``: a mapping name -> (B,) (``StepContext.p``), a sequence of (B,) tensors, or a (B, N) tensor.
    """
    if isinstance(p, torch.Tensor):
        cols = p
    else:
        values = list(p.values()) if isinstance(p, Mapping) else list(p)
        if not values:
            raise ValueError("no modality confidences given")
        cols = torch.stack([torch.as_tensor(v) for v in values], dim=1)
    if cols.dim() != 2:
        raise ValueError(f"confidences must be (B, N): one column per modality (got shape {tuple(cols.shape)})")
    return _floating(cols)


def spread(p: Mapping[str, torch.Tensor] | Sequence[torch.Tensor] | torch.Tensor) -> torch.Tensor:
    """``s_i = max_m log p_i^m - min_m log p_i^m`` per row, each p clamped at ``finfo(dtype).tiny`` (ours).

    The balance score of N >= 2 modalities: 0 when all are equally confident, ``log(p_max / p_min)``
    otherwise; at N = 2 it is ``|log MBS|`` (:func:`mbs`, both p clamped).  NaN where any
    confidence is NaN.
    """
    cols = confidence_columns(p)
    logs = cols.clamp_min(torch.finfo(cols.dtype).tiny).log()
    out = logs.amax(dim=1) - logs.amin(dim=1)
    return torch.where(torch.isnan(cols).any(dim=1), torch.full_like(out, float("nan")), out)


def confidence_spread(p: Mapping[str, torch.Tensor] | Sequence[torch.Tensor] | torch.Tensor) -> torch.Tensor:
    """``max_m p_i^m - min_m p_i^m`` per row (float32): ``|p_1 - p_2|`` at N = 2; NaN where any confidence
    is not finite (the ``mbs-gap`` score, :mod:`edge_runtime.learning.policies.admission.mbs_gap`)."""
    cols = confidence_columns(p).float()
    out = cols.amax(dim=1) - cols.amin(dim=1)
    return torch.where(torch.isfinite(cols).all(dim=1), out, torch.full_like(out, float("nan")))


def mbs_deviation(score: torch.Tensor, center: float | torch.Tensor, deviation: Deviation = "ratio") -> torch.Tensor:
    """Modality balance deviation from the centre m (MBS paper Section 4.2, Algorithm 1 line 14/16).

    ``"ratio"``: ``|MBS - m|`` (the paper's).  ``"log"``: ``|log MBS - log m|``, symmetric in which
    modality dominates (MBS = m*r and m/r deviate equally).  For ``"log"`` both the score and the
    centre are clamped from below at ``torch.finfo(dtype).tiny`` so that a zero gives a large
    finite deviation rather than inf/NaN.
    """
    score = _floating(torch.as_tensor(score))
    c = torch.as_tensor(center, dtype=score.dtype, device=score.device)
    if deviation == "ratio":
        return (score - c).abs()
    if deviation == "log":
        tiny = torch.finfo(score.dtype).tiny
        return (score.clamp_min(tiny).log() - c.clamp_min(tiny).log()).abs()
    raise ValueError(f"deviation must be 'ratio' or 'log' (got {deviation!r})")
