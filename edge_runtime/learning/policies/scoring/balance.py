"""BSS scoring ("Balance-aware Sequence Sampling").

Multi-perspective balance measurer of a sample, from the unimodal and fused outputs of its N >= 2
modalities (the paper has two; the N > 2 forms are ours and reduce to the paper's at N = 2):

* prediction dissimilarity ``d = 1 - mean_{m < n} cos(softmax(out_m), softmax(out_n))``, the mean
  over all N (N - 1) / 2 pairs of modalities (at N = 2: ``1 - cos(p_1, p_2)``);
* loss term ``l = 0.9 sum_m CE(out_m, y) + 0.1 CE(out_mm, y)`` (at N = 2: ``0.9 (l_1 + l_2) + 0.1 l_mm``);
* both min-max normalised over the scored set (``norm(x) = (x - min) / (max - min)``, 0 when all
  values are equal); balance score ``b = norm(d) + norm(l)``: small = balanced (the modalities
  agree and the sample is learnt), large = imbalanced.

Heuristic curriculum (CL pacing): at round t the model trains on the most balanced fraction
``lambda_t = min(1, sqrt((1 - lambda_0^2) / T_grow * (t + 1) + lambda_0^2))`` of the data,
``lambda_0 = 0.1``, ``T_grow = 40``.

Learning-based sampling: each round the data are re-scored and drawn without replacement with
probability proportional to ``w = 1 - (norm(l) - norm(s)) + 0.01``, ``s`` the mean pairwise cosine
similarity (so ``norm(s) = 1 - norm(d)``).  ``w`` lies in [0.01, 2.01]: balanced, learnt samples
are drawn first.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

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


Unimodal = Mapping[str, torch.Tensor] | Sequence[torch.Tensor]


def _columns(unimodal: Unimodal) -> list[torch.Tensor]:
    outs = list(unimodal.values()) if isinstance(unimodal, Mapping) else list(unimodal)
    if len(outs) < 2:
        raise ValueError(f"bss compares the predictions of the modalities: it needs at least 2 modalities, {len(outs)} given")
    return outs


def balance_terms(unimodal: Unimodal, logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Raw per-row ``(similarity mean_{m<n} cos(p_m, p_n), loss 0.9 sum_m l_m + 0.1 l_mm)``.

    ``unimodal``: each modality's logits (B, K), name -> tensor (``ModelOutput.unimodal``) or a
    sequence in the model's order; ``logits``: the fused ones.
    """
    outs = _columns(unimodal)
    probs = [F.softmax(o.float(), dim=1) for o in outs]
    pairs = [F.cosine_similarity(probs[i], probs[j], dim=1) for i in range(len(probs)) for j in range(i + 1, len(probs))]
    sim = pairs[0] if len(pairs) == 1 else torch.stack(pairs).mean(dim=0)
    y = labels.long()
    uni = F.cross_entropy(outs[0].float(), y, reduction="none")
    for o in outs[1:]:
        uni = uni + F.cross_entropy(o.float(), y, reduction="none")
    lmm = F.cross_entropy(logits.float(), y, reduction="none")
    return sim, 0.9 * uni + 0.1 * lmm


def balance_score(unimodal: Unimodal, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``b = norm(1 - mean cos) + norm(loss)`` per row (small = balanced)."""
    sim, loss = balance_terms(unimodal, logits, labels)
    return minmax(1 - sim) + minmax(loss)


def sampling_weights(unimodal: Unimodal, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Learning-based BSS weights ``w = 1 - (norm(loss) - norm(mean cos)) + 0.01`` per row."""
    sim, loss = balance_terms(unimodal, logits, labels)
    return 1 - (minmax(loss) - minmax(sim)) + 0.01


def pacing(t: int, lambda0: float = 0.1, t_grow: int = 40) -> float:
    """Fraction of the (balance-sorted) data used at round ``t`` (0-based): root pacing, capped at 1."""
    return min(1.0, math.sqrt((1 - lambda0**2) / t_grow * (t + 1) + lambda0**2))
