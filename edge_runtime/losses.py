"""The loss of one update as a sum of terms (DESIGN steps 5-6).

A term is a callable ``term(step) -> Tensor | None`` over an :class:`UpdateStep`; the learner adds
the values of the terms it is given, in order, and ``None`` adds nothing.  The standard terms
(:func:`standard_terms`) are the cross-entropy of the incoming samples (ER-ACE masking), the extra
unimodal cross-entropy, the replay cross-entropy and KD against the teacher; a policy may add its
own (``policy.loss``, e.g. DUS's unimodal replay).  Forwards are computed on first use and shared
by all terms, so a term costs no forward it does not ask for.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any, Callable, Sequence

import torch
import torch.nn.functional as F

from edge_runtime.distill import Teacher, kd_loss

if TYPE_CHECKING:
    from edge_runtime.batch import Batch
    from edge_runtime.config import TrainingConfig
    from edge_runtime.model import ModelOutput
    from edge_runtime.selection.base import ReplayPlan, Selection
    from edge_runtime.sample import Sample


@dataclass
class Forwarded:
    """A forward with gradients: the model's outputs, the labels and the inputs it was given."""

    output: "ModelOutput"
    labels: torch.Tensor
    inputs: tuple[torch.Tensor, ...] | None = None


class UpdateStep:
    """What the loss terms of one optimiser step may look at.

    * ``incoming``: the forward of the incoming samples trained on (``None`` when there are none),
      ``present``: bool mask of the classes in the incoming batch (ER-ACE);
    * ``replay``: the forward of ``plan.samples`` through the model (``None`` when nothing is replayed);
    * ``plan``: the replay policy's plan (``plan.extra`` is that policy's own payload);
    * ``selection``: the admission policy's :class:`~edge_runtime.selection.base.Selection` of this batch;
    * ``forward(samples) -> (output, labels)``: a forward with gradients of any other samples.

    ``replay`` (optional) computes the replay forward instead of ``forward_samples(plan.samples)``:
    the learner passes it when the replay rows went through the model together with the incoming ones.
    """

    def __init__(self, *, incoming: Callable[[], Forwarded | None], present: torch.Tensor, plan: "ReplayPlan",
                 selection: "Selection | None", forward_samples: Callable[[Sequence["Sample"]], tuple["Batch", "ModelOutput"]],
                 replay: Callable[[], Forwarded | None] | None = None) -> None:
        self._incoming = incoming
        self._replay = replay
        self.present = present
        self.plan = plan
        self.selection = selection
        self._forward_samples = forward_samples

    @cached_property
    def incoming(self) -> Forwarded | None:
        return self._incoming()

    @cached_property
    def replay(self) -> Forwarded | None:
        if not self.plan.samples:
            return None
        if self._replay is not None:
            return self._replay()
        batch, out = self._forward_samples(self.plan.samples)
        return Forwarded(out, batch.labels, batch.inputs())

    def forward(self, samples: Sequence["Sample"]) -> tuple["ModelOutput", torch.Tensor]:
        """The model's outputs (with gradients) and labels of ``samples``."""
        batch, out = self._forward_samples(samples)
        return out, batch.labels


LossTerm = Callable[[UpdateStep], "torch.Tensor | None"]


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
    """``weight * (CE(audio head) + CE(video head))`` of the incoming samples."""

    def __init__(self, weight: float) -> None:
        self.weight = weight

    def __call__(self, step: UpdateStep) -> torch.Tensor | None:
        inc = step.incoming
        if inc is None:
            return None
        out = inc.output
        return self.weight * (F.cross_entropy(out.audio_logits.float(), inc.labels) + F.cross_entropy(out.video_logits.float(), inc.labels))


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
