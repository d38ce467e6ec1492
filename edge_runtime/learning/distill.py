"""Knowledge distillation against a frozen teacher snapshot (the learning step, step 6, docs/design.md).

The teacher is a frozen copy of the model taken on a policy: every N updates and when a new class
appears (before the model learns it).  A teacher refreshed after every batch distills nothing,
so refreshing is deliberately sparse.
"""

from __future__ import annotations

import copy
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, classes: torch.Tensor, temperature: float) -> torch.Tensor:
    """T^2 * KL(softmax(teacher/T) || softmax(student/T)), averaged over the batch.

    Both distributions are taken over ``classes`` only (a bool mask of the classes the teacher has
    seen), so the student is not pulled towards the teacher's arbitrary logits of unseen classes.
    Hinton et al. 2015: the T^2 factor keeps gradient magnitudes comparable across temperatures.
    """
    if student_logits.shape[0] == 0 or not bool(classes.any()):
        return student_logits.new_zeros(())
    t = float(temperature)
    s = student_logits[:, classes].float() / t
    q = teacher_logits[:, classes].float() / t
    log_p_teacher = F.log_softmax(q, dim=1)
    log_p_student = F.log_softmax(s, dim=1)
    kl = (log_p_teacher.exp() * (log_p_teacher - log_p_student)).sum(dim=1)
    return (t * t) * kl.mean()


class Teacher:
    """A frozen snapshot of the model plus the mask of classes it had seen when taken."""

    def __init__(self, every: int | None, on_new_class: bool, dtype: torch.dtype = torch.float32) -> None:
        self.every = every
        self.on_new_class = on_new_class
        self.dtype = dtype
        # The teacher is frozen between snapshots, so its logits for a stored sample never change:
        # computed once per (sample key, snapshot), they save the teacher forward of most replays.
        self._cache: dict[Any, torch.Tensor] = {}
        self.model: nn.Module | None = None
        self.classes: torch.Tensor | None = None
        self.taken_at: int = -1

    def due(self, updates: int, new_class: bool) -> bool:
        """Whether a snapshot should be taken now, before update number ``updates + 1``."""
        if updates == 0:
            return False  # an untrained model teaches nothing
        if new_class and self.on_new_class:
            return True
        return self.every is not None and updates - max(self.taken_at, 0) >= self.every

    def snapshot(self, model: nn.Module, seen: torch.Tensor, updates: int) -> None:
        teacher = copy.deepcopy(model).to(self.dtype)
        teacher.eval()
        teacher.requires_grad_(False)
        self.model = teacher
        self.classes = seen.clone()
        self.taken_at = updates
        self._cache.clear()

    def cached_logits(self, keys: Sequence[Any], inputs: tuple[torch.Tensor, ...], keep: Callable[[Any], bool] | None = None,
                      limit: int = 4096) -> torch.Tensor:
        """The teacher's logits for the rows of ``inputs`` (batch first), whose sample keys are ``keys``.

        Rows whose key was seen since the last snapshot come from the cache; the others go through
        one teacher forward.  When the cache grows past ``limit`` entries, keys for which ``keep``
        is false (samples no longer in the buffer) are dropped.
        """
        missing = [i for i, k in enumerate(keys) if k not in self._cache]
        if missing:
            idx = torch.tensor(missing, dtype=torch.long, device=inputs[0].device)
            fresh = self.logits(*(t.index_select(0, idx) for t in inputs))
            for j, i in enumerate(missing):
                self._cache[keys[i]] = fresh[j]
            if len(self._cache) > limit and keep is not None:
                self._cache = {k: v for k, v in self._cache.items() if keep(k)}
        return torch.stack([self._cache[k] for k in keys])

    @torch.no_grad()
    def logits(self, *inputs: torch.Tensor) -> torch.Tensor:
        """The teacher's fused logits (float32) for the model's inputs ``(x_1, lengths_1, x_2, lengths_2, ...)``,
        one pair per modality, the tensors cast to the teacher's precision (lengths stay integers)."""
        assert self.model is not None
        out = self.model(*(t.to(self.dtype) if i % 2 == 0 else t for i, t in enumerate(inputs)))
        return out.logits.float()

    def state_dict(self) -> dict:
        if self.model is None:
            return {"taken_at": self.taken_at}
        keys = list(self._cache)
        return {"taken_at": self.taken_at, "model": self.model.state_dict(), "classes": self.classes.clone(),
                "cache_keys": [list(k) if isinstance(k, tuple) else k for k in keys],
                "cache_logits": torch.stack([self._cache[k] for k in keys]) if keys else torch.zeros(0)}

    def load_state_dict(self, state: dict, template: nn.Module) -> None:
        self.taken_at = int(state["taken_at"])
        self._cache = {}
        if "model" not in state:
            self.model, self.classes = None, None
            return
        teacher = copy.deepcopy(template).to(self.dtype)
        teacher.load_state_dict(state["model"])
        teacher.eval()
        teacher.requires_grad_(False)
        self.model = teacher
        device = next(template.parameters()).device
        self.classes = state["classes"].clone().to(device)
        logits = state.get("cache_logits")
        for key, row in zip(state.get("cache_keys", []), logits if logits is not None else []):
            self._cache[tuple(key) if isinstance(key, list) else key] = row.to(device)
