"""The learner's loss is the sum of its terms: the standard terms against a direct computation."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tests.support.streams import stream
from edge_runtime.learning.batch import collate
from edge_runtime.core.config import config_from_dict
from edge_runtime.learning.learner import Learner
from edge_runtime.learning.losses import Forwarded, IncomingCE, UnimodalCE, UpdateStep, replay_ce, total_loss
from edge_runtime.learning.policies.base import ReplayPlan


def test_standard_terms_sum_to_the_written_out_loss(synthetic):
    learner = Learner(config_from_dict({"training": {"unimodal_loss_weight": 0.3}}))
    samples = stream(synthetic, range(24))
    incoming, replayed = samples[:16], samples[16:]
    b_in = collate(incoming)
    present = torch.zeros(10, dtype=torch.bool)
    present[b_in.labels] = True
    with torch.no_grad():
        out_in = learner.model(*b_in.inputs())
        b_rep = collate(replayed)
        out_rep = learner.model(*b_rep.inputs())
    step = UpdateStep(incoming=lambda: Forwarded(out_in, b_in.labels), present=present, plan=ReplayPlan(replayed), selection=None,
                      forward_samples=lambda s: (collate(list(s)), learner.model(*collate(list(s)).inputs())))
    got = total_loss(learner.terms, step, torch.device("cpu"))
    masked = out_in.logits.masked_fill(~present, float("-inf"))
    want = (F.cross_entropy(masked, b_in.labels)
            + 0.3 * (F.cross_entropy(out_in.unimodal["audio"], b_in.labels) + F.cross_entropy(out_in.unimodal["video"], b_in.labels))
            + F.cross_entropy(out_rep.logits, b_rep.labels))  # no teacher yet: KD adds nothing
    assert torch.allclose(got.detach(), want, atol=1e-6)
    assert [type(t) for t in learner.terms[:2]] == [IncomingCE, UnimodalCE] and learner.terms[2] is replay_ce


def test_terms_share_one_forward_and_none_adds_nothing(synthetic):
    calls = []
    samples = stream(synthetic, range(8))

    def forward(s):
        calls.append(len(s))
        b = collate(list(s))
        return b, _FixedOut(len(s))

    step = UpdateStep(incoming=lambda: None, present=torch.ones(10, dtype=torch.bool), plan=ReplayPlan(samples), selection=None,
                      forward_samples=forward)
    assert IncomingCE(True)(step) is None and UnimodalCE(1.0)(step) is None
    replay_ce(step), replay_ce(step)
    assert calls == [8]  # the replay forward is computed once, on first use
    assert total_loss([lambda s: None], step, torch.device("cpu")).item() == 0.0


class _FixedOut:
    def __init__(self, n):
        self.logits = torch.zeros(n, 10)
