"""The one training loop: ``Learner.observe(samples) -> verdicts``, used by the node and the benchmarks.

Each call runs the learning step (docs/design.md) on one micro-batch, one method per stage of
:meth:`Learner._step`:

1. ``_predict_and_record``: forward with the current model; prequential and held-out accuracy go
   to the learner's :class:`~edge_runtime.learning.evaluation.StreamMetrics` (predict before learning);
2. ``_confidences``: EMA class prototypes per modality and the per-modality confidence of the true
   class (prototype or linear-head confidence);
3-4. ``_select``: the configured admission policy (by default ``all``: every sample is offered to the
   class-balanced buffer; MBS's Algorithm 1 is ``selection.policy: mbs``);
5-6. ``_losses_and_update``: optimiser steps on the sum of the loss terms (:mod:`edge_runtime.learning.losses`:
   incoming CE with ER-ACE masking, replay CE, KD against a frozen teacher, and the policies' own terms);
7. ``_admit_and_verdicts``: selected samples offered to the bounded replay buffer; one verdict per
   sample: admitted, trained, skipped, eval, invalid:<reason>.

Numeric guard (:mod:`edge_runtime.learning.guard`, issue 24 G2): the step's forward outputs, each
loss and its gradients (before ``optimizer.step``) and the weights, optimiser state and prototypes
(after it) must be finite. If not, the micro-batch is rolled back (weights, optimiser state,
prototypes, seen classes, accuracy counters; the policies' running statistics, which only ever see
finite outputs, are not) and learned again without the samples at fault: those whose outputs were
non-finite, else (a failed update) each sample alone. Only a sample at fault gets
``invalid:non_finite_update``, and it never enters the replay buffer.

The learner knows nothing about sockets; it is fed lists of :class:`~edge_runtime.core.sample.Sample`.

At about 540 lines this module is over the house's 400: it is one cohesive thing, the stages of one
step sharing the learner's state (model, optimiser, prototypes, teacher, buffer), and splitting the
stages apart would pass that state around instead of reading it in one place.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import torch
import torch.nn.functional as F

from edge_runtime.learning.batch import Batch, collate
from edge_runtime.learning.buffer import ReplayBuffer
from edge_runtime.core.config import Config, TrainingConfig
from edge_runtime.core.names import (BUFFER_BYTES, BUFFER_ITEMS, EVAL_ACCURACY, MODALITY_EVAL_ACCURACY, PREQUENTIAL_ACCURACY,
                                     SAMPLES_SEEN, UPDATES)
from edge_runtime.learning.distill import Teacher
from edge_runtime.learning.evaluation import StreamMetrics
from edge_runtime.learning.guard import NumericGuard, all_finite
from edge_runtime.learning.losses import Forwarded, LossTerm, UpdateStep, standard_terms, total_loss
from edge_runtime.learning.model import ModelOutput, build_model
from edge_runtime.learning.prototypes import ModalityPrototypes
from edge_runtime.learning.policies import build_policy, build_replay
from edge_runtime.learning.policies.base import ReplayPlan, Selection, StepContext
from edge_runtime.core.validation import model_contract
from edge_runtime.core.sample import Sample

ADMITTED, TRAINED, SKIPPED, EVAL = "admitted", "trained", "skipped", "eval"
NON_FINITE = "invalid:non_finite_update"

log = logging.getLogger(__name__)


class NonFiniteUpdate(ArithmeticError):
    """A step made something non-finite; raised inside the step, caught by ``observe`` (rolled back).

    ``culprits``: the positions (in the step's samples) known to be at fault, when the forward shows it.
    """

    def __init__(self, message: str, culprits: list[int] | None = None) -> None:
        super().__init__(message)
        self.culprits = culprits


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when available, else CPU; an unavailable CUDA device is a clear error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device: {name!r} requested but CUDA is not available on this machine; use device: auto or cpu")
    return device


def resolve_amp(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``training.amp`` on ``device``; None (float32) on CPU and when off."""
    if amp == "off" or device.type != "cuda":
        return None
    if amp == "bf16" or (amp == "auto" and torch.cuda.is_bf16_supported()):
        return torch.bfloat16
    return torch.float16


@dataclass
class StepTimes:
    """Seconds spent per phase, accumulated over all steps (for benchmarks/learner_step.py)."""

    data: float = 0.0  # collating samples into tensors
    model: float = 0.0  # forward, backward, optimiser step (incoming and replay)
    select: float = 0.0  # prototypes, confidences, scoring, selection
    buffer: float = 0.0  # replay sampling and admission

    def as_dict(self) -> dict[str, float]:
        return dict(self.__dict__)


@dataclass
class LearnerStats:
    """Counters of the stream (accuracies live in :class:`~edge_runtime.learning.evaluation.StreamMetrics`)."""

    samples_seen: int = 0
    updates: int = 0
    verdicts: Counter = field(default_factory=Counter)


def make_optimizer(tc: TrainingConfig, params: Iterable[torch.nn.Parameter]) -> torch.optim.Optimizer:
    """The optimiser ``training.optimizer`` names, with its learning rate, momentum and weight decay."""
    if tc.optimizer == "sgd":
        return torch.optim.SGD(params, lr=tc.lr, momentum=tc.momentum, weight_decay=tc.weight_decay)
    return torch.optim.Adam(params, lr=tc.lr, weight_decay=tc.weight_decay)


class Learner:
    """Incremental multimodal learner with balanced selection, bounded replay and distillation.

    ``metrics`` receives the stream's prequential and held-out accuracy (a fresh
    :class:`StreamMetrics` by default); ``terms`` replaces the learner's standard loss terms
    (:func:`~edge_runtime.learning.losses.standard_terms`); the policies' own terms are always added after them.
    """

    def __init__(self, config: Config, store: Any | None = None, metrics: StreamMetrics | None = None,
                 terms: Sequence[LossTerm] | None = None) -> None:
        self.config = config
        self.device = resolve_device(config.device)
        if config.num_threads:
            torch.set_num_threads(config.num_threads)
        seed = config.training.seed
        torch.manual_seed(seed)
        mc = config.model
        self.model = build_model(config).to(self.device)
        self.modalities: tuple[str, ...] = tuple(config.modalities)
        self.num_classes = mc.num_classes
        self.optimizer = make_optimizer(config.training, self.model.parameters())
        self.prototypes = ModalityPrototypes(mc.num_classes, dict(self.model.embed_dims), config.prototypes.momentum).to(self.device)
        self.policy_settings = config.selection
        self.policy = build_policy(config.selection, seed=seed, modalities=self.modalities)
        self.buffer = ReplayBuffer(config.buffer, seed=seed, store=store)
        self.replay = build_replay(config.replay, config.buffer.replay_batch_size, seed=seed, modalities=self.modalities)
        tc = config.training
        self.teacher = Teacher(tc.teacher_every, tc.teacher_on_new_class, getattr(torch, tc.teacher_dtype))
        self.amp_dtype = resolve_amp(tc.amp, self.device)
        # fp16 needs loss scaling against underflow; bf16 has float32's range and does not.
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        self.pin = self.device.type == "cuda"
        self.seen = torch.zeros(mc.num_classes, dtype=torch.bool, device=self.device)
        self.stats = LearnerStats()
        self.metrics = metrics if metrics is not None else StreamMetrics()
        self.times = StepTimes()
        own = list(terms) if terms is not None else standard_terms(tc, self.teacher, self.buffer.__contains__, 4 * config.buffer.max_items)
        self.terms: list[LossTerm] = own + [p.loss for p in (self.policy, self.replay) if p.loss is not None]
        self._contract = model_contract(config, bounded=False)
        self.guard = NumericGuard(self.model, self.optimizer)
        self.numeric_guard = True  # off only to measure its cost (benchmarks/numeric_guard.py)

    # ------------------------------------------------------------------ validation
    def check(self, sample: Sample) -> str | None:
        """Why ``sample`` cannot be learned from (a reason code of ``edge_runtime.core.validation.REASONS``), or None."""
        problem = self._contract.check(sample)
        return None if problem is None else problem.code

    # ------------------------------------------------------------------ what the node uses (LearnerLike)
    @property
    def updates(self) -> int:
        """Optimiser updates so far (the model publisher counts versions by it)."""
        return self.stats.updates

    def export_model(self) -> torch.nn.Module:
        """The model to export (ONNX) and publish to devices."""
        return self.model

    def restore_from_store(self) -> int:
        """Rebuild the replay buffer from its durable store (no checkpoint yet); returns the items kept."""
        self.buffer.restore_from_store()
        return len(self.buffer)

    # ------------------------------------------------------------------ the step
    def observe(self, samples: Sequence[Sample]) -> list[str]:
        """Predict, then learn from one micro-batch; return one verdict per sample, in order."""
        verdicts: list[str] = [""] * len(samples)
        valid: list[int] = []
        for i, s in enumerate(samples):
            reason = self.check(s)
            if reason is None:
                valid.append(i)
            else:
                verdicts[i] = f"invalid:{reason}"
        if valid:
            if self.numeric_guard:
                self._guarded_step([samples[i] for i in valid], valid, verdicts)
            else:
                self._step([samples[i] for i in valid], valid, verdicts)
        self.stats.samples_seen += len(samples)
        self.stats.verdicts.update(verdicts)
        return verdicts

    def _guarded_step(self, samples: list[Sample], positions: list[int], verdicts: list[str]) -> None:
        """``_step`` rolled back when it turns anything non-finite; then each sample alone (see the module docstring)."""
        protos = {name: (p.prototypes, p.seen) for name, p in self.prototypes.modalities.items()}  # replaced, not changed, by updates
        seen, metrics, updates = self.seen.clone(), self.metrics.state_dict(), self.stats.updates
        self.guard.snapshot()
        try:
            self._step(samples, positions, verdicts)
            return
        except NonFiniteUpdate as err:
            self.guard.restore()
            for name, (c, s) in protos.items():
                self.prototypes[name].prototypes, self.prototypes[name].seen = c, s
            self.seen.copy_(seen)
            self.metrics.load_state_dict(metrics)
            self.stats.updates = updates
            reason, culprits = str(err), err.culprits or None  # [] (no single row at fault): find them one by one
        if culprits is None and len(samples) > 1:  # the update failed: find the culprits one by one
            for sample, pos in zip(samples, positions):
                self._guarded_step([sample], [pos], verdicts)
            return
        bad = set(culprits if culprits is not None else range(len(samples)))
        for i in sorted(bad):
            verdicts[positions[i]] = NON_FINITE
            log.warning("non-finite update rolled back", extra={"event": "non_finite_update", "device": samples[i].device,
                                                                "seq": samples[i].seq, "reason": reason})
        rest = [i for i in range(len(samples)) if i not in bad]
        if rest:  # the others, without the rows whose outputs were non-finite
            self._guarded_step([samples[i] for i in rest], [positions[i] for i in rest], verdicts)

    def _step(self, samples: list[Sample], positions: list[int], verdicts: list[str]) -> None:
        """The learning step (docs/design.md) on the valid samples of one micro-batch, stage by stage."""
        times = self.times
        t0 = time.perf_counter()
        batch = self._to_device(self._collate(samples))
        # A replay policy whose plan cannot depend on this batch plans now, so that the first
        # update's replay rows share the prediction forward (one forward instead of two).
        trains = any(x.label is not None and x.split != "eval" for x in samples)  # else no update: plan nothing
        ahead = self._plan_replay() if trains and self.replay.plans_ahead and self.config.training.fuse_forward else None
        t1 = time.perf_counter()
        times.data += t1 - t0
        out, replayed = self._predict_and_record(batch, samples, ahead)
        if self.numeric_guard and not all_finite(out.tensors()):
            rows_ok = torch.stack([torch.isfinite(t.detach()).flatten(1).all(1) for t in out.tensors()]).all(0)
            raise NonFiniteUpdate("the model's outputs are NaN/Inf", torch.nonzero(~rows_ok).squeeze(1).tolist())
        rows = self._untrained_verdicts(batch, positions, verdicts)
        t2 = time.perf_counter()
        times.model += t2 - t1
        if rows.numel() == 0:
            return
        ctx, present = self._confidences(batch, out, rows)
        selection = self._select(ctx)
        self.seen |= present
        chosen = rows if self.policy_settings.train_on == "all" else rows.index_select(0, selection.indices.to(self.device))
        t3 = time.perf_counter()
        times.select += t3 - t2
        self._losses_and_update(out, batch, samples, chosen, present, selection, ahead, replayed)
        t5 = time.perf_counter()
        self._admit_and_verdicts(samples, positions, rows, selection, verdicts)
        times.buffer += time.perf_counter() - t5

    def _predict_and_record(self, batch: Batch, samples: list[Sample], ahead: ReplayPlan | None) -> tuple[ModelOutput, Forwarded | None]:
        """Step 1: forward with the current model; prequential and held-out accuracy (fused, and each
        modality's own head on the held-out rows) into ``self.metrics``.

        With a replay plan made ahead, its samples go through the same forward (their rows come
        after the incoming ones); returns the incoming outputs and that replay forward (or None).
        """
        self.model.train()
        replayed = None
        if ahead is not None and ahead.samples:
            out, replayed = self._forward_fused(samples, ahead.samples)
        else:
            with self._autocast():
                out = self.model(*batch.inputs())
        with torch.no_grad():
            self.metrics.update(batch.labels, out.logits.argmax(dim=1), batch.is_eval,
                                {name: out.unimodal[name].argmax(dim=1) for name in self.modalities})
        return out, replayed

    def _forward_fused(self, incoming: list[Sample], replay: list[Sample]) -> tuple[ModelOutput, Forwarded]:
        """One forward with gradients of ``incoming`` and then ``replay`` stacked as one batch.

        Returns the incoming rows' outputs and the replay rows' :class:`Forwarded`.  Exact per
        sample: the encoders are padding-invariant and have no batch statistics (GroupNorm).
        """
        n = len(incoming)
        b = self._to_device(self._collate(list(incoming) + list(replay)))
        with self._autocast():
            out = self.model(*b.inputs())
        rep = Forwarded(out.map(lambda t: t[n:]), b.labels[n:], tuple(t[n:] for t in b.inputs()))
        return out.map(lambda t: t[:n]), rep

    def _untrained_verdicts(self, batch: Batch, positions: list[int], verdicts: list[str]) -> torch.Tensor:
        """Verdicts of the rows nothing is learned from (eval, unlabelled); returns the labelled train rows."""
        labels = batch.labels
        for pos, is_eval, label in zip(positions, batch.is_eval.tolist(), labels.tolist()):
            if is_eval:
                verdicts[pos] = EVAL
            elif label < 0:
                verdicts[pos] = SKIPPED  # unlabelled: predicted, nothing to learn from
        return torch.nonzero((labels >= 0) & ~batch.is_eval).squeeze(1)

    def _confidences(self, batch: Batch, out: ModelOutput, rows: torch.Tensor) -> tuple[StepContext, torch.Tensor]:
        """Step 2: teacher snapshot when due, EMA prototypes, per-modality confidences of the true class.

        Returns the selection context of the train rows and the mask of classes present in them.
        """
        y = batch.labels[rows]
        present = torch.zeros_like(self.seen)
        present[y] = True
        new_class = bool((present & ~self.seen).any())
        if self.teacher.due(self.stats.updates, new_class):
            self.teacher.snapshot(self.model, self.seen, self.stats.updates)
        every_row = rows.numel() == len(batch)  # the common case: no copies of the batch or its outputs
        with torch.no_grad():
            sub = out.map(lambda t: t.detach().float() if every_row else t.detach().float().index_select(0, rows))  # float32 even under AMP
            self.prototypes.update(sub.z, y)
            p = self._confidence_of_true_class(sub, y)
        ctx = StepContext(batch=batch if every_row else batch.index(rows), labels=y, output=sub, p=p, model=self.model)
        return ctx, present

    def _select(self, ctx: StepContext) -> Selection:
        """Steps 3-4: the admission policy's selection; the replay policy watches the same context."""
        with torch.no_grad():
            selection = self.policy.select(ctx)
            self.replay.observe(ctx)
        return selection

    def _losses_and_update(self, out: ModelOutput, batch: Batch, samples: list[Sample], chosen: torch.Tensor, present: torch.Tensor,
                           selection: Selection, ahead: ReplayPlan | None = None, replayed: Forwarded | None = None) -> None:
        """Steps 5-6: ``training.replay_steps`` optimiser steps, each on the sum of the loss terms
        (incoming CE, replay CE, KD, the policies' own terms) with a fresh replay plan (the first
        one may have been made ahead, with its forward ``replayed``)."""
        t0 = time.perf_counter()
        plan = ahead if ahead is not None else self._plan_replay()
        t1 = time.perf_counter()
        self.times.buffer += t1 - t0
        if chosen.numel() or plan.samples or plan.extra:
            self._update(out, batch, samples, chosen, present, plan, selection, replayed)
            for _ in range(self.config.training.replay_steps - 1):
                self._update(None, batch, samples, chosen, present, self._plan_replay(), selection)
            self.stats.updates += 1
        self.times.model += time.perf_counter() - t1

    def _admit_and_verdicts(self, samples: list[Sample], positions: list[int], rows: torch.Tensor, selection: Selection,
                            verdicts: list[str]) -> None:
        """Step 7: selected samples are offered to the buffer (admitted or trained); the others were
        trained on (``train_on: all``) or skipped."""
        deviation = selection.deviation.tolist() if selection.deviation is not None else None
        chosen_rows = set(selection.indices.tolist())
        unselected = TRAINED if self.policy_settings.train_on == "all" else SKIPPED
        for j, row in enumerate(rows.tolist()):
            pos = positions[row]
            if j in chosen_rows:
                score = float(deviation[j]) if deviation is not None else 0.0
                result = self.buffer.offer(samples[row], score)
                verdicts[pos] = ADMITTED if result.admitted else TRAINED
            else:
                verdicts[pos] = unselected

    def _confidence_of_true_class(self, out: ModelOutput, y: torch.Tensor) -> dict[str, torch.Tensor]:
        """p_m of the true class per modality m (the learning step, step 2, docs/design.md)."""
        if self.config.prototypes.confidence == "prototype":
            return {name: self.prototypes.confidence(name, out.z[name], y) for name in self.modalities}
        return {name: F.softmax(out.unimodal[name].float(), dim=1).gather(1, y[:, None]).squeeze(1) for name in self.modalities}

    def _plan_replay(self) -> ReplayPlan:
        """The replay policy's plan for one update (uniform, BSS, DUS, ...)."""
        return self.replay.plan(self.buffer, self.config.buffer.replay_batch_size, self._forward_no_grad)

    @torch.no_grad()
    def _forward_no_grad(self, samples: list[Sample]) -> ModelOutput:
        """The current model's outputs on ``samples`` (train mode, no gradients): for re-scoring."""
        with self._autocast():
            out = self.model(*self._to_device(self._collate(samples)).inputs())
        return out.map(lambda t: t.float())

    def _forward_samples(self, samples: Sequence[Sample]) -> tuple[Batch, ModelOutput]:
        """The device batch of ``samples`` and the model's outputs on it, with gradients."""
        b = self._to_device(self._collate(list(samples)))
        with self._autocast():
            return b, self.model(*b.inputs())

    def _collate(self, samples: Sequence[Sample]) -> Batch:
        """The padded batch of ``samples``, its modalities in the model's order."""
        return collate(samples, self.modalities)

    def _autocast(self):
        """Mixed precision on CUDA when ``training.amp`` asks for it; a no-op context on CPU."""
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type="cuda", dtype=self.amp_dtype)

    def _to_device(self, batch: Batch) -> Batch:
        """Host-to-device copy; on CUDA from pinned memory, asynchronously."""
        if self.pin:
            return batch.pin_memory().to(self.device, non_blocking=True)
        return batch.to(self.device)

    def _update(self, out: ModelOutput | None, batch: Batch, samples: list[Sample], chosen: torch.Tensor, present: torch.Tensor,
                plan: ReplayPlan, selection: Selection, replayed: Forwarded | None = None) -> None:
        """One optimiser step on the sum of the loss terms.

        ``out`` is the step-1 forward (None: forward again) and ``replayed`` the replay forward made
        with it (None: the replay rows get their own forward, or share one with the incoming rows
        when ``training.fuse_forward`` is on and both are trained on).
        """
        fused: Forwarded | None = None
        if out is None and replayed is None and chosen.numel() and plan.samples and self.config.training.fuse_forward:
            inc_out, replayed = self._forward_fused([samples[i] for i in chosen.tolist()], plan.samples)
            fused = Forwarded(inc_out, batch.labels.index_select(0, chosen))

        def incoming() -> Forwarded | None:
            if not chosen.numel():
                return None
            if fused is not None:
                return fused
            if out is None:
                sub_batch = batch.index(chosen)
                with self._autocast():
                    return Forwarded(self.model(*sub_batch.inputs()), sub_batch.labels)
            return Forwarded(out.map(lambda t: t.index_select(0, chosen)), batch.labels.index_select(0, chosen))

        step = UpdateStep(incoming=incoming, present=present, plan=plan, selection=selection, forward_samples=self._forward_samples,
                          replay=(lambda: replayed) if replayed is not None else None)
        loss = total_loss(self.terms, step, self.device)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()  # a pass-through unless fp16 AMP is on
        tc = self.config.training
        if tc.grad_clip is not None:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), tc.grad_clip)
        if self.numeric_guard:
            # fp16 AMP: non-finite scaled gradients are routine, GradScaler skips those steps itself
            grads = [] if self.scaler.is_enabled() else [p.grad for p in self.model.parameters() if p.grad is not None]
            if not all_finite([loss.detach().reshape(1), *grads]):
                raise NonFiniteUpdate("the loss or a gradient is NaN/Inf")
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.numeric_guard and not self.guard.state_finite([p.prototypes for p in self.prototypes.modalities.values()]):
            raise NonFiniteUpdate("a weight, optimiser statistic or prototype is NaN/Inf after the step")

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def evaluate(self, samples: Iterable[Sample], batch_size: int = 256) -> dict[str, Any]:
        """Accuracy of the fused head and of each unimodal head on labelled ``samples``."""
        self.model.eval()
        counts = Counter()
        per_class_correct = torch.zeros(self.num_classes, dtype=torch.long)
        per_class_total = torch.zeros(self.num_classes, dtype=torch.long)
        chunk: list[Sample] = []

        def flush() -> None:
            b = self._to_device(self._collate(chunk))
            with self._autocast():
                o = self.model(*b.inputs())
            y = b.labels
            counts["n"] += len(chunk)
            hit = (o.logits.argmax(1) == y).cpu()
            counts["fused"] += int(hit.sum())
            for name in self.modalities:
                counts[name] += int((o.unimodal[name].argmax(1) == y).sum())
            yc = y.cpu()
            per_class_total.index_add_(0, yc, torch.ones_like(yc))
            per_class_correct.index_add_(0, yc, hit.long())
            chunk.clear()

        for s in samples:
            if s.label is None or self.check(s) is not None:
                continue
            chunk.append(s)
            if len(chunk) >= batch_size:
                flush()
        if chunk:
            flush()
        self.model.train()
        n = counts["n"]
        per_class = {int(c): float(per_class_correct[c] / per_class_total[c]) for c in range(self.num_classes) if per_class_total[c] > 0}
        return {
            "n": n,
            "accuracy": counts["fused"] / n if n else None,
            "modality_accuracy": {name: counts[name] / n if n else None for name in self.modalities},
            "per_class_accuracy": per_class,
        }

    # ------------------------------------------------------------------ reporting
    def summary(self) -> dict[str, Any]:
        st = self.stats
        heads = self.metrics.modality_accuracy()
        return {
            SAMPLES_SEEN: st.samples_seen,
            UPDATES: st.updates,
            PREQUENTIAL_ACCURACY: self.metrics.prequential.get(),
            EVAL_ACCURACY: self.metrics.held_out.get(),
            MODALITY_EVAL_ACCURACY: {name: heads.get(name) for name in self.modalities},
            "verdicts": dict(st.verdicts),
            BUFFER_ITEMS: len(self.buffer),
            BUFFER_BYTES: self.buffer.nbytes,
            "buffer_classes": dict(sorted(self.buffer.class_counts().items())),
            "seen_classes": int(self.seen.sum()),
        }

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume: model, optimiser, teacher, prototypes, buffer, policy, counters, RNG."""
        st = self.stats
        return {
            "version": 1,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "teacher": self.teacher.state_dict(),
            "prototypes": self.prototypes.state_dict(),
            "buffer": self.buffer.state_dict(),
            "policy": self.policy.state_dict(),
            "replay": self.replay.state_dict(),
            "scaler": self.scaler.state_dict(),
            "seen": self.seen.clone(),
            "stats": {"samples_seen": st.samples_seen, "updates": st.updates, "verdicts": dict(st.verdicts),
                      **self.metrics.state_dict()},
            "torch_rng": torch.get_rng_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("version") != 1:
            raise ValueError(f"learner state version {state.get('version')!r} is not supported (expected 1)")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.teacher.load_state_dict(state["teacher"], self.model)
        self.prototypes.load_state_dict(state["prototypes"])
        self.buffer.load_state_dict(state["buffer"])
        self.policy.load_state_dict(state["policy"])
        self.replay.load_state_dict(state.get("replay", {}))
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.seen = state["seen"].clone().to(self.device)
        s = state["stats"]
        self.stats = LearnerStats(int(s["samples_seen"]), int(s["updates"]), Counter(s["verdicts"]))
        self.metrics.load_state_dict(s)
        torch.set_rng_state(state["torch_rng"])

