"""EMA class prototypes per modality and prototype confidences (the learning step, step 2, docs/design.md).

The learning step, step 2 (``prototype`` confidence, the default)::

    p_m = softmax_k(-||z_m - c_k^m||_2)[y]          over the classes k seen so far
    c_y^m <- a * c_y^m + (1 - a) * z_m              a = prototypes.momentum

The MBS paper (Eq. 11, Algorithm 1 lines 5-6) takes p_m from the unimodal linear heads; the
prototype form is this code base's default because it needs no extra head and is defined from the
first sample of a class on.  The confidences feed ``MBS = p_audio / p_video`` (Algorithm 1 line 7).
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
import torch.nn.functional as F


class UnseenClassError(ValueError):
    """A confidence was asked for a class that has no prototype yet (never seen by ``update``).

    ``classes`` lists the offending class ids.  No value is made up for them: a softmax over the
    seen prototypes says nothing about a class without a prototype.
    """

    def __init__(self, classes: list[int], modality: str | None = None) -> None:
        self.classes = classes
        self.modality = modality
        where = f" ({modality} prototypes)" if modality else ""
        super().__init__(f"classes {classes} have no prototype yet{where}: call update() with samples of them before confidence()")


class Prototypes:
    """EMA class prototypes ``c_k`` (num_classes x dim) for one modality (the learning step, step 2, docs/design.md).

    ``update(z, y)`` applies ``c_y <- a*c_y + (1-a)*z`` for every sample in batch order; the first
    sample of a class initialises its prototype (``c_y = z``, not an EMA from zero).
    ``confidence(z, y)`` is ``softmax_k(-||z - c_k||_2)[y]`` over the seen classes k only.
    """

    def __init__(self, num_classes: int, dim: int, momentum: float, device: torch.device | str | None = None, dtype: torch.dtype = torch.float32) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1 (got {num_classes})")
        if dim < 1:
            raise ValueError(f"dim must be >= 1 (got {dim})")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1) (got {momentum})")
        self.num_classes = int(num_classes)
        self.dim = int(dim)
        self.momentum = float(momentum)
        self.prototypes = torch.zeros(self.num_classes, self.dim, device=device, dtype=dtype)
        self.seen = torch.zeros(self.num_classes, dtype=torch.bool, device=device)

    # ------------------------------------------------------------------ helpers
    @property
    def device(self) -> torch.device:
        return self.prototypes.device

    def to(self, device: torch.device | str) -> "Prototypes":
        """Move the prototypes to ``device`` (in place); returns self."""
        self.prototypes = self.prototypes.to(device)
        self.seen = self.seen.to(device)
        return self

    def _check(self, z: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if z.dim() != 2 or z.shape[1] != self.dim:
            raise ValueError(f"z must have shape (B, {self.dim}) (got {tuple(z.shape)})")
        if y.dim() != 1 or y.shape[0] != z.shape[0]:
            raise ValueError(f"y must have shape ({z.shape[0]},) (got {tuple(y.shape)})")
        if y.dtype.is_floating_point or y.dtype.is_complex or y.dtype == torch.bool:
            raise TypeError(f"y must be an integer tensor of class ids (got {y.dtype})")
        y = y.to(device=self.device, dtype=torch.long)
        if y.numel() and bool(((y < 0) | (y >= self.num_classes)).any()):
            bad = sorted({int(v) for v in y[(y < 0) | (y >= self.num_classes)].tolist()})
            raise ValueError(f"class ids {bad} out of range [0, {self.num_classes})")
        return z.detach().to(device=self.device, dtype=self.prototypes.dtype), y

    def is_seen(self, y: torch.Tensor) -> torch.Tensor:
        """BoolTensor: whether each class id in ``y`` has a prototype."""
        return self.seen[y.to(device=self.device, dtype=torch.long)]

    # ------------------------------------------------------------------ update
    @torch.no_grad()
    def update(self, z: torch.Tensor, y: torch.Tensor) -> None:
        """Sequential EMA ``c_y <- a*c_y + (1-a)*z`` over the batch in order, vectorised.

        For a class c with n_c samples z_0..z_{n_c-1} in this batch (in batch order), the
        sequential EMA equals ``a^{n_c} c + (1-a) sum_j a^{n_c-1-j} z_j``.  A class seen for the
        first time starts from its first sample instead: ``a^{n_c-1} z_0 + (1-a) sum_{j>=1}
        a^{n_c-1-j} z_j``.  Classes absent from the batch keep their prototype (n_c = 0).
        """
        z, y = self._check(z, y)
        if y.numel() == 0:
            return
        a = self.momentum
        dtype = torch.float64 if self.prototypes.dtype == torch.float64 else torch.float32
        counts = torch.bincount(y, minlength=self.num_classes)  # n_c
        # rank j of every sample among the samples of its class, in batch order (stable sort)
        order = torch.argsort(y, stable=True)
        starts = torch.cumsum(counts, 0) - counts
        rank = torch.empty_like(y)
        rank[order] = torch.arange(y.numel(), device=y.device) - starts[y[order]]
        n_y = counts[y]
        powers = torch.pow(torch.tensor(a, dtype=dtype, device=self.device), (n_y - 1 - rank).to(dtype))
        first_seen = (rank == 0) & ~self.seen[y]
        weight = torch.where(first_seen, powers, (1.0 - a) * powers)
        keep = torch.pow(torch.tensor(a, dtype=dtype, device=self.device), counts.to(dtype))  # a^{n_c}, 1 when absent
        keep = torch.where(self.seen | (counts == 0), keep, torch.zeros_like(keep))
        new = keep[:, None] * self.prototypes.to(dtype)
        new.index_add_(0, y, weight[:, None] * z.to(dtype))
        self.prototypes = new.to(self.prototypes.dtype)
        self.seen = self.seen | (counts > 0)

    # ------------------------------------------------------------------ confidence
    def _neg_distances(self, z: torch.Tensor, y: torch.Tensor, modality: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        z, y = self._check(z, y)
        known = self.seen[y]
        if not bool(known.all()):
            raise UnseenClassError(sorted({int(v) for v in y[~known].tolist()}), modality)
        seen_idx = torch.nonzero(self.seen).squeeze(1)
        column = torch.cumsum(self.seen.long(), 0) - 1  # class id -> column among seen classes
        # exact pairwise distances (not the matmul expansion, which loses precision near 0)
        dist = torch.cdist(z, self.prototypes.index_select(0, seen_idx), compute_mode="donot_use_mm_for_euclid_dist")
        return -dist, column[y]

    @torch.no_grad()
    def confidence(self, z: torch.Tensor, y: torch.Tensor, modality: str | None = None) -> torch.Tensor:
        """``p = softmax_k(-||z - c_k||_2)[y]`` over the seen classes k (the learning step, step 2, docs/design.md), shape (B,).

        Raises :class:`UnseenClassError` naming the classes of ``y`` that have no prototype.
        A single seen class gives confidence 1.0.
        """
        logits, col = self._neg_distances(z, y, modality)
        if logits.shape[0] == 0:
            return logits.new_zeros(0)
        return F.softmax(logits, dim=1).gather(1, col[:, None]).squeeze(1)

    @torch.no_grad()
    def log_confidence(self, z: torch.Tensor, y: torch.Tensor, modality: str | None = None) -> torch.Tensor:
        """``log p`` via log_softmax (numerically stable; for the log-ratio MBS), shape (B,)."""
        logits, col = self._neg_distances(z, y, modality)
        if logits.shape[0] == 0:
            return logits.new_zeros(0)
        return F.log_softmax(logits, dim=1).gather(1, col[:, None]).squeeze(1)

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, torch.Tensor]:
        """Plain tensors: ``prototypes`` (num_classes x dim) and ``seen`` (num_classes,)."""
        return {"prototypes": self.prototypes.clone(), "seen": self.seen.clone()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        protos, seen = state["prototypes"], state["seen"]
        if tuple(protos.shape) != (self.num_classes, self.dim) or tuple(seen.shape) != (self.num_classes,):
            raise ValueError(
                f"prototype state has shapes {tuple(protos.shape)} / {tuple(seen.shape)}, expected ({self.num_classes}, {self.dim}) / ({self.num_classes},)"
            )
        self.prototypes = protos.detach().to(device=self.device, dtype=self.prototypes.dtype).clone()
        self.seen = seen.to(device=self.device, dtype=torch.bool).clone()


class ModalityPrototypes:
    """One :class:`Prototypes` per modality name (the configuration's), the learning step, step 2 (docs/design.md).

    ``update({name: z_m, ...}, y)`` updates every modality given;
    ``confidence(name, z_m, y)`` is ``p_m = softmax_k(-||z_m - c_k^m||)[y]``.
    """

    def __init__(self, num_classes: int, dims: Mapping[str, int], momentum: float) -> None:
        if not dims:
            raise ValueError("dims must name at least one modality")
        self.modalities: dict[str, Prototypes] = {name: Prototypes(num_classes, dim, momentum) for name, dim in dims.items()}

    def __getitem__(self, name: str) -> Prototypes:
        try:
            return self.modalities[name]
        except KeyError:
            raise KeyError(f"unknown modality {name!r}; have {sorted(self.modalities)}") from None

    def __contains__(self, name: object) -> bool:
        return name in self.modalities

    def to(self, device: torch.device | str) -> "ModalityPrototypes":
        for protos in self.modalities.values():
            protos.to(device)
        return self

    def update(self, zs: Mapping[str, torch.Tensor], y: torch.Tensor) -> None:
        """``c_y^m <- a c_y^m + (1-a) z_m`` for each modality m in ``zs`` (same labels ``y``)."""
        for name, z in zs.items():
            self[name].update(z, y)

    def confidence(self, name: str, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``p_m = softmax_k(-||z_m - c_k^m||)[y]`` for modality ``name``."""
        return self[name].confidence(z, y, modality=name)

    def log_confidence(self, name: str, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self[name].log_confidence(z, y, modality=name)

    def is_seen(self, name: str, y: torch.Tensor) -> torch.Tensor:
        return self[name].is_seen(y)

    def state_dict(self) -> dict[str, dict[str, torch.Tensor]]:
        return {name: protos.state_dict() for name, protos in self.modalities.items()}

    def load_state_dict(self, state: Mapping[str, Mapping[str, Any]]) -> None:
        missing = sorted(set(self.modalities) - set(state))
        extra = sorted(set(state) - set(self.modalities))
        if missing or extra:
            raise ValueError(f"prototype state modalities differ: missing {missing}, unexpected {extra}")
        for name, protos in self.modalities.items():
            protos.load_state_dict(state[name])
