"""Data sets a device can replay; each yields :class:`~edge_runtime.wire.Sample` records.

``DATASETS`` maps a name to a factory taking keyword arguments (for ``synthetic``, the fields of
:class:`~device_sim.datasets.synthetic.SyntheticConfig`, or ``cfg=``).
"""

from __future__ import annotations

from typing import Any, Callable

from device_sim.datasets.synthetic import SyntheticConfig, SyntheticDataset

DATASETS: dict[str, Callable[..., Any]] = {
    "synthetic": SyntheticDataset,
}


def get_dataset(name: str, **kwargs: Any) -> Any:
    """The data set ``name`` built with ``kwargs``; ValueError naming the available ones otherwise."""
    try:
        factory = DATASETS[name]
    except KeyError:
        raise ValueError(f"unknown data set {name!r}; available: {', '.join(sorted(DATASETS))}") from None
    return factory(**kwargs)


__all__ = ["DATASETS", "get_dataset", "SyntheticConfig", "SyntheticDataset"]
