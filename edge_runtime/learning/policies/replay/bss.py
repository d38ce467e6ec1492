"""BSS replay ("Balance-aware Sequence Sampling") in the streaming runtime.

In the paper BSS orders an epoch's training samples from balanced to imbalanced.  Here the
"data set" is the replay buffer and an "epoch" is a round of ``replay.round_updates`` learner
updates.  At the start of every round (and whenever a quarter of the buffer is new since the
last scoring) every buffered sample is re-scored with the current model
(:mod:`edge_runtime.learning.policies.scoring.balance`):

* ``heuristic``: replay batches are drawn uniformly from the ``lambda_t`` most balanced share of
  the scored samples, ``lambda_t = min(1, sqrt((1 - lambda_0^2)/T_grow * (t + 1) + lambda_0^2))``
  (t = round index), so replay moves from balanced towards imbalanced samples;
* ``learned``: replay batches are drawn without replacement with probability proportional to
  ``w = 1 - (norm(loss) - norm(cos)) + 0.01``.

Samples admitted since the last scoring wait for the next one (at most a round).

Any number N >= 2 of modalities: the dissimilarity is the mean over all pairs of modalities and the
loss term sums every unimodal head (see the scoring module); one modality is a ValueError.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import torch

from edge_runtime.core.policy_settings import BSSSettings
from edge_runtime.learning.policies.scoring.balance import balance_score, pacing, sampling_weights
from edge_runtime.learning.policies.base import Forward, ReplayPlan, ReplayPolicy, check_modality_count

_SCORE_CHUNK = 256


class BSSReplay(ReplayPolicy):
    Settings = BSSSettings

    def __init__(self, cfg: BSSSettings, replay_batch_size: int, seed: int = 0) -> None:
        self.cfg = cfg
        self.generator = torch.Generator(device="cpu")
        self.generator.manual_seed(int(seed))
        self.calls = 0
        self.keys: list[Any] = []  # scored keys, most balanced first (heuristic) / in buffer order (learned)
        self.values = torch.zeros(0, dtype=torch.float64)  # their scores (heuristic) or weights (learned)

    def check_modalities(self, names) -> None:
        check_modality_count("bss", names, 2, why="compares the predictions of the modalities")

    def observe(self, ctx) -> None:
        self.check_modalities(ctx.modalities)  # a single modality fails at the first step, not the first replay

    @property
    def round(self) -> int:
        """Curriculum round t (0-based)."""
        return self.calls // self.cfg.round_updates

    def _rescore(self, buffer, forward: Forward) -> None:
        keys = buffer.keys()
        values = []
        for i in range(0, len(keys), _SCORE_CHUNK):
            samples = [buffer.get(k) for k in keys[i : i + _SCORE_CHUNK]]
            out = forward(samples)
            self.check_modalities(tuple(out.unimodal))
            y = torch.tensor([s.label for s in samples], dtype=torch.long, device=out.logits.device)
            values.append((out.unimodal, out.logits, y))
        if not values:
            self.keys, self.values = [], torch.zeros(0, dtype=torch.float64)
            return
        # min-max over the whole buffer
        uni = {name: torch.cat([part[0][name] for part in values]) for name in values[0][0]}
        m, y = torch.cat([part[1] for part in values]), torch.cat([part[2] for part in values])
        if self.cfg.variant == "heuristic":
            score = balance_score(uni, m, y).double().cpu()
            order = torch.argsort(score, stable=True)
            self.keys = [keys[i] for i in order.tolist()]
            self.values = score[order]
        else:
            self.keys = list(keys)
            self.values = sampling_weights(uni, m, y).double().cpu()

    def plan(self, buffer, n: int, forward: Forward) -> ReplayPlan:
        if not len(buffer) or n <= 0:
            return ReplayPlan([])
        fresh = self.calls % self.cfg.round_updates == 0
        live = [i for i, k in enumerate(self.keys) if k in buffer]
        if fresh or len(live) < 0.75 * len(buffer):
            self._rescore(buffer, forward)
            live = list(range(len(self.keys)))
        t = self.round
        self.calls += 1
        if self.cfg.variant == "heuristic":
            share = pacing(t, self.cfg.lambda0, self.cfg.t_grow)
            pool = live[: max(1, math.ceil(share * len(live)))]
            picks = torch.randperm(len(pool), generator=self.generator)[:n].tolist()
            chosen = [pool[i] for i in picks]
        else:
            idx = torch.tensor(live, dtype=torch.long)
            weights = self.values.index_select(0, idx)
            draws = torch.multinomial(weights, min(n, len(live)), replacement=False, generator=self.generator)
            chosen = idx.index_select(0, draws).tolist()
        return ReplayPlan([buffer.get(self.keys[i]) for i in chosen])

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state(), "calls": self.calls}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if "generator" in state:
            self.generator.set_state(state["generator"].cpu())
        self.calls = int(state.get("calls", 0))
        self.keys, self.values = [], torch.zeros(0, dtype=torch.float64)  # re-scored on the next plan
