"""Fusion heads: fused logits plus one unimodal logit vector per modality.

Every head maps ``(z_a, z_v)`` (both (B, d)) to ``(logits, audio_logits, video_logits)``, each
(B, num_classes).  :data:`REGISTRY` maps ``ModelConfig.fusion`` names to the classes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

FusionOutput = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


class Fusion(nn.Module):
    """Base class: ``forward(z_a, z_v) -> (logits, audio_logits, video_logits)``."""

    def __init__(self, embed_dim: int, num_classes: int) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.num_classes = num_classes

    def forward(self, z_a: torch.Tensor, z_v: torch.Tensor) -> FusionOutput:  # pragma: no cover - abstract
        raise NotImplementedError


class SumFusion(Fusion):
    """Late sum: ``logits = (W_a z_a + b_a) + (W_v z_v + b_v)``.

    The unimodal logits are exactly the two terms, so ``logits == audio_logits + video_logits``.
    """

    def __init__(self, embed_dim: int, num_classes: int) -> None:
        super().__init__(embed_dim, num_classes)
        self.audio_head = nn.Linear(embed_dim, num_classes)
        self.video_head = nn.Linear(embed_dim, num_classes)

    def forward(self, z_a: torch.Tensor, z_v: torch.Tensor) -> FusionOutput:
        """Fused and unimodal logits of ``z_a``, ``z_v`` (B, d)."""
        la = self.audio_head(z_a)
        lv = self.video_head(z_v)
        return la + lv, la, lv


class ConcatFusion(Fusion):
    """Concatenation: ``logits = W [z_a; z_v] + b`` with one ``nn.Linear(2d, K)``.

    Unimodal logits split the same layer: ``audio = W[:, :d] z_a + b/2``, ``video = W[:, d:] z_v + b/2``,
    so they add up to the fused logits.
    """

    def __init__(self, embed_dim: int, num_classes: int) -> None:
        super().__init__(embed_dim, num_classes)
        self.fc = nn.Linear(2 * embed_dim, num_classes)

    def forward(self, z_a: torch.Tensor, z_v: torch.Tensor) -> FusionOutput:
        """Fused and unimodal logits of ``z_a``, ``z_v`` (B, d)."""
        d = self.embed_dim
        half_bias = self.fc.bias / 2
        la = F.linear(z_a, self.fc.weight[:, :d], half_bias)
        lv = F.linear(z_v, self.fc.weight[:, d:], half_bias)
        return la + lv, la, lv  # == self.fc(cat([z_a, z_v])) up to rounding


class FiLMFusion(Fusion):
    """FiLM (audio conditions video): ``z = gamma(z_a) * z_v + beta(z_a)``, ``logits = W z + b``.

    ``gamma(z_a) = 1 + G z_a + g`` (starts near the identity) and ``beta(z_a) = B z_a + c`` are linear.
    Unimodal logits come from separate auxiliary heads ``W_a z_a + b_a`` and ``W_v z_v + b_v``
    (trained only through a unimodal loss; they do not enter the fused logits).
    """

    def __init__(self, embed_dim: int, num_classes: int) -> None:
        super().__init__(embed_dim, num_classes)
        self.gamma = nn.Linear(embed_dim, embed_dim)
        self.beta = nn.Linear(embed_dim, embed_dim)
        self.head = nn.Linear(embed_dim, num_classes)
        self.audio_head = nn.Linear(embed_dim, num_classes)
        self.video_head = nn.Linear(embed_dim, num_classes)

    def forward(self, z_a: torch.Tensor, z_v: torch.Tensor) -> FusionOutput:
        """Fused and unimodal logits of ``z_a``, ``z_v`` (B, d)."""
        z = (1.0 + self.gamma(z_a)) * z_v + self.beta(z_a)
        return self.head(z), self.audio_head(z_a), self.video_head(z_v)


class GatedFusion(Fusion):
    """Gated mix: ``g = sigmoid(W_g [z_a; z_v] + b_g)``, ``z = g * z_a + (1 - g) * z_v``, ``logits = W z + b``.

    The gate is elementwise (d values per sample).  Unimodal logits come from separate auxiliary
    heads ``W_a z_a + b_a`` and ``W_v z_v + b_v``, as for :class:`FiLMFusion`.
    """

    def __init__(self, embed_dim: int, num_classes: int) -> None:
        super().__init__(embed_dim, num_classes)
        self.gate = nn.Linear(2 * embed_dim, embed_dim)
        self.head = nn.Linear(embed_dim, num_classes)
        self.audio_head = nn.Linear(embed_dim, num_classes)
        self.video_head = nn.Linear(embed_dim, num_classes)

    def forward(self, z_a: torch.Tensor, z_v: torch.Tensor) -> FusionOutput:
        """Fused and unimodal logits of ``z_a``, ``z_v`` (B, d)."""
        g = torch.sigmoid(self.gate(torch.cat([z_a, z_v], dim=1)))
        z = g * z_a + (1.0 - g) * z_v
        return self.head(z), self.audio_head(z_a), self.video_head(z_v)


REGISTRY: dict[str, type[Fusion]] = {
    "sum": SumFusion,
    "concat": ConcatFusion,
    "film": FiLMFusion,
    "gated": GatedFusion,
}


def build_fusion(name: str, embed_dim: int, num_classes: int) -> Fusion:
    """Instantiate the fusion head registered as ``name``."""
    try:
        cls = REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown fusion {name!r}; choose one of {sorted(REGISTRY)}") from None
    return cls(embed_dim, num_classes)
