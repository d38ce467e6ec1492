"""Wire protocol v1's constants, the bounds every decoded message is checked against, and schemas.

A schema is what a device declares in its ``hello``: tensor name -> :class:`TensorSpec`, whose wire
form is ``{"dtype": str, "shape": [int|-1, ...]}`` (``-1``: any size).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from edge_runtime.core.codec import is_int, short, tname
from edge_runtime.core.sample import SEQ_MAX, Sample, TensorSpec
from edge_runtime.wire.errors import BadHeader, DtypeNotAllowed, TooManyDims, TooManyTensors

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

Schema = dict[str, TensorSpec]


def is_seq(v: Any) -> bool:
    """A sequence number: an int (not a bool) in 0..:data:`SEQ_MAX`."""
    return is_int(v) and 0 <= v <= SEQ_MAX


def dtype_msg(where: str, name: Any, limits: Limits) -> str:
    """The :class:`DtypeNotAllowed` message for dtype ``name`` at ``where``."""
    return (f"{where}: dtype {short(name)} is not allowed; use one of "
            f"{sorted(limits.allowed_dtypes)} (little-endian)")


def spec_from_wire(obj: Any, *, name: str = "?", limits: Limits = DEFAULT_LIMITS) -> TensorSpec:
    """Validate and convert the wire form; raises :class:`WireError` subclasses."""
    where = f"schema[{short(name)}]"
    if not isinstance(obj, dict):
        raise BadHeader(f"{where} must be a map {{'dtype': str, 'shape': [int|-1, ...]}}, "
                        f"got {tname(obj)}; send the wire form of a TensorSpec")
    dtype = obj.get("dtype")
    if not isinstance(dtype, str):
        raise BadHeader(f"{where}.dtype must be a str (a numpy dtype name), got {tname(dtype)}")
    shape = obj.get("shape")
    if not isinstance(shape, list) or not all(is_int(d) and d >= -1 for d in shape):
        raise BadHeader(f"{where}.shape must be a list of ints >= -1, got {short(shape)}")
    if len(shape) > limits.max_dims:
        raise TooManyDims(f"{where}.shape has {len(shape)} axes, over the limit of "
                          f"{limits.max_dims}; flatten or reshape the tensor")
    if dtype not in limits.allowed_dtypes:
        raise DtypeNotAllowed(dtype_msg(where, dtype, limits))
    return TensorSpec(dtype, tuple(shape))


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
                        f"got {tname(obj)}")
    if len(obj) > limits.max_tensors:
        raise TooManyTensors(f"'{field_name}' declares {len(obj)} tensors, over the limit of "
                             f"{limits.max_tensors}; send fewer modalities")
    out: Schema = {}
    for name, spec in obj.items():
        if not isinstance(name, str):
            raise BadHeader(f"'{field_name}' keys must be str tensor names, got {tname(name)}")
        out[name] = spec_from_wire(spec, name=name, limits=limits)
    return out


def _as_spec(spec: TensorSpec | Mapping[str, Any]) -> TensorSpec:
    if isinstance(spec, TensorSpec):
        return spec
    return TensorSpec(str(spec["dtype"]), tuple(int(d) for d in spec["shape"]))
