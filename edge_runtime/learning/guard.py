"""The learner's numeric guard: no update may leave a NaN/Inf in the model (issue 24, G2).

A finite but huge input (3e38 passes a NaN/Inf scan) can overflow a layer; one such update turned
almost every weight into NaN/Inf, and the checkpoint kept them. :class:`NumericGuard` brackets one
micro-batch's updates:

* :meth:`snapshot` copies the tensors an update changes in place (parameters and float buffers of
  the model, the optimiser's state tensors) into preallocated mirrors (one ``_foreach_copy_``);
* the learner checks its forward outputs, each loss and its gradients before ``optimizer.step``
  (:func:`all_finite`), and the state after it (:meth:`state_finite`, with the prototypes);
* :meth:`restore` puts the snapshot back (and drops optimiser state created since), so a rejected
  micro-batch leaves no trace in the weights or the optimiser. (The prototypes are replaced, not
  changed in place, by each update: the learner keeps the old tensors to put back.)

"Finite" is tested on each tensor's L2 norm (one fused reduction for all tensors): a NaN or Inf
makes it non-finite, and so do values so large (beyond ~1e19) that their squares overflow float32,
which no healthy model has.

:func:`describe_non_finite` walks a whole state dict (checkpoints, exports) for NaN/Inf.
"""

from __future__ import annotations

from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np
import torch


def all_finite(tensors: Sequence[torch.Tensor]) -> bool:
    """True when every tensor's L2 norm is finite (see the module docstring); one device sync."""
    ts = [t.detach() for t in tensors if t is not None and t.is_floating_point() and t.numel()]
    if not ts:
        return True
    norms = torch._foreach_norm(ts)
    return bool(torch.isfinite(torch.stack([n.float() for n in norms]).sum()).item())


def first_non_finite(named: Iterable[tuple[str, torch.Tensor]]) -> tuple[str, int] | None:
    """The first tensor holding NaN/Inf and how many such values it has (for error messages), or None."""
    for name, t in named:
        if t.is_floating_point() or t.is_complex():
            bad = int((~torch.isfinite(t.detach())).sum())
            if bad:
                return name, bad
    return None


class NumericGuard:
    """Snapshot, check and roll back the numeric state of a model and its optimiser."""

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
        self.model = model
        self.optimizer = optimizer
        self._live: list[torch.Tensor] = []
        self._saved: list[torch.Tensor] = []
        self._state_keys: dict[torch.Tensor, set[str]] = {}

    def tensors(self) -> list[torch.Tensor]:
        """The float tensors an update may change, in a stable order."""
        out = [p for p in self.model.parameters()]  # the Parameters themselves: p.data is a new object on every access
        out += [b for b in self.model.buffers() if b.is_floating_point()]
        for group in self.optimizer.param_groups:
            for p in group["params"]:
                for value in self.optimizer.state.get(p, {}).values():
                    if isinstance(value, torch.Tensor) and value.is_floating_point():
                        out.append(value)
        return out

    def snapshot(self) -> None:
        """Remember the current state (reuses the mirrors while the set of tensors is unchanged)."""
        live = self.tensors()
        with torch.no_grad():
            if len(live) == len(self._live) and all(a is b for a, b in zip(live, self._live)):
                torch._foreach_copy_(self._saved, live)
            else:
                self._saved = [t.detach().clone() for t in live]
        self._live = live
        self._state_keys = {p: set(s) for p, s in self.optimizer.state.items()}

    def state_finite(self, extra: Sequence[torch.Tensor] = ()) -> bool:
        """Whether the model, its optimiser state and the ``extra`` tensors are all finite now."""
        return all_finite(self.tensors() + list(extra))

    def restore(self) -> None:
        """Put the last snapshot back; optimiser state created since it (a first step) is dropped."""
        state = self.optimizer.state
        for p in list(state):
            keys = self._state_keys.get(p)
            if keys is None:
                del state[p]
            else:
                for k in set(state[p]) - keys:
                    del state[p][k]
        if self._live:
            with torch.no_grad():
                torch._foreach_copy_(self._live, self._saved)


class NonFiniteState(ValueError):
    """A state to checkpoint or export holds NaN/Inf; the message names the first such tensors."""


def non_finite_entries(state: Any, prefix: str = "") -> Iterator[tuple[str, int]]:
    """``(dotted path, count of NaN/Inf values)`` of each float tensor or numpy array in ``state`` holding one."""
    if isinstance(state, torch.Tensor):
        if (state.is_floating_point() or state.is_complex()) and state.numel():
            bad = int((~torch.isfinite(state.detach())).sum())
            if bad:
                yield prefix or "<root>", bad
    elif isinstance(state, np.ndarray):
        if state.dtype.kind in "fc" and state.size:
            bad = int((~np.isfinite(state)).sum())
            if bad:
                yield prefix or "<root>", bad
    elif isinstance(state, Mapping):
        for key, value in state.items():
            yield from non_finite_entries(value, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(state, (list, tuple)):
        for i, value in enumerate(state):
            yield from non_finite_entries(value, f"{prefix}[{i}]")


def describe_non_finite(state: Any) -> str | None:
    """None when every float tensor in ``state`` is finite, else a phrase naming the first bad ones and the count."""
    found = list(non_finite_entries(state))
    if not found:
        return None
    names = ", ".join(f"{name} ({n})" for name, n in found[:3]) + (f" and {len(found) - 3} more" if len(found) > 3 else "")
    return f"{sum(n for _, n in found)} NaN/Inf values in {len(found)} tensor(s): {names}"
