"""The one training loop: ``Learner.observe(samples) -> verdicts``, used by the node and the benchmarks.

Each call runs the learning step of DESIGN.md on one micro-batch, in order:

1. forward with the current model; record prequential accuracy (predict before learning);
2. update the EMA class prototypes per modality and compute the per-modality confidence of the
   true class (prototype or linear-head confidence);
3-4. score and select with the configured policy (MBS by default, Algorithm 1);
5. cross-entropy on the selected samples (asymmetric, ER-ACE, in class-incremental streams) and
   offer them to the bounded replay buffer;
6. replay a batch from the buffer with full cross-entropy plus KD against a frozen teacher;
7. one verdict per sample: admitted, trained, skipped, eval, invalid:<reason>.

The learner knows nothing about sockets; it is fed lists of :class:`~edge_runtime.wire.Sample`.
"""

from __future__ import annotations

import contextlib
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import torch
import torch.nn.functional as F

from edge_runtime.batch import Batch, collate
from edge_runtime.buffer import ReplayBuffer
from edge_runtime.config import Config
from edge_runtime.distill import Teacher, kd_loss
from edge_runtime.model import ModelOutput, build_model
from edge_runtime.prototypes import ModalityPrototypes
from edge_runtime.selection import build_policy, build_replay
from edge_runtime.selection.base import ReplayPlan, StepContext
from edge_runtime.validation import model_contract
from edge_runtime.wire import Sample

ADMITTED, TRAINED, SKIPPED, EVAL = "admitted", "trained", "skipped", "eval"


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
    samples_seen: int = 0
    updates: int = 0
    preq_correct: int = 0
    preq_total: int = 0
    eval_correct: int = 0
    eval_total: int = 0
    verdicts: Counter = field(default_factory=Counter)

    @property
    def prequential_accuracy(self) -> float | None:
        """Accuracy of predictions made before learning, over labelled train samples; None before any."""
        return self.preq_correct / self.preq_total if self.preq_total else None

    @property
    def eval_accuracy(self) -> float | None:
        """Accuracy on samples streamed with split "eval" (never trained on); None before any."""
        return self.eval_correct / self.eval_total if self.eval_total else None


class Learner:
    """Incremental multimodal learner with balanced selection, bounded replay and distillation."""

    def __init__(self, config: Config, store: Any | None = None) -> None:
        self.config = config
        self.device = resolve_device(config.device)
        if config.num_threads:
            torch.set_num_threads(config.num_threads)
        seed = config.training.seed
        torch.manual_seed(seed)
        mc = config.model
        self.model = build_model(mc).to(self.device)
        self.num_classes = mc.num_classes
        self.optimizer = self._make_optimizer()
        self.prototypes = ModalityPrototypes(mc.num_classes, {"audio": mc.embed_dim, "video": mc.embed_dim}, config.prototypes.momentum).to(self.device)
        self.policy = build_policy(config.selection, seed=seed)
        self.buffer = ReplayBuffer(config.buffer, seed=seed, store=store)
        self.replay = build_replay(config.replay, config.buffer.replay_batch_size, seed=seed)
        tc = config.training
        self.teacher = Teacher(tc.teacher_every, tc.teacher_on_new_class, getattr(torch, tc.teacher_dtype))
        self.amp_dtype = resolve_amp(tc.amp, self.device)
        # fp16 needs loss scaling against underflow; bf16 has float32's range and does not.
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        self.pin = self.device.type == "cuda"
        self.seen = torch.zeros(mc.num_classes, dtype=torch.bool, device=self.device)
        self.stats = LearnerStats()
        self.times = StepTimes()
        self._contract = model_contract(config, bounded=False)

    def _make_optimizer(self) -> torch.optim.Optimizer:
        tc = self.config.training
        params = self.model.parameters()
        if tc.optimizer == "sgd":
            return torch.optim.SGD(params, lr=tc.lr, momentum=tc.momentum, weight_decay=tc.weight_decay)
        return torch.optim.Adam(params, lr=tc.lr, weight_decay=tc.weight_decay)

    # ------------------------------------------------------------------ validation
    def check(self, sample: Sample) -> str | None:
        """Why ``sample`` cannot be learned from (a reason code of ``edge_runtime.validation.REASONS``), or None."""
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
            self._step([samples[i] for i in valid], valid, verdicts)
        self.stats.samples_seen += len(samples)
        self.stats.verdicts.update(verdicts)
        return verdicts

    def _step(self, samples: list[Sample], positions: list[int], verdicts: list[str]) -> None:
        tc = self.config.training
        t0 = time.perf_counter()
        batch = self._to_device(collate(samples))
        t1 = time.perf_counter()
        self.times.data += t1 - t0

        self.model.train()
        with self._autocast():
            out = self.model(*batch.inputs())
        labels = batch.labels
        with torch.no_grad():
            correct = out.logits.argmax(dim=1) == labels
            labelled = labels >= 0
            train_mask = labelled & ~batch.is_eval
            eval_mask = labelled & batch.is_eval
            self.stats.preq_correct += int((correct & train_mask).sum())
            self.stats.preq_total += int(train_mask.sum())
            self.stats.eval_correct += int((correct & eval_mask).sum())
            self.stats.eval_total += int(eval_mask.sum())
        t2 = time.perf_counter()
        self.times.model += t2 - t1

        for row, pos in enumerate(positions):
            if batch.is_eval[row]:
                verdicts[pos] = EVAL
            elif labels[row] < 0:
                verdicts[pos] = SKIPPED  # unlabelled: predicted, nothing to learn from
        rows = torch.nonzero(train_mask).squeeze(1)
        if rows.numel() == 0:
            return

        # Steps 2-4: prototypes, confidences, score, select.
        y = labels[rows]
        present = torch.zeros_like(self.seen)
        present[y] = True
        new_class = bool((present & ~self.seen).any())
        if self.teacher.due(self.stats.updates, new_class):
            self.teacher.snapshot(self.model, self.seen, self.stats.updates)
        with torch.no_grad():
            sub = ModelOutput(*(t.detach().float().index_select(0, rows) for t in out))  # float32 even under AMP
            self.prototypes.update({"audio": sub.z_audio, "video": sub.z_video}, y)
            p_audio, p_video = self._confidences(sub, y)
            ctx = StepContext(batch=batch.index(rows), labels=y, output=sub, p_audio=p_audio, p_video=p_video, model=self.model)
            selection = self.policy.select(ctx)
            self.replay.observe(ctx)
        selected = rows.index_select(0, selection.indices.to(self.device))
        # train_on "all": every labelled sample gets CE; the selection only decides what is offered to the buffer.
        chosen = rows if self.config.selection.train_on == "all" else selected
        self.seen |= present
        t3 = time.perf_counter()
        self.times.select += t3 - t2

        # Steps 5-6: CE on the selected samples, replay with KD; one optimiser step per replay step.
        replay = self._plan_replay()
        t4 = time.perf_counter()
        self.times.buffer += t4 - t3
        if chosen.numel() or replay.samples or replay.unimodal:
            self._update(out, batch, chosen, present, replay)
            for _ in range(tc.replay_steps - 1):
                self._update(None, batch, chosen, present, self._plan_replay())
            self.stats.updates += 1
        t5 = time.perf_counter()
        self.times.model += t5 - t4

        # Step 7: verdicts; selected samples are offered to the buffer (the others were trained on or skipped).
        deviation = selection.deviation
        chosen_rows = set(selection.indices.tolist())
        for j, row in enumerate(rows.tolist()):
            pos = positions[row]
            if j in chosen_rows:
                score = float(deviation[j]) if deviation is not None else 0.0
                result = self.buffer.offer(samples[row], score)
                verdicts[pos] = ADMITTED if result.admitted else TRAINED
            else:
                verdicts[pos] = TRAINED if self.config.selection.train_on == "all" else SKIPPED
        self.times.buffer += time.perf_counter() - t5

    def _confidences(self, out: ModelOutput, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """p_m of the true class per modality (DESIGN step 2)."""
        if self.config.prototypes.confidence == "prototype":
            return (self.prototypes.confidence("audio", out.z_audio, y), self.prototypes.confidence("video", out.z_video, y))
        pa = F.softmax(out.audio_logits.float(), dim=1).gather(1, y[:, None]).squeeze(1)
        pv = F.softmax(out.video_logits.float(), dim=1).gather(1, y[:, None]).squeeze(1)
        return pa, pv

    def _plan_replay(self) -> ReplayPlan:
        """The replay policy's plan for one update (uniform, BSS or DUS)."""
        return self.replay.plan(self.buffer, self.config.buffer.replay_batch_size, self._forward_no_grad)

    @torch.no_grad()
    def _forward_no_grad(self, samples: list[Sample]) -> ModelOutput:
        """The current model's outputs on ``samples`` (train mode, no gradients): for re-scoring."""
        with self._autocast():
            out = self.model(*self._to_device(collate(samples)).inputs())
        return ModelOutput(*(t.float() for t in out))

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

    def _update(self, out: ModelOutput | None, batch: Batch, chosen: torch.Tensor, present: torch.Tensor, plan: ReplayPlan) -> None:
        tc = self.config.training
        loss = torch.zeros((), device=self.device)
        if chosen.numel():
            if out is None:
                sub_batch = batch.index(chosen)
                with self._autocast():
                    logits_out = self.model(*sub_batch.inputs())
                y = sub_batch.labels
            else:
                logits_out = ModelOutput(*(t.index_select(0, chosen) for t in out))
                y = batch.labels.index_select(0, chosen)
            logits = logits_out.logits.float()
            if tc.asymmetric_ce:
                # ER-ACE (Caccia et al. 2022): incoming samples compete only with the classes of this batch.
                logits = logits.masked_fill(~present, float("-inf"))
            loss = loss + F.cross_entropy(logits, y)
            if tc.unimodal_loss_weight > 0:
                loss = loss + tc.unimodal_loss_weight * (
                    F.cross_entropy(logits_out.audio_logits.float(), y) + F.cross_entropy(logits_out.video_logits.float(), y)
                )
        replay = plan.samples
        if replay:
            rb = self._to_device(collate(replay))
            with self._autocast():
                rout = self.model(*rb.inputs())
            loss = loss + F.cross_entropy(rout.logits.float(), rb.labels)
            if self.teacher.model is not None and tc.kd_lambda > 0:
                tlogits = self.teacher.cached_logits([r.key for r in replay], rb.inputs(), keep=self.buffer.__contains__,
                                                     limit=4 * self.config.buffer.max_items)
                loss = loss + tc.kd_lambda * kd_loss(rout.logits.float(), tlogits, self.teacher.classes, tc.kd_temperature)
        for modality, extra in plan.unimodal.items():
            if extra:  # DUS: the weaker modality's unimodal head only
                ub = self._to_device(collate(extra))
                with self._autocast():
                    uout = self.model(*ub.inputs())
                head = uout.audio_logits if modality == "audio" else uout.video_logits
                loss = loss + self.config.replay.dus_weight * F.cross_entropy(head.float(), ub.labels)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()  # a pass-through unless fp16 AMP is on
        if tc.grad_clip is not None:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), tc.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()

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
            b = self._to_device(collate(chunk))
            with self._autocast():
                o = self.model(*b.inputs())
            y = b.labels
            counts["n"] += len(chunk)
            hit = (o.logits.argmax(1) == y).cpu()
            counts["fused"] += int(hit.sum())
            counts["audio"] += int((o.audio_logits.argmax(1) == y).sum())
            counts["video"] += int((o.video_logits.argmax(1) == y).sum())
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
            "audio_accuracy": counts["audio"] / n if n else None,
            "video_accuracy": counts["video"] / n if n else None,
            "per_class_accuracy": per_class,
        }

    # ------------------------------------------------------------------ reporting
    def summary(self) -> dict[str, Any]:
        st = self.stats
        return {
            "samples_seen": st.samples_seen,
            "updates": st.updates,
            "prequential_accuracy": st.prequential_accuracy,
            "eval_accuracy": st.eval_accuracy,
            "verdicts": dict(st.verdicts),
            "buffer_items": len(self.buffer),
            "buffer_bytes": self.buffer.nbytes,
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
            "stats": {
                "samples_seen": st.samples_seen,
                "updates": st.updates,
                "preq_correct": st.preq_correct,
                "preq_total": st.preq_total,
                "eval_correct": st.eval_correct,
                "eval_total": st.eval_total,
                "verdicts": dict(st.verdicts),
            },
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
        s = dict(state["stats"])
        verdicts = Counter(s.pop("verdicts"))
        self.stats = LearnerStats(**s, verdicts=verdicts)
        torch.set_rng_state(state["torch_rng"])

