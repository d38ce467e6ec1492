"""The interface every selection policy implements, and what a policy may look at."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from edge_runtime.batch import Batch
    from edge_runtime.model import ModelOutput, MultimodalNet


@dataclass
class StepContext:
    """Everything known about the labelled training samples of one micro-batch at selection time.

    ``output`` is the (detached) forward of the current model on ``batch``; ``p_audio`` and
    ``p_video`` are the per-modality confidences of the true class (DESIGN step 2), computed by
    the learner with the configured confidence (prototype or linear head).
    """

    batch: "Batch"
    labels: torch.Tensor
    output: "ModelOutput"
    p_audio: torch.Tensor
    p_video: torch.Tensor
    model: "MultimodalNet"


@dataclass
class Selection:
    """Chosen row indices (into the context's batch) and an optional per-row score.

    ``deviation`` (one value per row of the batch, not only the chosen ones) is what the buffer's
    ``mbs`` retention uses to evict the least balanced sample; policies without one leave it None.
    """

    indices: torch.Tensor
    deviation: torch.Tensor | None = None


class SelectionPolicy:
    """Base class: ``select(ctx) -> Selection``; state that must survive a restart goes in state_dict."""

    def select(self, ctx: StepContext) -> Selection:  # pragma: no cover - interface
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        return None
