"""Random selection: the baseline of the MBS paper's tables (uniform subset of each batch)."""

from __future__ import annotations

from typing import Any, Mapping

import torch

from edge_runtime.core.policy_settings import RandomSettings
from edge_runtime.learning.policies.base import Selection, SelectionPolicy, StepContext, keep_count


class RandomPolicy(SelectionPolicy):
    """Keep ``K = max(1, floor(keep_ratio * n))`` rows of a non-empty batch of n, uniformly without
    replacement, drawn from a CPU :class:`torch.Generator` seeded with ``seed``.

    Indices are returned sorted ascending; there is no per-row score (``deviation`` is None).
    The generator state is part of :meth:`state_dict`, so a restored policy draws the same subsets.
    """

    Settings = RandomSettings

    def __init__(self, cfg: RandomSettings, seed: int = 0) -> None:
        self.cfg = cfg
        self.generator = torch.Generator(device="cpu")
        self.generator.manual_seed(int(seed))

    def select(self, ctx: StepContext) -> Selection:
        n = int(ctx.labels.shape[0])
        if n == 0:
            return Selection(indices=torch.empty(0, dtype=torch.long))
        k = keep_count(self.cfg.keep_ratio, n)
        chosen = torch.randperm(n, generator=self.generator)[:k]
        indices, _ = torch.sort(chosen)
        return Selection(indices=indices, deviation=None)

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if "generator" in state:
            self.generator.set_state(state["generator"].cpu())
