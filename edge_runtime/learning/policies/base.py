"""The interface every selection policy implements, and what a policy may look at.

At selection time a policy sees a :class:`StepContext`; at every update its own loss term (and
the learner's, :mod:`edge_runtime.learning.losses`) sees an :class:`UpdateStep`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any, Callable, Sequence

import torch

if TYPE_CHECKING:
    from edge_runtime.learning.batch import Batch
    from edge_runtime.learning.buffer import ReplayBuffer
    from edge_runtime.learning.model import ModelOutput, MultimodalNet
    from edge_runtime.core.sample import Sample


@dataclass
class StepContext:
    """Everything known about the labelled training samples of one micro-batch at selection time.

    ``output`` is the (detached) forward of the current model on ``batch``; ``p`` maps each modality
    name (in the model's order) to the per-modality confidences of the true class, (B,) each (the
    learning step, step 2 (docs/design.md)), computed by the learner with the configured confidence
    (prototype or linear head).
    """

    batch: "Batch"
    labels: torch.Tensor
    output: "ModelOutput"
    p: dict[str, torch.Tensor]
    model: "MultimodalNet"

    @property
    def modalities(self) -> tuple[str, ...]:
        """The modality names, in the model's order."""
        return tuple(self.p)

    def confidences(self) -> torch.Tensor:
        """(B, N) the confidences of the true class, one column per modality in order."""
        return torch.stack([self.p[name] for name in self.p], dim=1)


@dataclass
class Selection:
    """Chosen row indices (into the context's batch) and an optional per-row score.

    ``deviation`` (one value per row of the batch, not only the chosen ones) is what the buffer's
    ``mbs`` retention uses to evict the least balanced sample; policies without one leave it None.
    """

    indices: torch.Tensor
    deviation: torch.Tensor | None = None


def check_modality_count(policy: str, names: Sequence[str], minimum: int = 1, maximum: int | None = None,
                         why: str = "") -> tuple[str, ...]:
    """``names`` as a tuple; a one-line ValueError when a policy that needs ``minimum`` to ``maximum``
    modalities is given another number (``why``: what the policy does with them, for the message)."""
    names = tuple(names)
    n = len(names)
    if n < minimum:
        raise ValueError(f"{policy} {why or 'compares modalities'}: it needs at least {minimum} modalities, "
                         f"{n} declared ({', '.join(names) or 'none'})")
    if maximum is not None and n > maximum:
        raise ValueError(f"{policy} {why}; N = {n} modalities declared, at most {maximum} supported")
    return names


def keep_count(keep_ratio: float, n: int) -> int:
    """``K = max(1, floor(keep_ratio * n))`` for a non-empty batch, 0 for an empty one."""
    return max(1, int(math.floor(keep_ratio * n))) if n else 0


def keep_by_score(score: torch.Tensor, keep_ratio: float, largest: bool) -> torch.Tensor:
    """Sorted indices of the ``keep_count`` rows with the largest (or smallest) score; NaN rows never kept.

    Ties go to the lower index (stable sort).
    """
    n = int(score.shape[0])
    k = keep_count(keep_ratio, n)
    valid = torch.nonzero(~torch.isnan(score)).squeeze(1)
    key = score.index_select(0, valid)
    order = torch.argsort(-key if largest else key, stable=True)[:k]
    indices, _ = torch.sort(valid.index_select(0, order))
    return indices


@dataclass
class ReplayPlan:
    """What one update replays: ``samples`` go through the fused head (CE + KD); ``extra`` is
    whatever else the replay policy planned for its own loss term (e.g. DUS's unimodal samples),
    opaque to the learner.  An update runs when there are incoming samples, ``samples`` or ``extra``."""

    samples: list["Sample"]
    extra: Any = None


#: ``forward(samples) -> ModelOutput`` of the current model, without gradients (for re-scoring).
Forward = Callable[[list["Sample"]], "ModelOutput"]


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
    * ``selection``: the admission policy's :class:`Selection` of this batch;
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


#: ``loss(step) -> Tensor | None``: a loss term (the learner's own, or a policy's), summed at every update.
LossTerm = Callable[[UpdateStep], "torch.Tensor | None"]


class SelectionPolicy:
    """Base class: ``select(ctx) -> Selection``; state that must survive a restart goes in state_dict.

    A subclass declares ``Settings`` (its pydantic settings model, a subclass of
    :class:`~edge_runtime.core.policy_settings.SelectionSettings`) and is built as ``Policy(settings,
    seed=...)``.  It may define ``loss(step)``, a term the learner adds to its loss at every update
    (see :class:`UpdateStep` for what a term may look at).
    """

    loss: LossTerm | None = None

    def check_modalities(self, names: Sequence[str]) -> None:
        """ValueError (one line) when the policy cannot work with the modalities ``names`` (in the
        model's order).  :func:`~edge_runtime.learning.policies.build_policy` calls it when it is given
        the modalities, so a mismatch shows at construction; a policy that needs it also checks at
        first use.  The default accepts any number."""
        return None

    def select(self, ctx: StepContext) -> Selection:  # pragma: no cover - interface
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        return None


class ReplayPolicy:
    """Base class of replay policies: how each update's replay batch is drawn from the buffer.

    ``observe(ctx)`` sees every step's selection context (to monitor the stream);
    ``plan(buffer, n, forward)`` returns the :class:`ReplayPlan` of one update.  A subclass declares
    ``Settings`` (a subclass of :class:`~edge_runtime.core.policy_settings.ReplaySettings`), is built as
    ``Policy(settings, replay_batch_size, seed=...)`` and may define a ``loss(step)`` term.
    """

    loss: LossTerm | None = None
    #: True when ``plan`` depends on neither ``observe`` of the current batch nor ``forward``: the
    #: learner may then plan an update's replay before the step's forward and share that forward.
    plans_ahead: bool = False

    def check_modalities(self, names: Sequence[str]) -> None:
        """As :meth:`SelectionPolicy.check_modalities` (called by :func:`~edge_runtime.learning.policies.build_replay`)."""
        return None

    def observe(self, ctx: StepContext) -> None:
        return None

    def plan(self, buffer: "ReplayBuffer", n: int, forward: Forward) -> ReplayPlan:  # pragma: no cover - interface
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        return None
