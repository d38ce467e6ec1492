"""Knowledge distillation against a frozen teacher snapshot (DESIGN step 6).

The teacher is a frozen copy of the model taken on a policy: every N updates and when a new class
appears (before the model learns it).  A teacher refreshed after every batch distills nothing,
so refreshing is deliberately sparse.
"""

from __future__ import annotations

import copy

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

    @torch.no_grad()
    def logits(self, audio: torch.Tensor, audio_lengths: torch.Tensor, video: torch.Tensor, video_lengths: torch.Tensor) -> torch.Tensor:
        """The teacher's fused logits (float32), with inputs cast to the teacher's precision."""
        assert self.model is not None
        out = self.model(audio.to(self.dtype), audio_lengths, video.to(self.dtype), video_lengths)
        return out.logits.float()

    def state_dict(self) -> dict:
        if self.model is None:
            return {"taken_at": self.taken_at}
        return {"taken_at": self.taken_at, "model": self.model.state_dict(), "classes": self.classes.clone()}

    def load_state_dict(self, state: dict, template: nn.Module) -> None:
        self.taken_at = int(state["taken_at"])
        if "model" not in state:
            self.model, self.classes = None, None
            return
        teacher = copy.deepcopy(template).to(self.dtype)
        teacher.load_state_dict(state["model"])
        teacher.eval()
        teacher.requires_grad_(False)
        self.model = teacher
        self.classes = state["classes"].clone().to(next(template.parameters()).device)
