"""BMMAL scoring (Shen et al., "Towards Balanced Active Learning for Multimodal Classification", ACM MM 2023).

For a model of N modalities with fusion head ``f(z)``, ``z = {name: z_m}`` (``lambda z: model.fusion(z)[0]``):

* model outcome ``v(S) = softmax(f(z_S))[y_hat]``, the fused probability of the class ``y_hat``
  predicted from all modalities, where a modality outside the coalition S is "dropped" by zeroing its
  embedding (the paper's Eq. 5, empty set = zero vector);
* Shapley values (Eq. 5), exact over the 2^N coalitions::

      Delta_m = sum_{S not containing m} |S|! (N - |S| - 1)! / N! * (v(S + m) - v(S))

  for two modalities::

      Delta_1 = 1/2 [ (v(z1, z2) - v(0, z2)) + (v(z1, 0) - v(0, 0)) ]
      Delta_2 = 1/2 [ (v(z1, z2) - v(z1, 0)) + (v(0, z2) - v(0, 0)) ]

  (:func:`shapley_two_modalities`, the closed form the two-modality path runs).  Exact enumeration
  costs 2^N fusion forwards, so at most :data:`MAX_MODALITIES` = 4 modalities are supported;
* contributions ``phi_m = |Delta_m| / sum_k |Delta_k|`` (Eq. 6; 1/N each when all are 0);
* weights (Eq. 8): 1 for the strongest modality, ``1 - (phi_max - phi_m)`` for the others (at N = 2:
  ``1 - rho``, ``rho = |phi_1 - phi_2|``, for the weaker one; equal contributions: all 1).  The N > 2
  form is ours: each modality is weighted down by its distance to the strongest;
* gradient embedding (Eq. 7, BADGE's last-layer gradient split per modality):
  ``g_m = w_m * (p - onehot(argmax p)) outer z_m`` (K x d_m), flattened and concatenated in the
  model's modality order;
* selection: k-means++ seeding over the embeddings (Arthur & Vassilvitskii 2007, as BADGE uses
  it): the first centre is the embedding of largest norm, each next one is drawn with probability
  proportional to its squared distance to the nearest chosen centre.
"""

from __future__ import annotations

import math
from typing import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F

from edge_runtime.learning.policies.base import check_modality_count

#: Most modalities whose Shapley values are computed (exactly, over 2^N coalitions).
MAX_MODALITIES = 4

FusionFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
#: ``fusion(z) -> fused logits (B, K)`` with ``z`` a dict name -> (B, d_name).
DictFusionFn = Callable[[dict[str, torch.Tensor]], torch.Tensor]


def check_shapley_modalities(names: Sequence[str]) -> tuple[str, ...]:
    """The names; a one-line ValueError for fewer than 2 or more than :data:`MAX_MODALITIES`."""
    return check_modality_count("bmmal", names, 2, MAX_MODALITIES, why="computes exact Shapley values over 2^N coalitions")


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


def shapley_values(fusion: DictFusionFn, z: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(Delta, probs)``: each modality's Shapley value per row, (B, N) in the order of ``z``, and the
    full-coalition softmax (B, K).

    Two modalities: :func:`shapley_two_modalities`.  Three or four: :func:`shapley_enumerated`.
    """
    names = check_shapley_modalities(tuple(z))
    if len(names) == 2:
        n1, n2 = names
        d1, d2, probs = shapley_two_modalities(lambda a, b: fusion({n1: a, n2: b}), z[n1], z[n2])
        return torch.stack([d1, d2], dim=1), probs
    return shapley_enumerated(fusion, z)


def shapley_enumerated(fusion: DictFusionFn, z: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact Shapley values over all 2^N coalitions (any N; 2^N fusion forwards): ``(Delta (B, N), probs)``.

    ``Delta_m = sum_{S not containing m} |S|! (N - |S| - 1)! / N! (v(S + m) - v(S))``; a modality
    outside S has its embedding zeroed; ``v(S)`` the fused softmax probability of the class the full
    coalition predicts.
    """
    names = tuple(z)
    n = len(names)
    zeros = {name: torch.zeros_like(t) for name, t in z.items()}
    probs = F.softmax(fusion(dict(z)).float(), dim=1)
    y_hat = probs.argmax(dim=1, keepdim=True)
    full = (1 << n) - 1
    value: dict[int, torch.Tensor] = {full: probs.gather(1, y_hat).squeeze(1)}
    for mask in range(full):
        coalition = {name: (z[name] if mask >> i & 1 else zeros[name]) for i, name in enumerate(names)}
        value[mask] = F.softmax(fusion(coalition).float(), dim=1).gather(1, y_hat).squeeze(1)
    weight = [math.factorial(s) * math.factorial(n - s - 1) / math.factorial(n) for s in range(n)]
    deltas = []
    for i in range(n):
        delta = torch.zeros_like(value[full])
        for mask in range(1 << n):
            if not mask >> i & 1:
                delta = delta + weight[bin(mask).count("1")] * (value[mask | 1 << i] - value[mask])
        deltas.append(delta)
    return torch.stack(deltas, dim=1), probs


def contributions(delta: torch.Tensor) -> torch.Tensor:
    """``phi_m = |Delta_m| / sum_k |Delta_k|`` per row of ``delta`` (B, N) (1/N each where all are zero)."""
    a = delta.abs()
    total = a[:, :1]
    for m in range(1, a.shape[1]):  # left to right, as |Delta_1| + |Delta_2| of the two-modality form
        total = total + a[:, m : m + 1]
    safe = torch.where(total > 0, total, torch.ones_like(total))
    even = torch.full_like(a, 1.0 / delta.shape[1])
    return torch.where(total > 0, a / safe, even)


def modality_weights(phi: torch.Tensor) -> torch.Tensor:
    """1 for the strongest modality of each row of ``phi`` (B, N), ``1 - (phi_max - phi_m)`` for the
    others (all 1 on a tie); at N = 2 ``1 - |phi_1 - phi_2|`` for the weaker."""
    top = phi.amax(dim=1, keepdim=True)
    return torch.where(phi >= top, torch.ones_like(phi), 1 - (top - phi))


def gradient_embedding(probs: torch.Tensor, z: Sequence[torch.Tensor] | Mapping[str, torch.Tensor], w: torch.Tensor) -> torch.Tensor:
    """Concatenated ``w_m * (p - onehot(argmax p)) outer z_m``, flattened: (B, K * sum_m d_m).

    ``z``: the embeddings in the model's order (a mapping or a sequence); ``w``: (B, N) weights."""
    zs = list(z.values()) if isinstance(z, Mapping) else list(z)
    err = probs - F.one_hot(probs.argmax(dim=1), probs.shape[1]).to(probs.dtype)
    blocks = [(w[:, m][:, None, None] * err[:, :, None] * z_m.float()[:, None, :]).flatten(1) for m, z_m in enumerate(zs)]
    return torch.cat(blocks, dim=1)


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
