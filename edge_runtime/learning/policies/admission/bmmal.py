"""BMMAL selection: Shapley-weighted gradient embeddings + k-means++ seeding.

The method of "Towards Balanced Active Learning for Multimodal Classification".  For each
labelled row of the micro-batch: every modality's exact Shapley value on the fused prediction
(zeroed embedding = dropped modality, over the 2^N coalitions of the N modalities), their
contributions phi, weights (1 for the strongest, ``1 - (phi_max - phi_m)`` for the others: at N = 2
``1 - |phi_1 - phi_2|`` for the weaker), the weighted per-modality gradient embedding, and
``K = max(1, floor(keep_ratio * n))`` rows picked by k-means++ seeding.  See
:mod:`edge_runtime.learning.policies.scoring.shapley` for the formulas.

The per-row ``deviation`` handed to the buffer is ``phi_max - phi_min`` (``|phi_1 - phi_2|`` at
N = 2; 0 = balanced), so the ``mbs`` retention evicts the least balanced sample under BMMAL as well.

Modalities: 2 to 4 (exact Shapley values cost 2^N fusion forwards); another number is a ValueError,
at construction when :func:`~edge_runtime.learning.policies.build_policy` is given the modalities,
else at the first selection.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch

from edge_runtime.core.policy_settings import BMMALSettings
from edge_runtime.learning.policies.scoring.shapley import (check_shapley_modalities, contributions, gradient_embedding, kmeans_pp,
                                                            modality_weights, shapley_values)
from edge_runtime.learning.policies.base import Selection, SelectionPolicy, StepContext, keep_count


class BMMALPolicy(SelectionPolicy):
    Settings = BMMALSettings

    def __init__(self, cfg: BMMALSettings, seed: int = 0) -> None:
        self.cfg = cfg
        self.generator = torch.Generator(device="cpu")
        self.generator.manual_seed(int(seed))

    def check_modalities(self, names) -> None:
        check_shapley_modalities(names)

    def select(self, ctx: StepContext) -> Selection:
        z = ctx.output.z
        self.check_modalities(tuple(z))
        fusion = ctx.model.fusion
        was_training = fusion.training
        fusion.eval()
        try:
            delta, probs = shapley_values(lambda zs: fusion(zs)[0], z)
        finally:
            fusion.train(was_training)
        phi = contributions(delta)
        w = modality_weights(phi)
        emb = gradient_embedding(probs, z, w)
        picked = kmeans_pp(emb, keep_count(self.cfg.keep_ratio, emb.shape[0]), self.generator)
        indices, _ = torch.sort(picked.to(ctx.labels.device))
        return Selection(indices=indices, deviation=phi.amax(dim=1) - phi.amin(dim=1))

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if "generator" in state:
            self.generator.set_state(state["generator"].cpu())
