"""Wire protocol v1's decoder and validator: frames in, a typed record or a :class:`WireError` out.

The framing (bounded msgpack header, raw array frames, safe byte counts) is
:mod:`edge_runtime.core.codec`'s; this module adds the protocol's fields, bounds and the order in
which they are checked, and :mod:`edge_runtime.core.validation` the content checks.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from edge_runtime.core import codec, validation
from edge_runtime.core.codec import Frame, is_int, short, tname
from edge_runtime.core.sample import Sample, TensorSpec
from edge_runtime.wire.errors import (
    ERROR_BY_CODE,
    BadHeader,
    DtypeNotAllowed,
    FrameCountMismatch,
    FrameSizeMismatch,
    MessageTooLarge,
    TooManyDims,
    TooManyTensors,
    UnknownType,
    UnknownVersion,
    WireError,
    from_codec,
)
from edge_runtime.wire.messages import Ack, Bye, Error, Hello, Message, Ping, Welcome
from edge_runtime.wire.schema import (
    DEFAULT_LIMITS,
    DIRECTIONS,
    TO_DEVICE_TYPES,
    TO_NODE_TYPES,
    VERSION,
    Limits,
    dtype_msg,
    is_seq,
    schema_from_wire,
)

__all__ = ["decode", "decode_header"]


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
    schema) for a caller that runs :mod:`edge_runtime.core.validation` itself (the node, off its IO thread).

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
            raise BadHeader(f"header field 'device' must be a str, got {tname(dev)}")
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
            raise BadHeader(f"header field 'acks' must be a list of [seq, status], got {tname(raw)}")
        acks: list[tuple[int, str]] = []
        for i, item in enumerate(raw):
            if not (isinstance(item, list) and len(item) == 2 and is_seq(item[0]) and isinstance(item[1], str)):
                raise BadHeader(f"header field 'acks[{i}]' must be [int >= 0, str], got {short(item)}")
            acks.append((item[0], item[1]))
        return Ack(acks, _get_int(header, "credit"))
    if mtype == "error":
        _no_tensor_frames(bufs, mtype)
        seq = header.get("seq", _MISSING)
        if seq is _MISSING or not (seq is None or is_seq(seq)):
            raise BadHeader(f"header field 'seq' must be an int >= 0 or null, got {short(seq)}")
        for k in ("code", "msg"):
            if not isinstance(header.get(k), str):
                raise BadHeader(f"header field '{k}' must be a str, got {tname(header.get(k))}")
        return Error(seq, header["code"], header["msg"])
    # "model" (node -> device weights) is reserved for a later version of the protocol.
    raise UnknownType(f"message type {mtype!r} is reserved for a later protocol version; "
                      "this decoder does not handle it yet")


def decode_header(frame0: Frame, *, limits: Limits = DEFAULT_LIMITS) -> dict[str, Any]:
    """Bounded msgpack decoding of frame 0; returns the header map (not yet validated)."""
    try:
        return codec.unpack_header(frame0, max_bytes=limits.max_header_bytes)
    except codec.CodecError as e:
        raise from_codec(e) from None


_MISSING = object()


def _check_v_type(header: dict[str, Any], direction: str) -> str:
    v = header.get("v")
    if not is_int(v):
        raise BadHeader(f"header field 'v' must be an int (protocol version {VERSION}), got {tname(v)}")
    if v != VERSION:
        raise UnknownVersion(f"protocol version {short(v)} is not supported; this node speaks v{VERSION}")
    mtype = header.get("type")
    if not isinstance(mtype, str):
        raise BadHeader(f"header field 'type' must be a str, got {tname(mtype)}")
    allowed = TO_NODE_TYPES if direction == "to_node" else TO_DEVICE_TYPES
    if mtype not in allowed:
        raise UnknownType(f"message type {short(mtype)} is not one of {allowed} ({direction})")
    return mtype


def _decode_sample(header: dict[str, Any], bufs: list[memoryview], schema: Mapping[str, TensorSpec] | None,
                   num_classes: int | None, device: str, limits: Limits, content: bool = True) -> Sample:
    seq = header.get("seq")
    if not is_seq(seq):
        raise BadHeader(f"header field 'seq' must be an int in 0..2**63-1 (signed 64-bit), got {short(seq)}")
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
    if not (is_int(ts) or isinstance(ts, float)):
        raise BadHeader(f"header field 'ts' must be a float (or int), got {tname(ts)}")
    label = header.get("label", _MISSING)
    if label is _MISSING or not (label is None or is_int(label)):
        raise BadHeader(f"header field 'label' must be an int or null, got {short(label)}")
    split = header.get("split")
    if not isinstance(split, str):
        raise BadHeader(f"header field 'split' must be a str ('train' or 'eval'), got {tname(split)}")
    if content:
        _raise(validation.check_label_split(None, split, None), seq)
    entries = header.get("tensors")
    if not isinstance(entries, list):
        raise BadHeader(f"header field 'tensors' must be a list of {{name, dtype, shape}} maps, "
                        f"got {tname(entries)}")
    names: set[str] = set()
    for i, ent in enumerate(entries):
        if not isinstance(ent, dict):
            raise BadHeader(f"header field 'tensors[{i}]' must be a map {{name, dtype, shape}}, "
                            f"got {tname(ent)}")
        name, dtype, shape = ent.get("name"), ent.get("dtype"), ent.get("shape")
        if not isinstance(name, str):
            raise BadHeader(f"header field 'tensors[{i}].name' must be a str, got {tname(name)}")
        if name in names:
            raise BadHeader(f"header field 'tensors[{i}].name' repeats tensor name {short(name)}")
        names.add(name)
        if not isinstance(dtype, str):
            raise BadHeader(f"header field 'tensors[{i}].dtype' must be a str, got {tname(dtype)}")
        if not isinstance(shape, list) or not all(is_int(d) and d >= 0 for d in shape):
            raise BadHeader(f"header field 'tensors[{i}].shape' must be a list of ints >= 0, "
                            f"got {short(shape)}")
    # 2. tensor count, 3. dims, 4. dtypes
    if len(entries) > limits.max_tensors:
        raise TooManyTensors(f"sample has {len(entries)} tensors, over the limit of "
                             f"{limits.max_tensors}; send fewer modalities")
    for ent in entries:
        if len(ent["shape"]) > limits.max_dims:
            raise TooManyDims(f"tensor {short(ent['name'])} has {len(ent['shape'])} axes, over the "
                              f"limit of {limits.max_dims}; reshape it")
    dtypes = [_wire_dtype(ent["dtype"], f"tensor {short(ent['name'])}", limits) for ent in entries]
    # 5. frame count, 6. frame sizes
    if len(bufs) - 1 != len(entries):
        raise FrameCountMismatch(f"header lists {len(entries)} tensors but {len(bufs) - 1} tensor "
                                 "frames followed; send exactly one frame per tensor entry, in order")
    for ent, dt, buf in zip(entries, dtypes, bufs[1:]):
        want = _frame_bytes(dt, ent)
        if buf.nbytes != want:
            raise FrameSizeMismatch(f"tensor {short(ent['name'])} frame is {buf.nbytes} bytes but "
                                    f"{ent['dtype']} x {ent['shape']} needs {want}; send the raw "
                                    "C-contiguous little-endian bytes of the array")
    # 7. schema (edge_runtime.core.validation: the one content check of the code base)
    if content and schema is not None:
        contract = validation.InputContract(schema)
        _raise(contract.check_schema({e["name"]: (e["dtype"], e["shape"]) for e in entries}), seq)
    # zero-copy views of the frames
    tensors: dict[str, np.ndarray] = {}
    for ent, dt, buf in zip(entries, dtypes, bufs[1:]):
        try:
            tensors[ent["name"]] = codec.to_array(dt, ent["shape"], buf)
        except codec.CodecError as e:
            raise from_codec(e) from None
    if content:  # 8. finiteness, 9. label range
        _raise(validation.check_finite(tensors), seq)
        _raise(validation.check_label_split(label, split, num_classes), seq)
    return Sample(tensors=tensors, label=label, split=split, device=device, seq=seq,
                  ts=float(ts))


# ---------------------------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------------------------


def _wire_dtype(name: str, where: str, limits: Limits) -> np.dtype:
    """The little-endian numpy dtype for an allowed dtype name."""
    if name not in limits.allowed_dtypes:
        raise DtypeNotAllowed(dtype_msg(where, name, limits))
    try:
        return codec.dtype_of(name)
    except codec.CodecError as e:  # a misconfigured allowed_dtypes entry
        raise DtypeNotAllowed(f"{where}: {e.message}") from None


def _frame_bytes(dt: np.dtype, ent: dict[str, Any]) -> int:
    """The byte length of a tensor's frame (shapes numpy cannot build have none)."""
    try:
        return codec.nbytes(dt, ent["shape"])
    except codec.CodecError as e:
        raise from_codec(codec.CodecError(e.reason, f"tensor {short(ent['name'])}: {e.message}")) from None


def _no_tensor_frames(bufs: list[memoryview], mtype: str) -> None:
    if len(bufs) != 1:
        raise FrameCountMismatch(f"a {mtype!r} message carries no tensors but {len(bufs) - 1} extra "
                                 "frames followed the header; send the header frame only")


def _get_int(header: dict[str, Any], key: str) -> int:
    v = header.get(key)
    if not is_int(v) or v < 0:
        raise BadHeader(f"header field '{key}' must be an int >= 0, got {short(v)}")
    return v


def _peek_seq(buf: memoryview, limits: Limits) -> int | None:
    """Best-effort seq of a sample header (bounded), to answer ``invalid:<code>`` for it."""
    try:
        header = decode_header(buf, limits=limits)
        if header.get("type") == "sample" and is_int(header.get("v")) and header["v"] == VERSION:
            seq = header.get("seq")
            if is_seq(seq):
                return seq
    except WireError:
        pass
    return None


def _buf(frame: Frame) -> memoryview:
    """A flat byte memoryview of a frame (bytes, bytearray, memoryview, or zmq.Frame-like)."""
    try:
        return codec.as_buffer(frame)
    except codec.CodecError as e:
        raise from_codec(e) from None


def _raise(problem: validation.Problem | None, seq: int | None) -> None:
    """Raise the :class:`WireError` of a content problem (its class is the one of the same code)."""
    if problem is not None:
        raise ERROR_BY_CODE[problem.code](problem.message, seq=seq)
