"""Wire protocol v1's message records and their encoders.

Each encoder returns the frames of one message, ready for ``socket.send_multipart(frames,
copy=False)``: the msgpack header, then (for a sample) one raw frame per tensor, framed by
:mod:`edge_runtime.core.codec`. The decoded form of a ``sample`` message is
:class:`~edge_runtime.core.sample.Sample`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Union

from edge_runtime.core import codec
from edge_runtime.core.codec import Frame
from edge_runtime.core.sample import Sample, TensorSpec, sample_header
from edge_runtime.wire.errors import DtypeNotAllowed
from edge_runtime.wire.schema import VERSION, Schema, schema_to_wire

__all__ = ["Ack", "Bye", "Error", "Frame", "Hello", "Message", "Ping", "Welcome", "encode_ack",
           "encode_bye", "encode_error", "encode_hello", "encode_ping", "encode_sample", "encode_welcome"]


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


def encode_hello(device: str, schema: Mapping[str, TensorSpec]) -> list[bytes | memoryview]:
    """``{"v":1,"type":"hello","device":str,"schema":{name:{"dtype":str,"shape":[int|-1,...]}}}``"""
    return [codec.pack_header({"v": VERSION, "type": "hello", "device": str(device),
                               "schema": schema_to_wire(schema)})]


def encode_sample(sample: Sample) -> list[bytes | memoryview]:
    """``{"v":1,"type":"sample","seq":int,"ts":float,"label":int|null,"split":"train"|"eval",
    "tensors":[{"name":str,"dtype":str,"shape":[int,...]},...]}`` followed by one frame per tensor.

    Tensors go in ``sample.tensors`` dict order.  Each frame is a flat byte memoryview of the
    array, made C-contiguous and little-endian; no copy is made when it already is both.
    """
    header = sample_header(sample, VERSION, hint="; number the device's samples 0, 1, 2, ...")
    try:
        return codec.pack(header, sample.tensors, key="tensors", kinds="biuf")
    except codec.CodecError as e:
        raise DtypeNotAllowed(e.message) from None


def encode_ping() -> list[bytes | memoryview]:
    """``{"v":1,"type":"ping"}``"""
    return [codec.pack_header({"v": VERSION, "type": "ping"})]


def encode_bye() -> list[bytes | memoryview]:
    """``{"v":1,"type":"bye"}``"""
    return [codec.pack_header({"v": VERSION, "type": "bye"})]


def encode_welcome(credit: int, num_classes: int, schema: Mapping[str, TensorSpec],
                   next_seq: int) -> list[bytes | memoryview]:
    """``{"v":1,"type":"welcome","credit":int,"num_classes":int,"schema":{...},"next_seq":int}``"""
    return [codec.pack_header({"v": VERSION, "type": "welcome", "credit": int(credit),
                               "num_classes": int(num_classes), "schema": schema_to_wire(schema),
                               "next_seq": int(next_seq)})]


def encode_ack(acks: Iterable[tuple[int, str]], credit: int) -> list[bytes | memoryview]:
    """``{"v":1,"type":"ack","acks":[[seq,status],...],"credit":int}``

    The header must stay within ``Limits.max_header_bytes`` (8192): batch at most a few hundred acks.
    """
    return [codec.pack_header({"v": VERSION, "type": "ack",
                               "acks": [[int(s), str(status)] for s, status in acks], "credit": int(credit)})]


def encode_error(seq: int | None, code: str, msg: str) -> list[bytes | memoryview]:
    """``{"v":1,"type":"error","seq":int|null,"code":str,"msg":str}``"""
    return [codec.pack_header({"v": VERSION, "type": "error", "seq": None if seq is None else int(seq),
                               "code": str(code), "msg": str(msg)})]
