"""Median of the last ``window`` values of a stream (the ``running`` MBS centre: the learning step, step 3 (docs/design.md)).

A :class:`sortedcontainers.SortedList` holds the window in order and a deque its arrival order,
so adding a value and evicting the oldest are O(log n) each and the median is an index lookup.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any, Iterable, Mapping

import torch
from sortedcontainers import SortedList


class RunningMedian:
    """Sliding-window median; the median of an even count is the mean of the two middle values
    (the same as :func:`numpy.median`)."""

    def __init__(self, window: int) -> None:
        if int(window) < 1:
            raise ValueError(f"window must be >= 1 (got {window})")
        self.window = int(window)
        self._sorted: SortedList = SortedList()
        self._order: deque[float] = deque()

    def __len__(self) -> int:
        return len(self._order)

    def add(self, values: Iterable[float] | torch.Tensor | float) -> None:
        """Append ``values`` (in order) to the stream; values older than the window drop out.

        NaN is rejected with a ValueError (it has no place in an order).
        """
        if isinstance(values, torch.Tensor):
            values = values.detach().reshape(-1).tolist()
        elif isinstance(values, (int, float)):
            values = [values]
        vals = [float(v) for v in values]
        if any(math.isnan(v) for v in vals):
            raise ValueError("RunningMedian.add: NaN values cannot be ordered")
        if len(vals) > self.window:  # only the last `window` values can still be in the window
            vals = vals[-self.window :]
        order, ordered, window = self._order, self._sorted, self.window
        for v in vals:
            if len(order) >= window:
                ordered.remove(order.popleft())
            order.append(v)
            ordered.add(v)

    def median(self) -> float:
        """Median of the values in the window; raises ValueError when the window is empty."""
        n = len(self._sorted)
        if n == 0:
            raise ValueError("RunningMedian.median: no values in the window yet (call add() first)")
        mid = n // 2
        if n % 2:
            return self._sorted[mid]
        return (self._sorted[mid - 1] + self._sorted[mid]) / 2

    def state_dict(self) -> dict[str, Any]:
        """``{"window": int, "values": [float, ...]}`` with the values oldest first."""
        return {"window": self.window, "values": list(self._order)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore the window contents; if this median's window is smaller, the newest values are kept."""
        values = [float(v) for v in state["values"]][-self.window :]
        self._order = deque(values)
        self._sorted = SortedList(values)
