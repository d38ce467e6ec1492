"""BMMAL scoring (Shen et al., "Towards Balanced Active Learning for Multimodal Classification", ACM MM 2023).

For a two-modality model with fusion head ``f(z_1, z_2)``:

* model outcome ``v(S) = softmax(f(S))[y_hat]``, the fused probability of the class predicted
  from both modalities, where a modality outside the coalition S is "dropped" by zeroing its
  features (the paper's Eq. 5, empty set = zero vector);
* Shapley values (two players, Eq. 5)::

      Delta_1 = 1/2 [ (v(z1, z2) - v(0, z2)) + (v(z1, 0) - v(0, 0)) ]
      Delta_2 = 1/2 [ (v(z1, z2) - v(z1, 0)) + (v(0, z2) - v(0, 0)) ]

* contributions ``phi_k = |Delta_k| / (|Delta_1| + |Delta_2|)`` (Eq. 6; 1/2 each when both are 0);
* weights (Eq. 8): 1 for the stronger modality, ``1 - rho`` with ``rho = |phi_1 - phi_2|`` for the
  weaker one (equal contributions: both 1);
* gradient embedding (Eq. 7, BADGE's last-layer gradient split per modality):
  ``g_k = w_k * (p - onehot(argmax p)) outer z_k`` (K x d_k), flattened and concatenated;
* selection: k-means++ seeding over the embeddings (Arthur & Vassilvitskii 2007, as BADGE uses
  it): the first centre is the embedding of largest norm, each next one is drawn with probability
  proportional to its squared distance to the nearest chosen centre.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

FusionFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def shapley_two_modalities(fused_logits: FusionFn, z_1: torch.Tensor, z_2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(Delta_1, Delta_2, probs)``: each modality's Shapley value per row and the full-coalition softmax.

    ``fused_logits(z_1, z_2)`` maps (B, d_1), (B, d_2) to fused logits (B, K).
    """
    zero_1, zero_2 = torch.zeros_like(z_1), torch.zeros_like(z_2)
    probs = F.softmax(fused_logits(z_1, z_2).float(), dim=1)
    y_hat = probs.argmax(dim=1, keepdim=True)

    def v(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return F.softmax(fused_logits(a, b).float(), dim=1).gather(1, y_hat).squeeze(1)

    v12 = probs.gather(1, y_hat).squeeze(1)
    v_1, v_2, v_0 = v(z_1, zero_2), v(zero_1, z_2), v(zero_1, zero_2)
    delta_1 = 0.5 * ((v12 - v_2) + (v_1 - v_0))
    delta_2 = 0.5 * ((v12 - v_1) + (v_2 - v_0))
    return delta_1, delta_2, probs


def contributions(delta_1: torch.Tensor, delta_2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``phi_k = |Delta_k| / (|Delta_1| + |Delta_2|)`` (1/2 each where both are zero)."""
    a, b = delta_1.abs(), delta_2.abs()
    total = a + b
    safe = torch.where(total > 0, total, torch.ones_like(total))
    half = torch.full_like(total, 0.5)
    return torch.where(total > 0, a / safe, half), torch.where(total > 0, b / safe, half)


def modality_weights(phi_1: torch.Tensor, phi_2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """1 for the stronger modality, ``1 - |phi_1 - phi_2|`` for the weaker (both 1 on a tie)."""
    rho = (phi_1 - phi_2).abs()
    one = torch.ones_like(rho)
    return torch.where(phi_1 >= phi_2, one, 1 - rho), torch.where(phi_2 >= phi_1, one, 1 - rho)


def gradient_embedding(probs: torch.Tensor, z_1: torch.Tensor, z_2: torch.Tensor, w_1: torch.Tensor, w_2: torch.Tensor) -> torch.Tensor:
    """Concatenated ``w_k * (p - onehot(argmax p)) outer z_k``, flattened: (B, K * (d_1 + d_2))."""
    err = probs - F.one_hot(probs.argmax(dim=1), probs.shape[1]).to(probs.dtype)
    g_1 = (w_1[:, None, None] * err[:, :, None] * z_1.float()[:, None, :]).flatten(1)
    g_2 = (w_2[:, None, None] * err[:, :, None] * z_2.float()[:, None, :]).flatten(1)
    return torch.cat([g_1, g_2], dim=1)


def kmeans_pp(embeddings: torch.Tensor, k: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """k distinct row indices by k-means++ seeding, in the order picked.

    The first is the row of largest L2 norm; each next row is drawn with probability
    ``D(x)^2 / sum D^2``, D the distance to the nearest chosen row.  When every remaining row
    coincides with a chosen one (all D = 0) the next pick is uniform among the unchosen rows.
    """
    n = embeddings.shape[0]
    k = min(int(k), n)
    if k <= 0:
        return torch.empty(0, dtype=torch.long)
    x = embeddings.detach().double().cpu()
    first = int(torch.linalg.vector_norm(x, dim=1).argmax())
    chosen = [first]
    d2 = (x - x[first]).pow(2).sum(dim=1)
    d2[first] = 0.0
    taken = torch.zeros(n, dtype=torch.bool)
    taken[first] = True
    while len(chosen) < k:
        weights = d2.clone()
        weights[taken] = 0.0
        if float(weights.sum()) <= 0.0:
            weights = (~taken).double()
        nxt = int(torch.multinomial(weights, 1, generator=generator))
        chosen.append(nxt)
        taken[nxt] = True
        d2 = torch.minimum(d2, (x - x[nxt]).pow(2).sum(dim=1))
    return torch.tensor(chosen, dtype=torch.long)
