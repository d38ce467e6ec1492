"""EL2N score (Paul et al., "Deep Learning on a Data Diet", NeurIPS 2021, Eq. 2).

``EL2N(x, y) = || softmax(f(x)) - onehot(y) ||_2``: the L2 norm of the error vector of the
predicted class probabilities.  Large values mark hard (or mislabelled) samples; the MBS paper's
baseline keeps the smallest (easy) ones.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def el2n(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-row EL2N of ``logits`` (B, K) against integer ``labels`` (B,), computed in float32 or wider."""
    logits = logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits
    probs = F.softmax(logits, dim=1)
    onehot = F.one_hot(labels.long(), num_classes=logits.shape[1]).to(probs.dtype)
    return torch.linalg.vector_norm(probs - onehot, dim=1)
