"""DUS monitor: a cumulative modality discrepancy per modality (our reading of the DUS paper).

The DUS paper ("Rebalanced Multimodal Learning with Data-aware Unimodal Sampling") monitors
learning with a *cumulative modality discrepancy* and sets, per iteration, how many unimodal
samples to draw; its exact formulas are not public.  What this module implements, and docs/policies.md
states as our reading, for N >= 2 modalities (the paper's two is the case N = 2):

* per step t, the discrepancy of modality m,
  ``d_t^m = mu_t^m - mean_{k != m} mu_t^k`` with ``mu_t^m = mean_i p_m(x_i)`` the mean confidence of
  the true class of modality m over the step's labelled samples (rows where any confidence is NaN
  left out; the confidences of the learning step, step 2 (docs/design.md)).  At N = 2,
  ``d^1 = mu^1 - mu^2 = -d^2``;
* cumulative, discounted, one entry per modality: ``D_t = gamma * D_{t-1} + d_t`` (gamma = 0.9 by
  default), so a lasting imbalance accumulates while a one-off batch fades;
* imbalance level ``iota_t = (1 - gamma) * (N - 1) / N * (max_m D_t^m - min_m D_t^m)`` in [0, 1]
  (``d^m - d^k = N / (N - 1) * (mu^m - mu^k)``, so the factor makes 1 the largest possible level for
  every N).  At N = 2 it is ``(1 - gamma) |D_t^1|``, the two-modality formula ``(1 - gamma) |D_t|``
  with ``D_t = D_t^1``;
* the weaker modality is the one of lowest ``D_t^m`` (the first in the model's order on a tie; none
  while all are equal): at N = 2 the second when ``D_t^1 > 0``, the first when ``D_t^1 < 0``;
* heuristic quantity: ``n_t = round(n_max * iota_t)`` extra samples of the weaker modality,
  replayed through its unimodal head (only where ``iota_t`` exceeds a dead band ``epsilon``).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch


class CumulativeDiscrepancy:
    """``D_t^m = gamma * D_{t-1}^m + (mu^m - mean_{k != m} mu^k)`` for every modality m over the stream.

    The modality names come from the first :meth:`update` (or :meth:`bind`).  A state saved by the
    two-modality version, ``{"value": v, "steps": s}``, loads as ``D = (v, -v)`` (exactly what the
    recursion above gives at N = 2) once the names are known; with N != 2 names it is a ValueError.
    """

    def __init__(self, gamma: float = 0.9, modalities: Sequence[str] | None = None) -> None:
        if not 0.0 <= gamma < 1.0:
            raise ValueError(f"gamma must be in [0, 1) (got {gamma})")
        self.gamma = gamma
        self.values: dict[str, float] = {}
        self.steps = 0
        self._legacy: float | None = None  # a two-modality state loaded before the names were known
        if modalities is not None:
            self.bind(modalities)

    @property
    def modalities(self) -> tuple[str, ...]:
        return tuple(self.values)

    def bind(self, modalities: Sequence[str]) -> None:
        """Fix the modality names (in order); D starts at 0 for each.  ValueError for fewer than two,
        or for names other than those already bound."""
        names = tuple(modalities)
        if len(names) < 2:
            raise ValueError(f"dus compares the modalities' confidences: it needs at least 2 modalities, "
                             f"{len(names)} declared ({', '.join(names) or 'none'})")
        if self.values:
            if tuple(self.values) != names:
                raise ValueError(f"dus: the discrepancy was kept for modalities {list(self.values)}, not {list(names)}")
            return
        if self._legacy is not None:
            if len(names) != 2:
                raise ValueError(f"dus: the saved discrepancy is of a two-modality stream; it cannot be restored for "
                                 f"{len(names)} modalities ({', '.join(names)})")
            self.values = {names[0]: self._legacy, names[1]: -self._legacy}
            self._legacy = None
        else:
            self.values = {name: 0.0 for name in names}

    def update(self, p: Mapping[str, torch.Tensor]) -> dict[str, float]:
        """Fold in one step's confidences (name -> (B,), in the model's order); returns the new ``D_t``."""
        self.bind(tuple(p))
        cols = list(p.values())
        invalid = torch.isnan(cols[0])
        for c in cols[1:]:
            invalid = invalid | torch.isnan(c)
        valid = ~invalid
        if bool(valid.any()):
            mu = [c[valid].float().mean() for c in cols]
            for m, name in enumerate(self.values):
                others = torch.stack([mu[k] for k in range(len(mu)) if k != m]).mean()  # exactly mu^2 (mu^1) at N = 2
                self.values[name] = self.gamma * self.values[name] + float(mu[m] - others)
            self.steps += 1
        return dict(self.values)

    @property
    def spread(self) -> float:
        """``max_m D^m - min_m D^m`` scaled by ``(N - 1) / N``: ``|D^1|`` at N = 2 (0 before any update)."""
        if not self.values:
            return abs(self._legacy) if self._legacy is not None else 0.0
        d = list(self.values.values())
        n = len(d)
        return (max(d) - min(d)) * ((n - 1) / n)

    @property
    def imbalance(self) -> float:
        """``iota_t = (1 - gamma) (N - 1) / N (max D - min D)`` in [0, 1]."""
        return min(1.0, (1.0 - self.gamma) * self.spread)

    @property
    def weaker(self) -> str | None:
        """The modality of lowest cumulative discrepancy (first on a tie), None while all are equal."""
        if not self.values:
            return None
        d = list(self.values.values())
        low = min(d)
        if low == max(d):
            return None
        return next(name for name, v in self.values.items() if v == low)

    def quantity(self, n_max: int, epsilon: float = 0.0) -> int:
        """Heuristic number of extra weaker-modality samples: ``round(n_max * iota_t)`` (0 inside the dead band)."""
        level = self.imbalance
        if level <= epsilon or self.weaker is None:
            return 0
        return int(round(n_max * level))

    def state_dict(self) -> dict[str, Any]:
        """``{"value": {name: D^m}, "steps": int}`` (a two-modality state still unbound: the old ``{"value": float, ...}``)."""
        if not self.values and self._legacy is not None:
            return {"value": self._legacy, "steps": self.steps}
        return {"value": dict(self.values), "steps": self.steps}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        value = state["value"]
        if isinstance(value, Mapping):
            names = tuple(value)
            if self.values and tuple(self.values) != names:
                raise ValueError(f"dus: the saved discrepancy is for modalities {list(names)}, not {list(self.values)}")
            self.values = {name: float(v) for name, v in value.items()}
            self._legacy = None
        else:  # the two-modality version's scalar D = D^1
            v = float(value)
            if self.values:
                names = tuple(self.values)
                self.values = {}
                self._legacy = v
                self.bind(names)
            else:
                self._legacy = v
        self.steps = int(state["steps"])
