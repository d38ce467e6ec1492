"""Data sets a device can replay; each yields :class:`~edge_runtime.core.sample.Sample` records.

Every data set implements :class:`device_sim.datasets.base.Dataset` (length, ``labels()`` without
decoding media, ``sample(i, split)``, ``num_classes``, ``schema()``, its command-line options) and
is registered by name in :mod:`device_sim.datasets.registry`: adding one is its own module plus
one line in :data:`~device_sim.datasets.registry.DATASETS`.  Importing this package imports no
data set.
"""

from __future__ import annotations

from device_sim.datasets.registry import DATASETS, availability, build, build_from, dataset_class, names, register, registered

__all__ = ["DATASETS", "availability", "build", "build_from", "dataset_class", "names", "register", "registered"]
