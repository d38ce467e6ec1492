"""Data set names -> data set classes (:class:`~device_sim.datasets.base.Dataset` subclasses).

A data set lives in its own module and is registered by one line in :data:`DATASETS`
(``name: "module:Class"``, imported on first use, so listing the names imports no data set), or
at run time with :func:`register` / :func:`registered` (a plug-in, a test).  The command line and
the benchmarks take the names, the per-data-set options and the construction from here.
"""

from __future__ import annotations

import contextlib
import importlib
from typing import TYPE_CHECKING, Any, Iterator, Mapping

if TYPE_CHECKING:
    from device_sim.datasets.base import Dataset, Option

__all__ = ["DATASETS", "availability", "build", "build_from", "dataset_class", "names", "options", "register",
           "registered", "splits"]

#: name -> the data set class, or ``"module:Class"`` (imported on first use).
DATASETS: dict[str, str | type] = {
    "synthetic": "device_sim.datasets.synthetic:SyntheticDataset",
    "avdigits": "device_sim.datasets.avdigits:AVDigits",
    "cremad": "device_sim.datasets.cremad:CremaD",
    "ave": "device_sim.datasets.ave:AVE",
    "watch": "device_sim.datasets.watch:Watch",
    "folder": "device_sim.datasets.folder:Folder",
}

#: Canonical order of the usual split names in listings; other names follow in registration order.
_SPLIT_ORDER = ("train", "val", "test")


def names() -> list[str]:
    """The registered data set names, in registration order (the built-in ones first)."""
    return list(DATASETS)


def dataset_class(name: str) -> type[Dataset]:
    """The class registered as ``name`` (its module imported on first use).

    ValueError listing the choices for an unknown name; ImportError when its module (or a
    dependency) is not installed; TypeError when the target is not a :class:`Dataset` subclass.
    """
    from device_sim.datasets.base import Dataset

    try:
        target = DATASETS[name]
    except KeyError:
        raise ValueError(f"unknown data set {name!r}; choose one of {', '.join(sorted(DATASETS))}") from None
    if isinstance(target, str):
        module, _, attr = target.partition(":")
        target = getattr(importlib.import_module(module), attr)
    if not (isinstance(target, type) and issubclass(target, Dataset)):
        raise TypeError(f"data set {name!r} is registered as {target!r}, not a subclass of device_sim.datasets.base.Dataset")
    return target


def build(name: str, **options: Any) -> Dataset:
    """Data set ``name`` built by its :meth:`~Dataset.from_options` (``split``, ``seed``, ``samples`` and its own options)."""
    return dataset_class(name).from_options(**options)


def build_from(name: str, values: Mapping[str, Any]) -> Dataset:
    """Data set ``name`` from a bag of option values (``vars(args)`` of the command line).

    Only the common options and those ``name`` declares are passed on, so one parser carrying
    every data set's options builds any of them.
    """
    cls = dataset_class(name)
    return cls.from_options(**cls.option_values(values))


def register(name: str, cls: type | str) -> None:
    """Register (or replace) data set ``name``: a :class:`Dataset` subclass, or ``"module:Class"``."""
    DATASETS[name] = cls


@contextlib.contextmanager
def registered(name: str, cls: type | str) -> Iterator[None]:
    """Register ``name`` for the duration of a ``with`` block (tests); the previous entry comes back after."""
    missing = object()
    before = DATASETS.get(name, missing)
    DATASETS[name] = cls
    try:
        yield
    finally:
        if before is missing:
            DATASETS.pop(name, None)
        else:
            DATASETS[name] = before  # type: ignore[assignment]


def _importable() -> Iterator[tuple[str, type[Dataset]]]:
    """(name, class) of every registered data set whose module imports here (the others are skipped)."""
    for name in names():
        try:
            yield name, dataset_class(name)
        except ImportError:
            continue  # its options and splits appear once its dependencies are installed


def options() -> list[tuple[Option, list[str]]]:
    """Every option the registered data sets declare, once per flag, with the names of the data sets declaring it.

    ValueError when two data sets declare one flag differently (they would need two parsers).
    """
    merged: dict[str, tuple[Option, list[str]]] = {}
    for name, cls in _importable():
        for option in cls.cli_options:
            if option.flag not in merged:
                merged[option.flag] = (option, [name])
                continue
            first, users = merged[option.flag]
            if not first.same_flag(option):
                raise ValueError(f"data sets {users[0]} and {name} declare {option.flag} differently "
                                 f"({first.argparse_kwargs()} vs {option.argparse_kwargs()}); give one of them another flag")
            users.append(name)
    return list(merged.values())


def splits() -> list[str]:
    """Every split name of the registered data sets (train, val, test first)."""
    seen: list[str] = []
    for _, cls in _importable():
        seen += [s for s in cls.splits if s not in seen]
    return [s for s in _SPLIT_ORDER if s in seen] + [s for s in seen if s not in _SPLIT_ORDER]


def availability(root: str | None = None) -> dict[str, tuple[bool, str]]:
    """Per registered data set: (can this machine replay it?, why / where from); ``root``: a user's copy."""
    out: dict[str, tuple[bool, str]] = {}
    for name in names():
        try:
            cls = dataset_class(name)
        except ImportError as err:
            out[name] = (False, f"cannot import its reader ({err}); install the project with its extras")
            continue
        out[name] = cls.available(root)
    return out
