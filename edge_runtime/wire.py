"""Wire protocol v1 (see DESIGN.md, "Wire protocol v1"): records, encoders, decoder, validator.

The node binds a ROUTER socket; each device connects a DEALER whose routing id is its device id
(UTF-8, at most 64 bytes). Every message is multipart: frame 0 is a msgpack map (the header), and
frames 1..n are raw little-endian C-contiguous tensor bytes, one per entry of ``header["tensors"]``,
in order. Nothing is pickled, ever.

Device -> node::

    {"v":1,"type":"hello","device":str,"schema":{name:{"dtype":str,"shape":[int|-1,...]}}}
    {"v":1,"type":"sample","seq":int,"ts":float,"label":int|null,"split":"train"|"eval","tensors":[{"name":str,"dtype":str,"shape":[int,...]},...]}
        followed by one frame per tensor
    {"v":1,"type":"ping"}
    {"v":1,"type":"bye"}

Node -> device::

    {"v":1,"type":"welcome","credit":int,"num_classes":int,"schema":{...},"next_seq":int}
    {"v":1,"type":"ack","acks":[[seq,status],...],"credit":int}
    {"v":1,"type":"error","seq":int|null,"code":str,"msg":str}

("model" is reserved for a later version.) Encoders return frame lists for
``socket.send_multipart(frames, copy=False)``; :func:`decode` validates and returns a typed record
or raises a :class:`WireError` subclass whose ``code`` is the ``invalid:<code>`` reason. This
module opens no sockets. Unknown extra header fields are ignored (forward compatibility).
"""

from __future__ import annotations

import math
import operator
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Union

import msgpack
import numpy as np

from edge_runtime import validation
from edge_runtime.sample import Sample, TensorSpec
from edge_runtime.validation import SPLITS

#: Sequence numbers are signed 64-bit integers on the wire and in the ledger: 0 <= seq <= SEQ_MAX.
SEQ_MAX = 2**63 - 1


# ---------------------------------------------------------------------------------------------
# Wire protocol v1: constants and limits
# ---------------------------------------------------------------------------------------------
#
# Every message is multipart: frame 0 is a msgpack map (the header), and frames 1..n are raw
# little-endian C-contiguous tensor bytes, one per entry of ``header["tensors"]``, in order.
# Nothing is pickled, ever.  This module encodes, decodes and validates; it opens no sockets.

VERSION = 1

TO_NODE_TYPES = ("hello", "sample", "ping", "bye")
TO_DEVICE_TYPES = ("welcome", "ack", "error", "model")  # "model" is reserved for a later version
DIRECTIONS = ("to_node", "to_device")

DEFAULT_DTYPES = frozenset({"float32", "float16", "uint8", "int16", "int32", "int64"})


@dataclass(frozen=True)
class Limits:
    """Bounds every decoded message is checked against (all inclusive).

    ``allowed_dtypes`` are numpy dtype names; the bytes on the wire are always little-endian.
    """

    max_header_bytes: int = 8192
    max_tensors: int = 8
    max_dims: int = 6
    max_message_bytes: int = 16 * 1024 * 1024
    allowed_dtypes: frozenset[str] = DEFAULT_DTYPES
    max_device_id_bytes: int = 64

    def __post_init__(self) -> None:
        if not isinstance(self.allowed_dtypes, frozenset):
            object.__setattr__(self, "allowed_dtypes", frozenset(self.allowed_dtypes))


DEFAULT_LIMITS = Limits()


# ---------------------------------------------------------------------------------------------
# Errors: one class per reason; ``code`` is the token of the ``invalid:<code>`` verdict
# ---------------------------------------------------------------------------------------------


class WireError(ValueError):
    """A message that breaks wire protocol v1.

    ``code`` is the reason token (the node answers ``invalid:<code>`` for ``seq``); ``seq`` is the
    sample's sequence number when the header could be read far enough to know it, else ``None``
    (then the node answers with an ``error`` message instead of an ack).
    """

    code: str = "invalid"

    def __init__(self, message: str, *, seq: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.seq = seq

    @property
    def verdict(self) -> str:
        """The ack status for this error: ``"invalid:<code>"``."""
        return f"invalid:{self.code}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}(code={self.code!r}, seq={self.seq!r}, {self.message!r})"


class BadMsgpack(WireError):
    """Frame 0 is not one well-formed msgpack object within the decoding bounds."""

    code = "bad_msgpack"


class BadHeader(WireError):
    """The header is not a map, or a field is missing or has the wrong type (the message names it)."""

    code = "bad_header"


class UnknownVersion(WireError):
    """``header["v"]`` is an int other than :data:`VERSION`."""

    code = "unknown_version"


class UnknownType(WireError):
    """``header["type"]`` is not a message type of this direction."""

    code = "unknown_type"


class HeaderTooLarge(WireError):
    """Frame 0 is longer than ``Limits.max_header_bytes``."""

    code = "header_too_large"


class TooManyTensors(WireError):
    """More tensor entries (or schema entries) than ``Limits.max_tensors``."""

    code = "too_many_tensors"


class TooManyDims(WireError):
    """A tensor shape with more axes than ``Limits.max_dims``."""

    code = "too_many_dims"


class DtypeNotAllowed(WireError):
    """A dtype name outside ``Limits.allowed_dtypes``."""

    code = "dtype_not_allowed"


class FrameCountMismatch(WireError):
    """The number of tensor frames differs from the number of tensor entries in the header."""

    code = "frame_count"


class FrameSizeMismatch(WireError):
    """A tensor frame's byte length differs from itemsize * prod(shape)."""

    code = "frame_size"


class SchemaMismatch(WireError):
    """Tensor names, dtypes or shapes differ from the schema the device declared in its hello."""

    code = "schema_mismatch"


class NonFinite(WireError):
    """A floating-point tensor holds NaN or +-Inf."""

    code = "nan_inf"


class LabelOutOfRange(WireError):
    """The label is negative, or not below the node's ``num_classes``."""

    code = "label_out_of_range"


class MessageTooLarge(WireError):
    """All frames together are longer than ``Limits.max_message_bytes``."""

    code = "message_too_large"


class BadSplit(WireError):
    """``header["split"]`` is a string other than ``"train"`` or ``"eval"``."""

    code = "bad_split"



ERRORS: tuple[type[WireError], ...] = (
    BadMsgpack,
    BadHeader,
    UnknownVersion,
    UnknownType,
    HeaderTooLarge,
    TooManyTensors,
    TooManyDims,
    DtypeNotAllowed,
    FrameCountMismatch,
    FrameSizeMismatch,
    SchemaMismatch,
    NonFinite,
    LabelOutOfRange,
    MessageTooLarge,
    BadSplit,
)
REASONS: tuple[str, ...] = tuple(e.code for e in ERRORS)
ERROR_BY_CODE: dict[str, type[WireError]] = {e.code: e for e in ERRORS}


# ---------------------------------------------------------------------------------------------
# Tensor specs and schemas
# ---------------------------------------------------------------------------------------------


def spec_from_wire(obj: Any, *, name: str = "?", limits: Limits = DEFAULT_LIMITS) -> TensorSpec:
    """Validate and convert the wire form; raises :class:`WireError` subclasses."""
    where = f"schema[{_short(name)}]"
    if not isinstance(obj, dict):
        raise BadHeader(f"{where} must be a map {{'dtype': str, 'shape': [int|-1, ...]}}, "
                        f"got {_tname(obj)}; send the wire form of a TensorSpec")
    dtype = obj.get("dtype")
    if not isinstance(dtype, str):
        raise BadHeader(f"{where}.dtype must be a str (a numpy dtype name), got {_tname(dtype)}")
    shape = obj.get("shape")
    if not isinstance(shape, list) or not all(_is_int(d) and d >= -1 for d in shape):
        raise BadHeader(f"{where}.shape must be a list of ints >= -1, got {_short(shape)}")
    if len(shape) > limits.max_dims:
        raise TooManyDims(f"{where}.shape has {len(shape)} axes, over the limit of "
                          f"{limits.max_dims}; flatten or reshape the tensor")
    if dtype not in limits.allowed_dtypes:
        raise DtypeNotAllowed(_dtype_msg(where, dtype, limits))
    return TensorSpec(dtype, tuple(shape))


Schema = dict[str, TensorSpec]


def schema_of(sample: Sample) -> Schema:
    """The schema a device declares for samples like ``sample``: axis 0 (time) becomes ``-1``."""
    out: Schema = {}
    for name, t in sample.tensors.items():
        a = np.asarray(t)
        shape = tuple(int(d) for d in a.shape)
        if shape:
            shape = (-1,) + shape[1:]
        out[name] = TensorSpec(a.dtype.name, shape)
    return out


def schema_to_wire(schema: Mapping[str, TensorSpec]) -> dict[str, dict[str, Any]]:
    """``{name: {"dtype": str, "shape": [...]}}``."""
    return {str(name): _as_spec(spec).to_wire() for name, spec in schema.items()}


def schema_from_wire(obj: Any, *, limits: Limits = DEFAULT_LIMITS, field_name: str = "schema") -> Schema:
    """Validate and convert a wire-form schema; raises :class:`WireError` subclasses."""
    if not isinstance(obj, dict):
        raise BadHeader(f"header field '{field_name}' must be a map {{name: {{'dtype', 'shape'}}}}, "
                        f"got {_tname(obj)}")
    if len(obj) > limits.max_tensors:
        raise TooManyTensors(f"'{field_name}' declares {len(obj)} tensors, over the limit of "
                             f"{limits.max_tensors}; send fewer modalities")
    out: Schema = {}
    for name, spec in obj.items():
        if not isinstance(name, str):
            raise BadHeader(f"'{field_name}' keys must be str tensor names, got {_tname(name)}")
        out[name] = spec_from_wire(spec, name=name, limits=limits)
    return out


def _as_spec(spec: TensorSpec | Mapping[str, Any]) -> TensorSpec:
    if isinstance(spec, TensorSpec):
        return spec
    return TensorSpec(str(spec["dtype"]), tuple(int(d) for d in spec["shape"]))


# ---------------------------------------------------------------------------------------------
# Message records (Sample, defined above, is the decoded "sample" message)
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Hello:
    """``{"v":1,"type":"hello","device":str,"schema":{name:{"dtype":str,"shape":[int|-1,...]}}}``"""

    device: str
    schema: Schema


@dataclass(frozen=True)
class Ping:
    """``{"v":1,"type":"ping"}``"""


@dataclass(frozen=True)
class Bye:
    """``{"v":1,"type":"bye"}``"""


@dataclass(frozen=True)
class Welcome:
    """``{"v":1,"type":"welcome","credit":int,"num_classes":int,"schema":{...},"next_seq":int}``

    ``next_seq`` is the first sequence number the node has not yet decided for this device.
    """

    credit: int
    num_classes: int
    schema: Schema
    next_seq: int


@dataclass(frozen=True)
class Ack:
    """``{"v":1,"type":"ack","acks":[[seq,status],...],"credit":int}``"""

    acks: list[tuple[int, str]]
    credit: int


@dataclass(frozen=True)
class Error:
    """``{"v":1,"type":"error","seq":int|null,"code":str,"msg":str}``"""

    seq: int | None
    code: str
    msg: str


Message = Union[Hello, Sample, Ping, Bye, Welcome, Ack, Error]
Frame = Union[bytes, bytearray, memoryview, Any]  # Any: zmq.Frame-like objects with ``.buffer``


# ---------------------------------------------------------------------------------------------
# Encoders: each returns frames ready for ``socket.send_multipart(frames, copy=False)``
# ---------------------------------------------------------------------------------------------


def _pack(header: dict[str, Any]) -> bytes:
    return msgpack.packb(header, use_bin_type=True)


def encode_hello(device: str, schema: Mapping[str, TensorSpec]) -> list[bytes | memoryview]:
    """``{"v":1,"type":"hello","device":str,"schema":{name:{"dtype":str,"shape":[int|-1,...]}}}``"""
    return [_pack({"v": VERSION, "type": "hello", "device": str(device),
                   "schema": schema_to_wire(schema)})]


def encode_sample(sample: Sample) -> list[bytes | memoryview]:
    """``{"v":1,"type":"sample","seq":int,"ts":float,"label":int|null,"split":"train"|"eval",
    "tensors":[{"name":str,"dtype":str,"shape":[int,...]},...]}`` followed by one frame per tensor.

    Tensors go in ``sample.tensors`` dict order.  Each frame is a flat byte memoryview of the
    array, made C-contiguous and little-endian; no copy is made when it already is both.
    """
    try:
        seq = -1 if isinstance(sample.seq, bool) else operator.index(sample.seq)
    except TypeError:
        seq = -1
    if not 0 <= seq <= SEQ_MAX:
        raise ValueError(f"sample.seq must be an int in 0..2**63-1 to go on the wire, got {sample.seq!r}; "
                         "number the device's samples 0, 1, 2, ...")
    label = sample.label
    if label is not None:
        label = operator.index(label)
    entries: list[dict[str, Any]] = []
    frames: list[bytes | memoryview] = [b""]
    for name, t in sample.tensors.items():
        a = np.ascontiguousarray(t)
        if a.dtype.kind not in "biuf":
            raise DtypeNotAllowed(f"tensor {name!r} has dtype {a.dtype} which has no raw-bytes wire "
                                  "form; convert it to a numeric dtype")
        little = a.dtype.newbyteorder("<")
        if a.dtype != little:  # big-endian (or native on a big-endian host): one converting copy
            a = a.astype(little)
        entries.append({"name": str(name), "dtype": a.dtype.name, "shape": [int(d) for d in a.shape]})
        frames.append(memoryview(a.reshape(-1).view(np.uint8)))
    frames[0] = _pack({"v": VERSION, "type": "sample", "seq": seq, "ts": float(sample.ts),
                       "label": label, "split": str(sample.split), "tensors": entries})
    return frames


def encode_ping() -> list[bytes | memoryview]:
    """``{"v":1,"type":"ping"}``"""
    return [_pack({"v": VERSION, "type": "ping"})]


def encode_bye() -> list[bytes | memoryview]:
    """``{"v":1,"type":"bye"}``"""
    return [_pack({"v": VERSION, "type": "bye"})]


def encode_welcome(credit: int, num_classes: int, schema: Mapping[str, TensorSpec],
                   next_seq: int) -> list[bytes | memoryview]:
    """``{"v":1,"type":"welcome","credit":int,"num_classes":int,"schema":{...},"next_seq":int}``"""
    return [_pack({"v": VERSION, "type": "welcome", "credit": int(credit),
                   "num_classes": int(num_classes), "schema": schema_to_wire(schema),
                   "next_seq": int(next_seq)})]


def encode_ack(acks: Iterable[tuple[int, str]], credit: int) -> list[bytes | memoryview]:
    """``{"v":1,"type":"ack","acks":[[seq,status],...],"credit":int}``

    The header must stay within ``Limits.max_header_bytes`` (8192): batch at most a few hundred acks.
    """
    return [_pack({"v": VERSION, "type": "ack",
                   "acks": [[int(s), str(status)] for s, status in acks], "credit": int(credit)})]


def encode_error(seq: int | None, code: str, msg: str) -> list[bytes | memoryview]:
    """``{"v":1,"type":"error","seq":int|null,"code":str,"msg":str}``"""
    return [_pack({"v": VERSION, "type": "error", "seq": None if seq is None else int(seq),
                   "code": str(code), "msg": str(msg)})]


# ---------------------------------------------------------------------------------------------
# Decoding
# ---------------------------------------------------------------------------------------------


def decode(
    frames: Sequence[Frame],
    *,
    direction: str = "to_node",
    schema: Mapping[str, TensorSpec] | None = None,
    num_classes: int | None = None,
    device: str = "",
    limits: Limits = DEFAULT_LIMITS,
    content: bool = True,
) -> Message:
    """Decode and validate one multipart message (the routing-id frame already stripped).

    ``direction="to_node"`` accepts hello / sample / ping / bye (a sample comes back as a
    :class:`Sample` whose tensors are read-only zero-copy views of the frames, with
    ``device`` set from the argument); ``direction="to_device"`` accepts welcome / ack / error.
    ``schema`` (the device's declared schema) and ``num_classes`` enable those sample checks;
    ``content=False`` leaves out the checks of the tensors' content (finiteness, label, split value,
    schema) for a caller that runs :mod:`edge_runtime.validation` itself (the node, off its IO thread).

    Raises a :class:`WireError` subclass for any bad input, never another exception.  Checks run
    in this order: total size, header size, msgpack, ``v``, ``type``, then per type; for a sample:
    header fields (``seq`` first), tensor count, dims, dtypes, frame count, frame sizes, schema,
    finiteness, label range.  Errors carry the sample's ``seq`` whenever it could be read (a
    too-large message too, when its header is readable), else ``None``.
    """
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
    bufs = [_buf(f) for f in frames]
    if not bufs:
        raise BadHeader("message has no frames; frame 0 must be the msgpack header map")
    total = sum(b.nbytes for b in bufs)
    if total > limits.max_message_bytes:
        raise MessageTooLarge(
            f"message is {total} bytes, over the limit of {limits.max_message_bytes}; "
            "send smaller tensors (fewer frames, lower resolution)", seq=_peek_seq(bufs[0], limits))
    header = decode_header(bufs[0], limits=limits)
    mtype = _check_v_type(header, direction)
    if mtype == "sample":
        return _decode_sample(header, bufs, schema, num_classes, device, limits, content)
    if mtype == "hello":
        _no_tensor_frames(bufs, mtype)
        dev = header.get("device")
        if not isinstance(dev, str):
            raise BadHeader(f"header field 'device' must be a str, got {_tname(dev)}")
        n = len(dev.encode("utf-8", "surrogatepass"))
        if not 1 <= n <= limits.max_device_id_bytes:
            raise BadHeader(f"header field 'device' must be 1..{limits.max_device_id_bytes} UTF-8 "
                            f"bytes, got {n}; use a non-empty, shorter device id")
        return Hello(dev, schema_from_wire(header.get("schema"), limits=limits))
    if mtype == "ping":
        _no_tensor_frames(bufs, mtype)
        return Ping()
    if mtype == "bye":
        _no_tensor_frames(bufs, mtype)
        return Bye()
    if mtype == "welcome":
        _no_tensor_frames(bufs, mtype)
        return Welcome(credit=_get_int(header, "credit"), num_classes=_get_int(header, "num_classes"),
                       schema=schema_from_wire(header.get("schema"), limits=limits),
                       next_seq=_get_int(header, "next_seq"))
    if mtype == "ack":
        _no_tensor_frames(bufs, mtype)
        raw = header.get("acks")
        if not isinstance(raw, list):
            raise BadHeader(f"header field 'acks' must be a list of [seq, status], got {_tname(raw)}")
        acks: list[tuple[int, str]] = []
        for i, item in enumerate(raw):
            if not (isinstance(item, list) and len(item) == 2 and _is_seq(item[0]) and isinstance(item[1], str)):
                raise BadHeader(f"header field 'acks[{i}]' must be [int >= 0, str], got {_short(item)}")
            acks.append((item[0], item[1]))
        return Ack(acks, _get_int(header, "credit"))
    if mtype == "error":
        _no_tensor_frames(bufs, mtype)
        seq = header.get("seq", _MISSING)
        if seq is _MISSING or not (seq is None or _is_seq(seq)):
            raise BadHeader(f"header field 'seq' must be an int >= 0 or null, got {_short(seq)}")
        for k in ("code", "msg"):
            if not isinstance(header.get(k), str):
                raise BadHeader(f"header field '{k}' must be a str, got {_tname(header.get(k))}")
        return Error(seq, header["code"], header["msg"])
    # "model" (node -> device weights) is reserved for a later version of the protocol.
    raise UnknownType(f"message type {mtype!r} is reserved for a later protocol version; "
                      "this decoder does not handle it yet")


def decode_header(frame0: Frame, *, limits: Limits = DEFAULT_LIMITS) -> dict[str, Any]:
    """Bounded msgpack decoding of frame 0; returns the header map (not yet validated)."""
    buf = _buf(frame0)
    if buf.nbytes > limits.max_header_bytes:
        raise HeaderTooLarge(f"header frame is {buf.nbytes} bytes, over the limit of "
                             f"{limits.max_header_bytes}; keep metadata out of the header")
    n = limits.max_header_bytes
    try:
        header = msgpack.unpackb(buf, raw=False, strict_map_key=True, max_str_len=n, max_bin_len=n,
                                 max_array_len=n, max_map_len=n, max_ext_len=0)
    except Exception as e:  # ExtraData, FormatError, StackError, ValueError, UnicodeDecodeError, ...
        raise BadMsgpack(f"frame 0 is not one valid msgpack object ({type(e).__name__}: "
                         f"{_short(str(e))}); pack the header with msgpack.packb") from None
    if not isinstance(header, dict):
        raise BadHeader(f"header must be a msgpack map, got {_tname(header)}; "
                        "frame 0 must be {'v': 1, 'type': ..., ...}")
    return header


_MISSING = object()


def _check_v_type(header: dict[str, Any], direction: str) -> str:
    v = header.get("v")
    if not _is_int(v):
        raise BadHeader(f"header field 'v' must be an int (protocol version {VERSION}), got {_tname(v)}")
    if v != VERSION:
        raise UnknownVersion(f"protocol version {_short(v)} is not supported; this node speaks v{VERSION}")
    mtype = header.get("type")
    if not isinstance(mtype, str):
        raise BadHeader(f"header field 'type' must be a str, got {_tname(mtype)}")
    allowed = TO_NODE_TYPES if direction == "to_node" else TO_DEVICE_TYPES
    if mtype not in allowed:
        raise UnknownType(f"message type {_short(mtype)} is not one of {allowed} ({direction})")
    return mtype


def _decode_sample(header: dict[str, Any], bufs: list[memoryview], schema: Mapping[str, TensorSpec] | None,
                   num_classes: int | None, device: str, limits: Limits, content: bool = True) -> Sample:
    seq = header.get("seq")
    if not _is_seq(seq):
        raise BadHeader(f"header field 'seq' must be an int in 0..2**63-1 (signed 64-bit), got {_short(seq)}")
    try:
        return _decode_sample_body(header, seq, bufs, schema, num_classes, device, limits, content)
    except WireError as e:
        if e.seq is None:
            e.seq = seq
        raise


def _decode_sample_body(header: dict[str, Any], seq: int, bufs: list[memoryview],
                        schema: Mapping[str, TensorSpec] | None, num_classes: int | None,
                        device: str, limits: Limits, content: bool = True) -> Sample:
    # 1. header fields
    ts = header.get("ts")
    if not (_is_int(ts) or isinstance(ts, float)):
        raise BadHeader(f"header field 'ts' must be a float (or int), got {_tname(ts)}")
    label = header.get("label", _MISSING)
    if label is _MISSING or not (label is None or _is_int(label)):
        raise BadHeader(f"header field 'label' must be an int or null, got {_short(label)}")
    split = header.get("split")
    if not isinstance(split, str):
        raise BadHeader(f"header field 'split' must be a str ('train' or 'eval'), got {_tname(split)}")
    if content:
        _raise(validation.check_label_split(None, split, None), seq)
    entries = header.get("tensors")
    if not isinstance(entries, list):
        raise BadHeader(f"header field 'tensors' must be a list of {{name, dtype, shape}} maps, "
                        f"got {_tname(entries)}")
    names: set[str] = set()
    for i, ent in enumerate(entries):
        if not isinstance(ent, dict):
            raise BadHeader(f"header field 'tensors[{i}]' must be a map {{name, dtype, shape}}, "
                            f"got {_tname(ent)}")
        name, dtype, shape = ent.get("name"), ent.get("dtype"), ent.get("shape")
        if not isinstance(name, str):
            raise BadHeader(f"header field 'tensors[{i}].name' must be a str, got {_tname(name)}")
        if name in names:
            raise BadHeader(f"header field 'tensors[{i}].name' repeats tensor name {_short(name)}")
        names.add(name)
        if not isinstance(dtype, str):
            raise BadHeader(f"header field 'tensors[{i}].dtype' must be a str, got {_tname(dtype)}")
        if not isinstance(shape, list) or not all(_is_int(d) and d >= 0 for d in shape):
            raise BadHeader(f"header field 'tensors[{i}].shape' must be a list of ints >= 0, "
                            f"got {_short(shape)}")
    # 2. tensor count, 3. dims, 4. dtypes
    if len(entries) > limits.max_tensors:
        raise TooManyTensors(f"sample has {len(entries)} tensors, over the limit of "
                             f"{limits.max_tensors}; send fewer modalities")
    for ent in entries:
        if len(ent["shape"]) > limits.max_dims:
            raise TooManyDims(f"tensor {_short(ent['name'])} has {len(ent['shape'])} axes, over the "
                              f"limit of {limits.max_dims}; reshape it")
    dtypes = []
    for ent in entries:
        dtypes.append(_wire_dtype(ent["dtype"], f"tensor {_short(ent['name'])}", limits))
    # 5. frame count, 6. frame sizes
    if len(bufs) - 1 != len(entries):
        raise FrameCountMismatch(f"header lists {len(entries)} tensors but {len(bufs) - 1} tensor "
                                 "frames followed; send exactly one frame per tensor entry, in order")
    for ent, dt, buf in zip(entries, dtypes, bufs[1:]):
        want = dt.itemsize * math.prod(ent["shape"])
        if buf.nbytes != want:
            raise FrameSizeMismatch(f"tensor {_short(ent['name'])} frame is {buf.nbytes} bytes but "
                                    f"{ent['dtype']} x {ent['shape']} needs {want}; send the raw "
                                    "C-contiguous little-endian bytes of the array")
    # 7. schema (edge_runtime.validation: the one content check of the code base)
    if content and schema is not None:
        contract = validation.InputContract(schema)
        _raise(contract.check_schema({e["name"]: (e["dtype"], e["shape"]) for e in entries}), seq)
    # zero-copy views of the frames
    tensors: dict[str, np.ndarray] = {}
    for ent, dt, buf in zip(entries, dtypes, bufs[1:]):
        tensors[ent["name"]] = np.frombuffer(buf, dtype=dt).reshape(ent["shape"])
    if content:  # 8. finiteness, 9. label range
        _raise(validation.check_finite(tensors), seq)
        _raise(validation.check_label_split(label, split, num_classes), seq)
    return Sample(tensors=tensors, label=label, split=split, device=device, seq=seq,
                  ts=float(ts))


# ---------------------------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------------------------

_DTYPE_CACHE: dict[str, np.dtype] = {}


def _wire_dtype(name: str, where: str, limits: Limits) -> np.dtype:
    """The little-endian numpy dtype for an allowed dtype name."""
    if name not in limits.allowed_dtypes:
        raise DtypeNotAllowed(_dtype_msg(where, name, limits))
    dt = _DTYPE_CACHE.get(name)
    if dt is None:
        try:
            dt = np.dtype(name)
        except Exception:  # a misconfigured allowed_dtypes entry
            raise DtypeNotAllowed(f"{where}: dtype {_short(name)} is not a numpy dtype name") from None
        if dt.kind not in "biufc" or dt.name != name:
            raise DtypeNotAllowed(f"{where}: dtype {_short(name)} has no raw-bytes wire form")
        dt = dt.newbyteorder("<")
        _DTYPE_CACHE[name] = dt
    return dt


def _dtype_msg(where: str, name: Any, limits: Limits) -> str:
    return (f"{where}: dtype {_short(name)} is not allowed; use one of "
            f"{sorted(limits.allowed_dtypes)} (little-endian)")


def _no_tensor_frames(bufs: list[memoryview], mtype: str) -> None:
    if len(bufs) != 1:
        raise FrameCountMismatch(f"a {mtype!r} message carries no tensors but {len(bufs) - 1} extra "
                                 "frames followed the header; send the header frame only")


def _get_int(header: dict[str, Any], key: str) -> int:
    v = header.get(key)
    if not _is_int(v) or v < 0:
        raise BadHeader(f"header field '{key}' must be an int >= 0, got {_short(v)}")
    return v


def _peek_seq(buf: memoryview, limits: Limits) -> int | None:
    """Best-effort seq of a sample header (bounded), to answer ``invalid:<code>`` for it."""
    try:
        header = decode_header(buf, limits=limits)
        if header.get("type") == "sample" and _is_int(header.get("v")) and header["v"] == VERSION:
            seq = header.get("seq")
            if _is_seq(seq):
                return seq
    except WireError:
        pass
    return None


def _buf(frame: Frame) -> memoryview:
    """A flat byte memoryview of a frame (bytes, bytearray, memoryview, or zmq.Frame-like)."""
    obj = getattr(frame, "buffer", frame)
    try:
        mv = memoryview(obj)
    except TypeError:
        raise BadHeader(f"frame of type {type(frame).__name__} is not a bytes-like object") from None
    if mv.ndim != 1 or mv.format != "B":
        mv = mv.cast("B") if mv.c_contiguous else memoryview(mv.tobytes())
    return mv


def _raise(problem: validation.Problem | None, seq: int | None) -> None:
    """Raise the :class:`WireError` of a content problem (its class is the one of the same code)."""
    if problem is not None:
        raise ERROR_BY_CODE[problem.code](problem.message, seq=seq)


def _is_seq(v: Any) -> bool:
    """A sequence number: an int (not a bool) in 0..:data:`SEQ_MAX`."""
    return _is_int(v) and 0 <= v <= SEQ_MAX


def _is_int(v: Any) -> bool:
    """An int that is not a bool (``True`` is not a valid seq)."""
    return isinstance(v, int) and not isinstance(v, bool)


def _tname(v: Any) -> str:
    return "null" if v is None else type(v).__name__


def _short(v: Any, n: int = 60) -> str:
    r = repr(v)
    return r if len(r) <= n else r[: n - 3] + "..."
