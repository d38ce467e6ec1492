"""Wire protocol v1 (documented in docs/protocol.md): records, encoders, decoder, validator.

The node binds a ROUTER socket; each device connects a DEALER whose routing id is its device id
(UTF-8, at most 64 bytes). Every message is multipart: frame 0 is a msgpack map (the header), and
frames 1..n are raw little-endian C-contiguous tensor bytes, one per entry of ``header["tensors"]``,
in order (the framing of :mod:`edge_runtime.core.codec`). Nothing is pickled, ever.

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

("model" is reserved for a later version.) Encoders (:mod:`.messages`) return frame lists for
``socket.send_multipart(frames, copy=False)``; :func:`decode` (:mod:`.decoder`) validates and
returns a typed record or raises a :class:`WireError` subclass (:mod:`.errors`) whose ``code`` is
the ``invalid:<code>`` reason; :mod:`.schema` holds the constants, limits and schemas. This
package opens no sockets. Unknown extra header fields are ignored (forward compatibility).
"""

from __future__ import annotations


from edge_runtime.core.sample import Sample, TensorSpec
from edge_runtime.wire.decoder import decode, decode_header
from edge_runtime.wire.errors import (
    ERROR_BY_CODE,
    ERRORS,
    REASONS,
    BadHeader,
    BadMsgpack,
    BadSplit,
    DtypeNotAllowed,
    FrameCountMismatch,
    FrameSizeMismatch,
    HeaderTooLarge,
    LabelOutOfRange,
    MessageTooLarge,
    NonFinite,
    SchemaMismatch,
    TooManyDims,
    TooManyTensors,
    UnknownType,
    UnknownVersion,
    WireError,
)
from edge_runtime.wire.messages import (
    Ack,
    Bye,
    Error,
    Frame,
    Hello,
    Message,
    Ping,
    Welcome,
    encode_ack,
    encode_bye,
    encode_error,
    encode_hello,
    encode_ping,
    encode_sample,
    encode_welcome,
)
from edge_runtime.wire.schema import (
    DEFAULT_DTYPES,
    DEFAULT_LIMITS,
    DIRECTIONS,
    SEQ_MAX,
    TO_DEVICE_TYPES,
    TO_NODE_TYPES,
    VERSION,
    Limits,
    Schema,
    schema_from_wire,
    schema_of,
    schema_to_wire,
    spec_from_wire,
)

__all__ = [
    "Ack", "BadHeader", "BadMsgpack", "BadSplit", "Bye", "DEFAULT_DTYPES", "DEFAULT_LIMITS", "DIRECTIONS",
    "DtypeNotAllowed", "ERRORS", "ERROR_BY_CODE", "Error", "Frame", "FrameCountMismatch", "FrameSizeMismatch",
    "HeaderTooLarge", "Hello", "LabelOutOfRange", "Limits", "Message", "MessageTooLarge", "NonFinite", "Ping",
    "REASONS", "SEQ_MAX", "Sample", "Schema", "SchemaMismatch", "TO_DEVICE_TYPES", "TO_NODE_TYPES", "TensorSpec",
    "TooManyDims", "TooManyTensors", "UnknownType", "UnknownVersion", "VERSION", "Welcome", "WireError",
    "decode", "decode_header", "encode_ack", "encode_bye", "encode_error", "encode_hello", "encode_ping",
    "encode_sample", "encode_welcome", "schema_from_wire", "schema_of", "schema_to_wire", "spec_from_wire",
]
