"""One framing for every multipart message of this code base: a msgpack header, then raw array frames.

Wire protocol v1 (device <-> node), the node's local control channel and the SQLite replay store
frame their messages alike: frame 0 is a msgpack map (the header); frames 1..n are the raw
little-endian, C-contiguous bytes of the arrays the header describes, one frame per
``{"name": str, "dtype": str, "shape": [int, ...]}`` entry of the header's array list (the list
is ``header["tensors"]`` on the wire and in the store, ``header["arrays"]`` on the control
channel), in order. Nothing is pickled. The messages themselves are documented in
docs/protocol.md.

Everything read here may be hostile. Before numpy sees a byte, the header is decoded by bounded
msgpack, a dtype must name a numeric dtype, a shape must be a list of non-negative ints whose byte
extent numpy can address, and a frame must be exactly that long. Every fault is a
:class:`CodecError` with a ``reason`` of :data:`REASONS`, never a numpy or msgpack exception;
callers map it to their own errors (``WireError`` subclasses, ``ControlError("bad_request")``).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Union

import msgpack
import numpy as np

#: Why a message could not be framed or unframed.
REASONS = ("bad_msgpack", "header_too_large", "bad_header", "bad_dtype", "bad_shape", "too_many_dims",
           "frame_size", "frame_count")

#: dtype kinds that have a raw-bytes form: bool, signed and unsigned ints, floats, complex.
NUMERIC_KINDS = "biufc"
#: The most axes an array may have (numpy 1.x's limit; numpy 2 allows 64).
MAX_DIMS = 32
#: The most bytes one array may span, zero-length axes left out (numpy's own bound).
MAX_EXTENT = int(np.iinfo(np.intp).max)

#: A received frame: bytes-like, or a ``zmq.Frame``-like object with a ``.buffer``.
Frame = Union[bytes, bytearray, memoryview, Any]


class CodecError(ValueError):
    """A message that cannot be framed or unframed; ``reason`` is one of :data:`REASONS`."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message

    def __repr__(self) -> str:
        return f"CodecError({self.reason!r}, {self.message!r})"


@dataclass(frozen=True)
class ArraySpec:
    """One checked entry of a header's array list: the frame that follows holds exactly ``nbytes``."""

    name: str
    dtype: np.dtype
    shape: tuple[int, ...]
    nbytes: int


# ---------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------


def pack_header(header: Mapping[str, Any]) -> bytes:
    """Frame 0: ``header`` as msgpack (str as str, bytes as bin)."""
    return msgpack.packb(header, use_bin_type=True)


def array_frames(arrays: Mapping[str, Any], *, kinds: str = NUMERIC_KINDS
                 ) -> tuple[list[dict[str, Any]], list[memoryview]]:
    """The header entries describing ``arrays`` (in dict order) and one raw frame per array.

    Each frame is a flat byte view of the array made C-contiguous and little-endian; no copy is
    made when it already is both. A dtype whose kind is not in ``kinds`` raises
    :class:`CodecError` (``bad_dtype``).
    """
    specs: list[dict[str, Any]] = []
    frames: list[memoryview] = []
    for name, arr in arrays.items():
        a = np.ascontiguousarray(arr)
        if a.dtype.kind not in kinds:
            raise CodecError("bad_dtype", f"array {str(name)!r} has dtype {a.dtype}, which has no raw-bytes "
                                          "form here; convert it to a numeric dtype")
        little = a.dtype.newbyteorder("<")
        if a.dtype != little:  # big-endian (or native on a big-endian host): one converting copy
            a = a.astype(little)
        specs.append({"name": str(name), "dtype": a.dtype.name, "shape": [int(d) for d in a.shape]})
        frames.append(memoryview(a.reshape(-1).view(np.uint8)))
    return specs, frames


def pack(header: Mapping[str, Any], arrays: Mapping[str, Any], *, key: str,
         kinds: str = NUMERIC_KINDS) -> list[bytes | memoryview]:
    """``header`` with ``header[key]`` set to the arrays' entries, then one raw frame per array."""
    specs, frames = array_frames(arrays, kinds=kinds)
    return [pack_header({**header, key: specs}), *frames]


# ---------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------


def as_buffer(frame: Frame) -> memoryview:
    """A flat byte view of a frame (bytes, bytearray, memoryview, or an object with ``.buffer``)."""
    obj = getattr(frame, "buffer", frame)
    try:
        mv = memoryview(obj)
        if mv.ndim != 1 or mv.format != "B":
            mv = mv.cast("B") if mv.c_contiguous else memoryview(mv.tobytes())
    except (TypeError, ValueError):
        raise CodecError("bad_header", f"frame of type {type(frame).__name__} is not a bytes-like object") from None
    return mv


def unpack_header(frame: Frame, *, max_bytes: int | None = None) -> dict[str, Any]:
    """Frame 0 decoded as one msgpack map, no longer than ``max_bytes`` (``None``: any length).

    Every msgpack length is bounded by the frame's own size, map keys must be str or bytes, and
    extension types are refused.
    """
    buf = as_buffer(frame)
    if max_bytes is not None and buf.nbytes > max_bytes:
        raise CodecError("header_too_large", f"header frame is {buf.nbytes} bytes, over the limit of "
                                             f"{max_bytes}; keep metadata out of the header")
    n = buf.nbytes if max_bytes is None else max_bytes
    try:
        header = msgpack.unpackb(buf, raw=False, strict_map_key=True, max_str_len=n, max_bin_len=n,
                                 max_array_len=n, max_map_len=n, max_ext_len=0)
    except Exception as e:  # ExtraData, FormatError, StackError, ValueError, UnicodeDecodeError, ...
        raise CodecError("bad_msgpack", f"frame 0 is not one valid msgpack object ({type(e).__name__}: "
                                        f"{short(str(e))}); pack the header with msgpack.packb") from None
    if not isinstance(header, dict):
        raise CodecError("bad_header", f"header must be a msgpack map, got {tname(header)}")
    return header


_DTYPES: dict[str, np.dtype] = {}


def dtype_of(name: Any, allowed: Collection[str] | None = None) -> np.dtype:
    """The little-endian numpy dtype of a canonical numeric dtype name (``"float32"``, ``"bool"``, ...).

    ``allowed`` (``None``: every numeric dtype) restricts the names. Aliases (``"f4"``, ``"<f4"``,
    ``"int"``) and non-numeric dtypes raise :class:`CodecError` (``bad_dtype``).
    """
    if not isinstance(name, str) or (allowed is not None and name not in allowed):
        choice = "" if allowed is None else f"; use one of {sorted(allowed)} (little-endian)"
        raise CodecError("bad_dtype", f"dtype {short(name)} is not allowed{choice}")
    dt = _DTYPES.get(name)
    if dt is None:
        if not (name.isascii() and name.isalnum() and len(name) <= 16):
            raise CodecError("bad_dtype", f"dtype {short(name)} is not a numpy dtype name such as 'float32'")
        try:
            dt = np.dtype(name)
        except Exception:
            raise CodecError("bad_dtype", f"dtype {short(name)} is not a numpy dtype name such as 'float32'") from None
        if dt.kind not in NUMERIC_KINDS or dt.name != name:
            raise CodecError("bad_dtype", f"dtype {short(name)} has no raw-bytes form; name a numeric dtype "
                                          "such as 'float32'")
        dt = dt.newbyteorder("<")
        _DTYPES[name] = dt
    return dt


def nbytes(dtype: np.dtype, shape: Any) -> int:
    """Bytes of a C-contiguous array of ``dtype`` and ``shape``, once ``shape`` is known to be buildable.

    ``shape`` must be a list (or tuple) of at most :data:`MAX_DIMS` ints >= 0 (bools are not ints
    here) whose extent, ``itemsize`` times the product of the non-zero axes, is at most
    :data:`MAX_EXTENT`: numpy refuses larger arrays even when an axis of length 0 makes them empty.
    Computed on Python ints, stopping as soon as the bound is passed.
    """
    if not isinstance(shape, (list, tuple)):
        raise CodecError("bad_shape", f"shape must be a list of ints >= 0, got {tname(shape)}")
    if len(shape) > MAX_DIMS:
        raise CodecError("too_many_dims", f"shape has {len(shape)} axes, over the limit of {MAX_DIMS}")
    extent, empty = dtype.itemsize, False
    for d in shape:
        if not is_int(d) or d < 0:
            raise CodecError("bad_shape", f"shape must be a list of ints >= 0, got {short(shape)}")
        if d == 0:
            empty = True
        elif extent <= MAX_EXTENT:
            extent *= d
    if extent > MAX_EXTENT:
        raise CodecError("frame_size", f"{dtype.name} x {short(shape)} spans more than {MAX_EXTENT} bytes; "
                                       "no array, hence no frame, can have that shape")
    return 0 if empty else extent


def to_array(dtype: np.dtype | str, shape: Any, frame: Frame) -> np.ndarray:
    """A read-only array of ``dtype`` and ``shape`` over ``frame``'s bytes (no copy).

    ``dtype`` is a dtype from :func:`dtype_of`, or a name given to it; the frame must hold exactly
    :func:`nbytes` bytes. Any fault raises :class:`CodecError`.
    """
    dt = dtype_of(dtype) if isinstance(dtype, str) else dtype
    buf = as_buffer(frame)
    want = nbytes(dt, shape)
    if buf.nbytes != want:
        raise CodecError("frame_size", f"frame is {buf.nbytes} bytes but {dt.name} x {short(list(shape))} "
                                       f"needs {want}; send the raw C-contiguous little-endian bytes of the array")
    try:
        arr = np.frombuffer(buf, dtype=dt).reshape(shape)
    except (ValueError, TypeError, OverflowError) as e:  # unreachable once nbytes() passed; kept as a guard
        raise CodecError("bad_shape", f"{dt.name} x {short(shape)}: {e}") from None
    arr.flags.writeable = False
    return arr


def read_specs(entries: Any, *, allowed: Collection[str] | None = None, key: str = "arrays") -> list[ArraySpec]:
    """Check a header's array list (``header[key]``): maps with a str ``name`` (unique), a ``dtype``
    of :func:`dtype_of` and a ``shape`` of :func:`nbytes`."""
    if not isinstance(entries, list):
        raise CodecError("bad_header", f"header field {key!r} must be a list of {{name, dtype, shape}} maps, "
                                       f"got {tname(entries)}")
    specs: list[ArraySpec] = []
    names: set[str] = set()
    for i, ent in enumerate(entries):
        where = f"{key}[{i}]"
        if not isinstance(ent, dict):
            raise CodecError("bad_header", f"{where} must be a map {{name, dtype, shape}}, got {tname(ent)}")
        name = ent.get("name")
        if not isinstance(name, str) or name in names:
            raise CodecError("bad_header", f"{where}.name must be a str naming no other array, got {short(name)}")
        names.add(name)
        try:
            dt = dtype_of(ent.get("dtype"), allowed)
            size = nbytes(dt, ent.get("shape"))
        except CodecError as e:
            raise CodecError(e.reason, f"{where} ({short(name)}): {e.message}") from None
        specs.append(ArraySpec(name, dt, tuple(ent["shape"]), size))
    return specs


def to_arrays(specs: Sequence[ArraySpec], frames: Sequence[Frame]) -> dict[str, np.ndarray]:
    """``{name: read-only array}``, one frame per spec, in order."""
    if len(frames) != len(specs):
        raise CodecError("frame_count", f"header describes {len(specs)} arrays but {len(frames)} frames "
                                        "followed; send exactly one frame per array, in order")
    out: dict[str, np.ndarray] = {}
    for spec, frame in zip(specs, frames):
        try:
            out[spec.name] = to_array(spec.dtype, spec.shape, frame)
        except CodecError as e:
            raise CodecError(e.reason, f"array {short(spec.name)}: {e.message}") from None
    return out


def split_payload(payload: Frame, specs: Sequence[ArraySpec]) -> list[memoryview]:
    """Cut a concatenation of array frames (as the store keeps them) back into one frame per spec."""
    view = as_buffer(payload)
    frames: list[memoryview] = []
    at = 0
    for spec in specs:
        frames.append(view[at:at + spec.nbytes])
        at += spec.nbytes
    if at != view.nbytes:
        raise CodecError("frame_size", f"payload is {view.nbytes} bytes but its header describes {at}")
    return frames


# ---------------------------------------------------------------------------------------------
# Small helpers, shared with the readers built on this module
# ---------------------------------------------------------------------------------------------


def is_int(v: Any) -> bool:
    """An int that is not a bool (``True`` is not a size, a sequence number or a version)."""
    return isinstance(v, int) and not isinstance(v, bool)


def tname(v: Any) -> str:
    """The type name of a header value as a message shows it (``null`` for None)."""
    return "null" if v is None else type(v).__name__


def short(v: Any, n: int = 60) -> str:
    """``repr(v)`` cut to ``n`` characters (hostile values stay out of logs in full)."""
    r = repr(v)
    return r if len(r) <= n else r[: n - 3] + "..."
