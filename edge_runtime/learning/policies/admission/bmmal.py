"""BMMAL selection: Shapley-weighted gradient embeddings + k-means++ seeding.

The method of "Towards Balanced Active Learning for Multimodal Classification".  For each
labelled row of the micro-batch: the two modalities' Shapley values on the fused prediction
(zeroed features = dropped modality), their contributions phi, weights (1 for the stronger,
1 - |phi_a - phi_v| for the weaker), the weighted per-modality gradient embedding, and
``K = max(1, floor(keep_ratio * n))`` rows picked by k-means++ seeding.  See
:mod:`edge_runtime.learning.policies.scoring.shapley` for the formulas.

The per-row ``deviation`` handed to the buffer is ``|phi_a - phi_v|`` (0 = balanced), so the
``mbs`` retention evicts the least balanced sample under BMMAL as well.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch

from edge_runtime.core.policy_settings import BMMALSettings
from edge_runtime.learning.policies.scoring.shapley import contributions, gradient_embedding, kmeans_pp, modality_weights, shapley_two_modalities
from edge_runtime.learning.policies.base import Selection, SelectionPolicy, StepContext, keep_count


class BMMALPolicy(SelectionPolicy):
    Settings = BMMALSettings

    def __init__(self, cfg: BMMALSettings, seed: int = 0) -> None:
        self.cfg = cfg
        self.generator = torch.Generator(device="cpu")
        self.generator.manual_seed(int(seed))

    def select(self, ctx: StepContext) -> Selection:
        z_a, z_v = ctx.output.z_audio, ctx.output.z_video
        fusion = ctx.model.fusion
        was_training = fusion.training
        fusion.eval()
        try:
            d_a, d_v, probs = shapley_two_modalities(lambda a, v: fusion(a, v)[0], z_a, z_v)
        finally:
            fusion.train(was_training)
        phi_a, phi_v = contributions(d_a, d_v)
        w_a, w_v = modality_weights(phi_a, phi_v)
        emb = gradient_embedding(probs, z_a, z_v, w_a, w_v)
        picked = kmeans_pp(emb, keep_count(self.cfg.keep_ratio, emb.shape[0]), self.generator)
        indices, _ = torch.sort(picked.to(ctx.labels.device))
        return Selection(indices=indices, deviation=(phi_a - phi_v).abs())

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if "generator" in state:
            self.generator.set_state(state["generator"].cpu())
