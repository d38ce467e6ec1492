"""Data sets a device can replay; each yields :class:`~edge_runtime.sample.Sample` records.

Every data set offers ``__len__``, ``labels()`` (without decoding media), ``sample(i, split)``,
``name`` and ``num_classes``.  :func:`open_dataset` builds one by name from the options the
command line knows; :func:`availability` says which ones this machine can replay and why not.
"""

from __future__ import annotations

from typing import Any, Callable

from device_sim.datasets.synthetic import SyntheticConfig, SyntheticDataset

#: name -> "module:attribute" of the class (imported lazily: the media stack is only needed for real data).
DATASETS: dict[str, str] = {
    "synthetic": "device_sim.datasets.synthetic:SyntheticDataset",
    "avdigits": "device_sim.datasets.avdigits:AVDigits",
    "cremad": "device_sim.datasets.cremad:CremaD",
    "ave": "device_sim.datasets.ave:AVE",
}
NEEDS_ROOT = ("cremad", "ave")


def _load(name: str) -> Any:
    import importlib

    module, _, attr = DATASETS[name].partition(":")
    return importlib.import_module(module), attr


def open_dataset(name: str, *, root: str | None = None, split: str = "train", seed: int = 0, samples: int | None = None,
                 send: str = "features", strict: bool = False, **options: Any) -> Any:
    """The data set ``name``: ValueError naming the choices, or what is missing (e.g. ``--root``)."""
    if name not in DATASETS:
        raise ValueError(f"unknown data set {name!r}; available: {', '.join(sorted(DATASETS))}")
    module, attr = _load(name)
    cls = getattr(module, attr)
    if name == "synthetic":
        return cls(**({"size": samples} if samples else {}), seed=seed, **options)
    if name == "avdigits":
        return cls(split=split, seed=seed, **options)
    if not root:
        raise ValueError(f"{name}: no --root given; point it at your copy of the data set (see README, 'Real data sets')")
    return cls(root, split=split, seed=seed, send=send, strict=strict, **options)


def get_dataset(name: str, **kwargs: Any) -> Any:
    """Backwards-compatible alias of :func:`open_dataset` (``size=`` means ``samples=`` for synthetic)."""
    if "size" in kwargs:
        kwargs["samples"] = kwargs.pop("size")
    return open_dataset(name, **kwargs)


def availability(root: str | None = None) -> dict[str, tuple[bool, str]]:
    """Per data set: (available here?, why / where from)."""
    out: dict[str, tuple[bool, str]] = {"synthetic": (True, "embedded, generated on the fly")}
    for name in ("avdigits", "cremad", "ave"):
        try:
            module, _ = _load(name)
        except ImportError as err:
            out[name] = (False, f"cannot import its reader ({err}); install the project with its extras")
            continue
        if name in NEEDS_ROOT and not root:
            out[name] = (False, "no --root given")
            continue
        out[name] = module.available(root)
    return out


__all__ = ["DATASETS", "open_dataset", "get_dataset", "availability", "SyntheticConfig", "SyntheticDataset"]
