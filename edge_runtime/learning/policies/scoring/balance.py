"""BSS scoring ("Balance-aware Sequence Sampling").

Multi-perspective balance measurer of a sample, from the unimodal and fused outputs:

* prediction dissimilarity ``d = 1 - cos(softmax(out_a), softmax(out_v))``;
* loss term ``l = 0.9 (CE(out_a, y) + CE(out_v, y)) + 0.1 CE(out_mm, y)``;
* both min-max normalised over the scored set (``norm(x) = (x - min) / (max - min)``, 0 when all
  values are equal); balance score ``b = norm(d) + norm(l)``: small = balanced (the modalities
  agree and the sample is learnt), large = imbalanced.

Heuristic curriculum (CL pacing): at round t the model trains on the most balanced fraction
``lambda_t = min(1, sqrt((1 - lambda_0^2) / T_grow * (t + 1) + lambda_0^2))`` of the data,
``lambda_0 = 0.1``, ``T_grow = 40``.

Learning-based sampling: each round the data are re-scored and drawn without replacement with
probability proportional to ``w = 1 - (norm(l) - norm(s)) + 0.01``, ``s = cos(...)`` the
similarity (so ``norm(s) = 1 - norm(d)``).  ``w`` lies in [0.01, 2.01]: balanced, learnt samples
are drawn first.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def minmax(x: torch.Tensor) -> torch.Tensor:
    """``(x - min) / (max - min)``; all zeros when the values are all equal (or there are none)."""
    if x.numel() == 0:
        return x
    lo, hi = x.min(), x.max()
    span = hi - lo
    if float(span) <= 0.0:
        return torch.zeros_like(x)
    return (x - lo) / span


def balance_terms(audio_logits: torch.Tensor, video_logits: torch.Tensor, logits: torch.Tensor,
                  labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Raw per-row ``(similarity cos(p_a, p_v), loss 0.9(l_a + l_v) + 0.1 l_mm)``."""
    pa = F.softmax(audio_logits.float(), dim=1)
    pv = F.softmax(video_logits.float(), dim=1)
    sim = F.cosine_similarity(pa, pv, dim=1)
    y = labels.long()
    la = F.cross_entropy(audio_logits.float(), y, reduction="none")
    lv = F.cross_entropy(video_logits.float(), y, reduction="none")
    lmm = F.cross_entropy(logits.float(), y, reduction="none")
    return sim, 0.9 * (la + lv) + 0.1 * lmm


def balance_score(audio_logits: torch.Tensor, video_logits: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``b = norm(1 - cos) + norm(loss)`` per row (small = balanced)."""
    sim, loss = balance_terms(audio_logits, video_logits, logits, labels)
    return minmax(1 - sim) + minmax(loss)


def sampling_weights(audio_logits: torch.Tensor, video_logits: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Learning-based BSS weights ``w = 1 - (norm(loss) - norm(cos)) + 0.01`` per row."""
    sim, loss = balance_terms(audio_logits, video_logits, logits, labels)
    return 1 - (minmax(loss) - minmax(sim)) + 0.01


def pacing(t: int, lambda0: float = 0.1, t_grow: int = 40) -> float:
    """Fraction of the (balance-sorted) data used at round ``t`` (0-based): root pacing, capped at 1."""
    return min(1.0, math.sqrt((1 - lambda0**2) / t_grow * (t + 1) + lambda0**2))
