"""Wire protocol v1's errors: one class per reason; ``code`` is the token of the ``invalid:<code>`` verdict."""

from __future__ import annotations

from edge_runtime.core.codec import CodecError


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


#: The wire error of each :class:`~edge_runtime.core.codec.CodecError` reason.
_BY_CODEC_REASON: dict[str, type[WireError]] = {
    "bad_msgpack": BadMsgpack,
    "header_too_large": HeaderTooLarge,
    "bad_header": BadHeader,
    "bad_dtype": DtypeNotAllowed,
    "bad_shape": BadHeader,
    "too_many_dims": TooManyDims,
    "frame_size": FrameSizeMismatch,
    "frame_count": FrameCountMismatch,
}


def from_codec(err: CodecError, *, seq: int | None = None) -> WireError:
    """The :class:`WireError` of a framing fault found by :mod:`edge_runtime.core.codec`."""
    return _BY_CODEC_REASON[err.reason](err.message, seq=seq)
