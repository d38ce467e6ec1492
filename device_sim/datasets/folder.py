"""Folder: bring your own data, one ``.npz`` file per sample under ``--root DIR``.

Layout (docs/datasets.md, "Your own data"): every ``*.npz`` file anywhere under DIR (sub-folders
included, other files ignored) is one sample holding

* one array per modality, named as the modality (``accel``, ``gyro``, ``audio``, ``frames``, ...):
  axis 0 is time and may differ between files; every other axis, and the dtype, must be the same
  in every file of that modality; floating-point arrays are sent as float32, and must be finite; integer arrays must be
  uint8, int16, int32 or int64 (what the wire carries);
* ``label``: a non-negative integer;
* optional ``device`` (str): the natural shard, the device that recorded it (``device-sim run``
  then gives each simulated device one recorder's files); all files or none;
* optional ``split`` (str, ``train`` / ``val`` / ``test``; default ``train``);
* optional ``time`` (float): the order of the stream (``--scenario ordered`` replays it as
  recorded); all files or none.  Without it the order is the files' relative paths.

Every file must hold the same modality names.  A folder that breaks a rule is a ValueError of one
line naming the file and what is wrong.  Files are read with ``allow_pickle=False`` (an npz holding
Python objects is refused): the folder is the user's, not trusted.

Everything is validated when the data set is built (every file is opened once); only the
bookkeeping is kept, and a sample's file is read again when the stream reaches it.  The scan is
cached per folder while no file changed (size and modification time), so building the other
split of the same folder reads nothing again.
"""

from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from device_sim.datasets.base import Dataset, Option
from edge_runtime.core.sample import Sample
from edge_runtime.wire import DEFAULT_DTYPES

RESERVED = ("label", "device", "split", "time")
SPLITS = ("train", "val", "test")
LAYOUT_HINT = "one .npz per sample with one array per modality plus label (docs/datasets.md, 'Your own data')"

ROOT_OPTION = Option("--root", "folder of .npz files, one per sample", metavar="DIR",
                     required=True, missing="point it at your folder of .npz files (see docs/datasets.md, 'Your own data')")


@dataclass(frozen=True)
class Entry:
    """What is kept of one file: where it is, its label and optional fields."""

    path: Path
    rel: str
    label: int
    split: str
    device: str | None
    time: float | None


@dataclass(frozen=True)
class Scan:
    """A validated folder: its files and each modality's dtype and trailing axes."""

    entries: tuple[Entry, ...]
    specs: dict[str, tuple[str, tuple[int, ...]]]


_CACHE: dict[str, tuple[tuple, Scan]] = {}


def _bad(rel: str, what: str) -> ValueError:
    return ValueError(f"folder: {rel}: {what}")


def _files(root: Path) -> list[Path]:
    return sorted((p for p in root.rglob("*.npz") if p.is_file()), key=lambda p: p.relative_to(root).as_posix())


def _string(arrays: Any, key: str, rel: str) -> str:
    value = arrays[key]
    if value.dtype.kind not in "US" or value.size != 1:
        raise _bad(rel, f"{key} must be a string (got {value.dtype} of shape {value.shape})")
    item = value.reshape(()).item()
    return item.decode() if isinstance(item, bytes) else str(item)


def _read(path: Path, rel: str) -> dict[str, np.ndarray]:
    """Every array of ``path``, or the one-line ValueError saying why it is not a usable npz."""
    if not zipfile.is_zipfile(path):
        raise _bad(rel, "not an npz file (not a zip archive; write it with numpy.savez)")
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}
    except (zipfile.BadZipFile, OSError, EOFError) as err:
        raise _bad(rel, f"not an npz file ({type(err).__name__}: {' '.join(str(err).split())})") from None
    except ValueError as err:  # an object array (allow_pickle=False), or a broken member
        if "pickle" in str(err):
            raise _bad(rel, "an array holds Python objects (pickled), which are not loaded; save numeric arrays") from None
        raise _bad(rel, f"unreadable array ({' '.join(str(err).split())})") from None


def _as_sent(x: np.ndarray) -> np.ndarray:
    """The array as a device sends it: floating point as float32, others unchanged, C-contiguous."""
    if x.dtype.kind == "f" and x.dtype != np.float32:
        x = x.astype(np.float32)
    return np.ascontiguousarray(x)


def scan(root: str | Path) -> Scan:
    """Validate every npz under ``root``; ValueError (one line, the file and the fault) or FileNotFoundError."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"folder: --root {root} does not exist or is not a folder; {LAYOUT_HINT}")
    files = _files(root)
    if not files:
        raise ValueError(f"folder: no .npz file under {root}; {LAYOUT_HINT}")
    stamp = tuple((str(p), (st := p.stat()).st_size, st.st_mtime_ns) for p in files)
    key = str(root.resolve())
    hit = _CACHE.get(key)
    if hit is not None and hit[0] == stamp:
        return hit[1]
    entries: list[Entry] = []
    specs: dict[str, tuple[str, tuple[int, ...]]] = {}
    first_rel = ""
    for path in files:
        rel = path.relative_to(root).as_posix()
        arrays = _read(path, rel)
        if "label" not in arrays:
            raise _bad(rel, "no label array (an int: np.savez(..., label=3))")
        label = arrays["label"]
        if label.size != 1 or label.dtype.kind not in "iu" or int(label.reshape(())) < 0:
            shown = label.reshape(()).item() if label.size == 1 else f"shape {label.shape}"
            raise _bad(rel, f"label must be a non-negative integer (got {shown!r}, {label.dtype})")
        modalities = {k: v for k, v in arrays.items() if k not in RESERVED}
        if not modalities:
            raise _bad(rel, "no modality array (only " + ", ".join(sorted(arrays)) + ")")
        if not specs:
            first_rel = rel
        else:
            missing = sorted(set(specs) - set(modalities))
            extra = sorted(set(modalities) - set(specs))
            if missing:
                raise _bad(rel, f"missing modality {', '.join(missing)} (the other files, e.g. {first_rel}, hold {', '.join(sorted(specs))})")
            if extra:
                raise _bad(rel, f"unexpected array {', '.join(extra)} (the other files, e.g. {first_rel}, hold {', '.join(sorted(specs))})")
        for name, x in sorted(modalities.items()):
            if x.ndim < 1 or x.shape[0] < 1:
                raise _bad(rel, f"modality {name} has shape {x.shape}; axis 0 (time) needs at least one step")
            sent = str(_as_sent(x[:0]).dtype) if x.dtype.kind in "fiu" else str(x.dtype)
            if sent not in DEFAULT_DTYPES:
                raise _bad(rel, f"modality {name} has dtype {x.dtype}; give floats or one of {', '.join(sorted(DEFAULT_DTYPES))}")
            if x.dtype.kind == "f" and not np.isfinite(x).all():
                bad = int(np.size(x) - np.isfinite(x).sum())
                raise _bad(rel, f"modality {name} holds {bad} non-finite value{'s' if bad > 1 else ''} (NaN or inf)")
            dtype, trailing = sent, tuple(int(d) for d in x.shape[1:])
            if name not in specs:
                specs[name] = (dtype, trailing)
                continue
            want_dtype, want = specs[name]
            if trailing != want:
                raise _bad(rel, f"modality {name} has shape {x.shape}: axes after the first must be {want} as in {first_rel}"
                           + (f" ({want[-1]} channels, not {trailing[-1]})" if len(want) == len(trailing) == 1 else ""))
            if dtype != want_dtype:
                raise _bad(rel, f"modality {name} is {dtype} where {first_rel} has {want_dtype}")
        split = _string(arrays, "split", rel) if "split" in arrays else "train"
        if split not in SPLITS:
            raise _bad(rel, f"split {split!r} is not one of {', '.join(SPLITS)}")
        device = _string(arrays, "device", rel) if "device" in arrays else None
        time_ = None
        if "time" in arrays:
            t = arrays["time"]
            if t.size != 1 or t.dtype.kind not in "fiu" or not np.isfinite(t).all():
                raise _bad(rel, f"time must be one finite number (got {t.dtype} of shape {t.shape})")
            time_ = float(t.reshape(()))
        entries.append(Entry(path, rel, int(label.reshape(())), split, device, time_))
    for field, what in (("device", "device"), ("time", "time")):
        have = [getattr(e, field) is not None for e in entries]
        if any(have) and not all(have):
            e = next(e for e, h in zip(entries, have) if not h)
            other = next(e for e, h in zip(entries, have) if h)
            raise _bad(e.rel, f"no {what} array, but {other.rel} has one (give it to all files or none)")
    result = Scan(tuple(entries), specs)
    _CACHE[key] = (stamp, result)
    return result


def available(root: str | None = None) -> tuple[bool, str]:
    """(True, what the folder holds) or (False, why not); nothing but the file names is read."""
    if not root:
        return False, "no --root given (a folder of .npz files, one per sample)"
    path = Path(root)
    if not path.is_dir():
        return False, f"{root}: no such folder"
    n = sum(1 for _ in path.rglob("*.npz"))
    return (True, f"{root}: {n} .npz files") if n else (False, f"{root}: no .npz file; {LAYOUT_HINT}")


class Folder(Dataset):
    """Your own samples: one ``.npz`` per sample under ``--root``, any modality names."""

    name = "folder"
    title = "your own .npz files"
    splits: ClassVar[tuple[str, ...]] = SPLITS
    cli_options: ClassVar[tuple[Option, ...]] = (ROOT_OPTION,)
    #: What a natural shard is, for messages (``device-sim run`` gives each device its own).
    shard_noun: ClassVar[str] = "recording device"

    @classmethod
    def available(cls, root: str | None = None) -> tuple[bool, str]:
        return available(root)

    def __init__(self, split: str = "train", seed: int = 0, root: str | os.PathLike | None = None) -> None:
        if not root:
            raise ValueError(f"folder: no --root given; {ROOT_OPTION.missing}")
        if split not in SPLITS:
            raise ValueError(f"folder: split must be one of {', '.join(SPLITS)} (got {split!r})")
        found = scan(root)
        self.root, self.split, self.seed = Path(root), split, seed
        self.specs = found.specs
        mine = [e for e in found.entries if e.split == split]
        if not mine:
            have = sorted({e.split for e in found.entries})
            raise ValueError(f"folder: no file of split {split!r} under {root} (splits found: {', '.join(have)})")
        if mine[0].time is not None:
            mine.sort(key=lambda e: (e.time, e.rel))
        self._entries = mine
        self._labels = np.array([e.label for e in mine], dtype=np.int64)
        all_labels = [e.label for e in found.entries]
        self.num_classes = max(all_labels) + 1
        #: The split ``device-sim run`` evaluates on after the training stream: ``test`` when the folder has one.
        self.eval_split = "test" if split != "test" and any(e.split == "test" for e in found.entries) else None
        self._shards = None if mine[0].device is None else np.array([e.device for e in mine])

    def __len__(self) -> int:
        return len(self._entries)

    def labels(self) -> np.ndarray:
        return self._labels.copy()

    def shards(self) -> np.ndarray | None:
        """Each file's ``device`` (the natural shard), or None when the files carry none."""
        return None if self._shards is None else self._shards.copy()

    def sample(self, index: int, split: str = "train") -> Sample:
        if not 0 <= index < len(self):
            raise IndexError(f"folder: index {index} out of range for {len(self)} samples")
        e = self._entries[index]
        arrays = _read(e.path, e.rel)
        tensors = {name: _as_sent(arrays[name]) for name in self.specs}
        meta: dict[str, Any] = {"path": e.rel}
        if e.device is not None:
            meta["shard"] = e.device
        if e.time is not None:
            meta["time"] = e.time
        return Sample(tensors, e.label, split=split, device=self.name, seq=int(index), meta=meta)


__all__ = ["Folder", "available", "scan"]
