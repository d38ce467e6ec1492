"""Fusion heads over N named modalities: fused logits plus one unimodal logit vector per modality.

Every head maps ``z`` (``name -> (B, d)``, in the configuration's order) to ``(logits, unimodal)``:
``logits`` (B, num_classes) and ``unimodal`` (``name -> (B, num_classes)``).  :data:`REGISTRY` maps
``ModelConfig.fusion`` names to the classes.  With the default two modalities every head computes
exactly what the audio-visual heads of earlier versions did, parameter for parameter.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

FusionOutput = tuple[torch.Tensor, dict[str, torch.Tensor]]


class Fusion(nn.Module):
    """Base class: ``forward(z) -> (logits, unimodal)`` over the modalities ``names``."""

    #: Fewest and most modalities the head takes (None: no upper bound).
    min_modalities = 1
    max_modalities: int | None = None

    def __init__(self, names: Sequence[str], embed_dim: int, num_classes: int) -> None:
        super().__init__()
        self.names = tuple(names)
        self.embed_dim = embed_dim
        self.num_classes = num_classes

    def _unimodal_heads(self) -> nn.ModuleDict:
        return nn.ModuleDict({name: nn.Linear(self.embed_dim, self.num_classes) for name in self.names})

    def forward(self, z: Mapping[str, torch.Tensor]) -> FusionOutput:  # pragma: no cover - abstract
        raise NotImplementedError


class SumFusion(Fusion):
    """Late sum: ``logits = sum_m (W_m z_m + b_m)``.

    The unimodal logits are exactly the terms, so ``logits == sum_m unimodal[m]``.
    """

    def __init__(self, names: Sequence[str], embed_dim: int, num_classes: int) -> None:
        super().__init__(names, embed_dim, num_classes)
        self.heads = self._unimodal_heads()

    def forward(self, z: Mapping[str, torch.Tensor]) -> FusionOutput:
        unimodal = {name: self.heads[name](z[name]) for name in self.names}
        parts = list(unimodal.values())
        logits = parts[0]
        for part in parts[1:]:
            logits = logits + part
        return logits, unimodal


class ConcatFusion(Fusion):
    """Concatenation: ``logits = W [z_1; ...; z_N] + b`` with one ``nn.Linear(N d, K)``.

    Unimodal logits split the same layer: ``unimodal[m] = W[:, m-th block] z_m + b / N``, so they add
    up to the fused logits.
    """

    def __init__(self, names: Sequence[str], embed_dim: int, num_classes: int) -> None:
        super().__init__(names, embed_dim, num_classes)
        self.fc = nn.Linear(len(self.names) * embed_dim, num_classes)

    def forward(self, z: Mapping[str, torch.Tensor]) -> FusionOutput:
        d, n = self.embed_dim, len(self.names)
        bias = self.fc.bias / n
        unimodal = {name: F.linear(z[name], self.fc.weight[:, i * d : (i + 1) * d], bias) for i, name in enumerate(self.names)}
        parts = list(unimodal.values())
        logits = parts[0]
        for part in parts[1:]:
            logits = logits + part
        return logits, unimodal  # == self.fc(cat(z)) up to rounding


class FiLMFusion(Fusion):
    """FiLM (the first modality conditions the second): ``z = gamma(z_1) * z_2 + beta(z_1)``, ``logits = W z + b``.

    ``gamma(z_1) = 1 + G z_1 + g`` (starts near the identity) and ``beta(z_1) = B z_1 + c`` are linear.
    Unimodal logits come from separate auxiliary heads ``W_m z_m + b_m`` (trained only through a
    unimodal loss; they do not enter the fused logits).  Defined for exactly two modalities.
    """

    min_modalities = 2
    max_modalities = 2

    def __init__(self, names: Sequence[str], embed_dim: int, num_classes: int) -> None:
        super().__init__(names, embed_dim, num_classes)
        self.gamma = nn.Linear(embed_dim, embed_dim)
        self.beta = nn.Linear(embed_dim, embed_dim)
        self.head = nn.Linear(embed_dim, num_classes)
        self.heads = self._unimodal_heads()

    def forward(self, z: Mapping[str, torch.Tensor]) -> FusionOutput:
        first, second = (z[name] for name in self.names)
        fused = (1.0 + self.gamma(first)) * second + self.beta(first)
        return self.head(fused), {name: self.heads[name](z[name]) for name in self.names}


class GatedFusion(Fusion):
    """Gated mix of the embeddings, ``logits = W z + b``, with unimodal auxiliary heads as :class:`FiLMFusion`.

    Two modalities: ``g = sigmoid(W_g [z_1; z_2] + b_g)``, ``z = g * z_1 + (1 - g) * z_2`` (elementwise).
    N > 2: ``G = softmax_m(reshape(W_g [z_1; ...; z_N] + b_g, (N, d)))``, ``z = sum_m G_m * z_m``.  The
    first is the N = 2 case of the second (a softmax over two gates is the sigmoid of their difference),
    kept in its own parametrisation so that earlier checkpoints load.
    """

    def __init__(self, names: Sequence[str], embed_dim: int, num_classes: int) -> None:
        super().__init__(names, embed_dim, num_classes)
        n = len(self.names)
        self.gate = nn.Linear(n * embed_dim, embed_dim if n == 2 else n * embed_dim)
        self.head = nn.Linear(embed_dim, num_classes)
        self.heads = self._unimodal_heads()

    def forward(self, z: Mapping[str, torch.Tensor]) -> FusionOutput:
        zs = [z[name] for name in self.names]
        gate = self.gate(torch.cat(zs, dim=1))
        if len(zs) == 2:
            g = torch.sigmoid(gate)
            fused = g * zs[0] + (1.0 - g) * zs[1]
        else:
            weights = torch.softmax(gate.reshape(gate.shape[0], len(zs), self.embed_dim), dim=1)
            fused = (weights * torch.stack(zs, dim=1)).sum(dim=1)
        return self.head(fused), {name: self.heads[name](z[name]) for name in self.names}


REGISTRY: dict[str, type[Fusion]] = {
    "sum": SumFusion,
    "concat": ConcatFusion,
    "film": FiLMFusion,
    "gated": GatedFusion,
}


def build_fusion(name: str, names: Sequence[str], embed_dim: int, num_classes: int) -> Fusion:
    """Instantiate the fusion head registered as ``name`` over the modalities ``names``."""
    try:
        cls = REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown fusion {name!r}; choose one of {sorted(REGISTRY)}") from None
    n = len(names)
    if n < cls.min_modalities or (cls.max_modalities is not None and n > cls.max_modalities):
        raise ValueError(f"model.fusion: {name} fuses exactly two modalities (one conditions the other) but {n} are declared "
                         f"({', '.join(names)}); use sum, concat or gated")
    return cls(names, embed_dim, num_classes)
