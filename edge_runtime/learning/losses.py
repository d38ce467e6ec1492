"""The loss of one update as a sum of terms (the learning step, steps 5-6 (docs/design.md)).

A term is a callable ``term(step) -> Tensor | None`` over an
:class:`~edge_runtime.learning.policies.base.UpdateStep` (defined beside the policy interface, since
a policy's own term sees the same step; imported here for the learner); the learner adds
the values of the terms it is given, in order, and ``None`` adds nothing.  The standard terms
(:func:`standard_terms`) are the cross-entropy of the incoming samples (ER-ACE masking), the extra
unimodal cross-entropy, the replay cross-entropy and KD against the teacher; a policy may add its
own (``policy.loss``, e.g. DUS's unimodal replay).  Forwards are computed on first use and shared
by all terms, so a term costs no forward it does not ask for.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Sequence

import torch
import torch.nn.functional as F

from edge_runtime.learning.distill import Teacher, kd_loss
from edge_runtime.learning.policies.base import Forwarded, LossTerm, UpdateStep

if TYPE_CHECKING:
    from edge_runtime.core.config import TrainingConfig

__all__ = ["Forwarded", "UpdateStep", "LossTerm", "IncomingCE", "UnimodalCE", "replay_ce", "Distillation", "standard_terms", "total_loss"]


class IncomingCE:
    """Cross-entropy of the incoming samples; with ``asymmetric`` (ER-ACE, Caccia et al. 2022) their
    logits are restricted to the classes present in the incoming batch."""

    def __init__(self, asymmetric: bool) -> None:
        self.asymmetric = asymmetric

    def __call__(self, step: UpdateStep) -> torch.Tensor | None:
        inc = step.incoming
        if inc is None:
            return None
        logits = inc.output.logits.float()
        if self.asymmetric:
            logits = logits.masked_fill(~step.present, float("-inf"))
        return F.cross_entropy(logits, inc.labels)


class UnimodalCE:
    """``weight * sum_m CE(unimodal[m])`` of the incoming samples: every modality's own head, in the
    model's order (``weight * (CE(audio head) + CE(video head))`` by default)."""

    def __init__(self, weight: float) -> None:
        self.weight = weight

    def __call__(self, step: UpdateStep) -> torch.Tensor | None:
        inc = step.incoming
        if inc is None:
            return None
        total = None
        for logits in inc.output.unimodal.values():
            term = F.cross_entropy(logits.float(), inc.labels)
            total = term if total is None else total + term
        return None if total is None else self.weight * total


def replay_ce(step: UpdateStep) -> torch.Tensor | None:
    """Full cross-entropy of the replayed samples."""
    rep = step.replay
    return None if rep is None else F.cross_entropy(rep.output.logits.float(), rep.labels)


class Distillation:
    """``weight * KD`` of the replayed samples against the teacher (once it exists), over the classes it had seen.

    The teacher's logits per stored sample are cached (see :meth:`Teacher.cached_logits`); ``keep``
    tells which cached keys are still worth keeping when the cache passes ``limit``.
    """

    def __init__(self, teacher: Teacher, weight: float, temperature: float, keep: Callable[[Any], bool], limit: int) -> None:
        self.teacher, self.weight, self.temperature, self.keep, self.limit = teacher, weight, temperature, keep, limit

    def __call__(self, step: UpdateStep) -> torch.Tensor | None:
        rep = step.replay
        if rep is None or self.teacher.model is None:
            return None
        tlogits = self.teacher.cached_logits([s.key for s in step.plan.samples], rep.inputs, keep=self.keep, limit=self.limit)
        return self.weight * kd_loss(rep.output.logits.float(), tlogits, self.teacher.classes, self.temperature)


def standard_terms(tc: "TrainingConfig", teacher: Teacher, keep: Callable[[Any], bool], cache_limit: int) -> list[LossTerm]:
    """The learner's own terms for ``training`` settings ``tc``, in the order they are summed."""
    terms: list[LossTerm] = [IncomingCE(tc.asymmetric_ce)]
    if tc.unimodal_loss_weight > 0:
        terms.append(UnimodalCE(tc.unimodal_loss_weight))
    terms.append(replay_ce)
    if tc.kd_lambda > 0:
        terms.append(Distillation(teacher, tc.kd_lambda, tc.kd_temperature, keep, cache_limit))
    return terms


def total_loss(terms: Sequence[LossTerm], step: UpdateStep, device: torch.device) -> torch.Tensor:
    """``0 + term_1 + term_2 + ...`` over the terms that return a value, in order."""
    loss = torch.zeros((), device=device)
    for term in terms:
        value = term(step)
        if value is not None:
            loss = loss + value
    return loss
