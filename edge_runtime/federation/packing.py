"""How our ServerApp and ClientApp move a message's arrays: one Flower Array per dtype, not one per array.

Flower 1.42 moves every Array of a message as its own object, one HTTP request per object on each
hop (ServerApp -> SuperLink -> SuperNode -> ClientApp and back); the demo's model is about 30
arrays, so a message is about 63 objects and their requests are most of a round's transfer time on a
loaded machine (docs/federation.md, "Where a round's time goes"). Packed, each ArrayRecord of a
message travels as one flat Array per dtype (``packed.float32``, ``packed.int64``) plus its layout
(names, dtypes, shapes, in order) in a ConfigRecord ``<record>-layout``; the receiver unpacks it into
the same named arrays, bit for bit. The ServerApp packs what it pushes and unpacks what it pulls
(:class:`edge_runtime.federation.server_app.PollingGrid`), so the strategy, ``rounds.json`` and
``global.npz`` see named arrays as before; the ClientApp unpacks what it receives and replies in the
form it received. An unpacked message (no ``-layout`` record) is read as it is.
"""

from __future__ import annotations

import json
from typing import Iterable, Mapping

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, RecordDict

from edge_runtime.federation.grid import DelegatingGrid

LAYOUT_SUFFIX = "-layout"
PACKED_PREFIX = "packed."


def pack(arrays: Mapping[str, np.ndarray]) -> tuple[dict[str, np.ndarray], str]:
    """({``packed.<dtype>``: the arrays of that dtype raveled and concatenated in order}, layout JSON)."""
    layout, groups = [], {}
    for name, value in arrays.items():
        value = np.asarray(value)
        layout.append([name, value.dtype.str, list(value.shape)])
        groups.setdefault(value.dtype.str, []).append(value.ravel())
    packed = {PACKED_PREFIX + np.dtype(dt).name: np.concatenate(parts) for dt, parts in groups.items()}
    return packed, json.dumps(layout)


def unpack(packed: Mapping[str, np.ndarray], layout: str) -> dict[str, np.ndarray]:
    """The named arrays of :func:`pack`; ValueError when ``packed`` does not hold exactly what ``layout`` says."""
    offsets = {key: 0 for key in packed}
    out: dict[str, np.ndarray] = {}
    for name, dtype, shape in json.loads(layout):
        key = PACKED_PREFIX + np.dtype(dtype).name
        if key not in packed:
            raise ValueError(f"packed arrays: no {key!r} for array {name!r}")
        flat = np.asarray(packed[key])
        size = int(np.prod(shape, dtype=np.int64))
        start = offsets[key]
        if flat.dtype != np.dtype(dtype) or start + size > flat.size:
            raise ValueError(f"packed arrays: {key!r} does not hold array {name!r} ({dtype}, shape {shape})")
        out[name] = flat[start:start + size].reshape(shape).copy()
        offsets[key] = start + size
    if any(offsets[key] != np.asarray(packed[key]).size for key in packed):
        raise ValueError("packed arrays: more values than the layout names")
    return out


def is_packed(content: RecordDict) -> bool:
    return any(key.endswith(LAYOUT_SUFFIX) for key in content.config_records)


def pack_content(content: RecordDict) -> None:
    """Replace every ArrayRecord of ``content`` by its packed form and its ``-layout`` ConfigRecord (in place).

    Packing twice changes nothing: a stock strategy sends one RecordDict in all of a phase's messages."""
    for key in list(content.array_records):
        if key + LAYOUT_SUFFIX in content.config_records:
            continue
        packed, layout = pack({name: array.numpy() for name, array in content[key].items()})
        content[key] = ArrayRecord({name: Array(value) for name, value in packed.items()})
        content[key + LAYOUT_SUFFIX] = ConfigRecord({"layout": layout})


def unpack_content(content: RecordDict) -> None:
    """Undo :func:`pack_content` (in place); content that is not packed is left as it is."""
    for layout_key in [k for k in content.config_records if k.endswith(LAYOUT_SUFFIX)]:
        key = layout_key[: -len(LAYOUT_SUFFIX)]
        arrays = unpack({name: array.numpy() for name, array in content[key].items()}, str(content[layout_key]["layout"]))
        content[key] = ArrayRecord({name: Array(value) for name, value in arrays.items()})
        del content[layout_key]


def record_arrays(content: RecordDict, key: str) -> dict[str, np.ndarray]:
    """The named arrays of ArrayRecord ``key`` of ``content``, packed or not."""
    arrays = {name: array.numpy() for name, array in content[key].items()}
    layout_key = key + LAYOUT_SUFFIX
    if layout_key in content.config_records:
        return unpack(arrays, str(content[layout_key]["layout"]))
    return arrays


class PackingGrid(DelegatingGrid):
    """A grid that packs the messages it pushes and unpacks the replies it pulls; the rest is ``grid``'s.

    The deployed ServerApp wraps Flower's grid in it (under :class:`~edge_runtime.federation.server_app.PollingGrid`),
    so the strategy only ever sees named arrays.
    """

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        messages = list(messages)
        for message in messages:
            if message.has_content():
                pack_content(message.content)
        return self.grid.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        replies = list(self.grid.pull_messages(message_ids))
        for reply in replies:
            if reply.has_content():
                unpack_content(reply.content)
        return replies

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        raise NotImplementedError("wrap PackingGrid in server_app.PollingGrid, which sends through push / pull_messages")
