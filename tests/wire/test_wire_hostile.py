"""The wire decoder's contract under hostile shapes, dtypes and frame lengths: only WireError escapes.

Shapes numpy cannot build (an axis of 2**63 next to an axis of 0, more axes than numpy has,
extents past the address space) used to reach numpy and raise its ValueError/OverflowError; the
codec now names them first.
"""

from __future__ import annotations

import math

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge_runtime.wire import (
    REASONS,
    DtypeNotAllowed,
    FrameSizeMismatch,
    Limits,
    Sample,
    TooManyDims,
    WireError,
    decode,
)

ALL = frozenset({"float32", "float16", "float64", "uint8", "int16", "int32", "int64", "bool", "complex64"})


def frames_of(tensors: list[dict], frames: list[bytes], **over) -> list[bytes]:
    header = {"v": 1, "type": "sample", "seq": 7, "ts": 0.0, "label": 1, "split": "train", "tensors": tensors}
    header.update(over)
    return [msgpack.packb(header, use_bin_type=True), *frames]


@pytest.mark.parametrize("dtype, shape", [
    ("float32", [2**63, 0]),
    ("uint8", [2**63, 0]),
    ("float32", [2**62, 0]),
    ("int64", [2**64 - 1, 0, 2**64 - 1]),
    ("uint8", [2**40, 2**40, 0]),
    ("uint8", [2**62, 2, 0]),
])
def test_an_empty_frame_for_an_unaddressable_shape_is_a_frame_size_error(dtype, shape):
    with pytest.raises(FrameSizeMismatch) as ei:
        decode(frames_of([{"name": "x", "dtype": dtype, "shape": shape}], [b""]))
    assert ei.value.seq == 7 and ei.value.verdict == "invalid:frame_size"


def test_an_empty_tensor_with_a_huge_addressable_axis_decodes():
    out = decode(frames_of([{"name": "x", "dtype": "uint8", "shape": [2**62, 0]}], [b""]))
    assert isinstance(out, Sample) and out.tensors["x"].shape == (2**62, 0)


def test_more_axes_than_numpy_has_is_too_many_dims_even_under_loose_limits():
    loose = Limits(max_dims=100)
    with pytest.raises(TooManyDims) as ei:
        decode(frames_of([{"name": "x", "dtype": "uint8", "shape": [1] * 40}], [b"\0"]), limits=loose)
    assert ei.value.seq == 7


@pytest.mark.parametrize("name", ["object", "<f4", "f4", "S4", "str"])
def test_a_misconfigured_allowed_dtype_is_still_refused(name):
    limits = Limits(allowed_dtypes={"float32", name})
    with pytest.raises(DtypeNotAllowed) as ei:
        decode(frames_of([{"name": "x", "dtype": name, "shape": [1]}], [b"\0" * 8]), limits=limits)
    assert ei.value.seq == 7


def test_decoded_tensors_are_read_only_even_over_writable_frames():
    frame = bytearray(np.arange(4, dtype="<f4").tobytes())
    out = decode(frames_of([{"name": "x", "dtype": "float32", "shape": [4]}], [frame]))
    assert out.tensors["x"].tolist() == [0, 1, 2, 3] and not out.tensors["x"].flags.writeable


dims = st.one_of(st.integers(0, 3), st.integers(0, 3), st.sampled_from([0, 2**31, 2**32, 2**62, 2**63 - 1, 2**63, 2**64 - 1]),
                 st.integers(2**20, 2**64 - 1))
shapes = st.lists(dims, max_size=7) | st.lists(st.integers(0, 1), min_size=30, max_size=40)
dtypes = st.sampled_from(sorted(ALL) + ["<f4", "object", "S2"])
entries = st.lists(st.fixed_dictionaries({"name": st.sampled_from("abcdef"), "dtype": dtypes, "shape": shapes}),
                   max_size=4, unique_by=lambda e: e["name"])


def _declared(ent: dict) -> int | None:
    """The byte length the entry declares, computed without numpy (None: not a dtype numpy knows)."""
    try:
        return np.dtype(ent["dtype"]).itemsize * math.prod(ent["shape"])
    except TypeError:
        return None


@pytest.mark.slow
@settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
@given(tensors=entries, data=st.data(), loose=st.booleans(), content=st.booleans())
def test_fuzz_hostile_shapes_dtypes_and_frame_lengths_raise_only_wire_errors(tensors, data, loose, content):
    frames = []
    for ent in tensors:
        n = _declared(ent)
        if n is None or n > 512 or data.draw(st.integers(0, 4)) == 0:  # mostly: the declared length
            n = data.draw(st.integers(0, 16))
        frames.append(data.draw(st.binary(min_size=n, max_size=n)))
    limits = Limits(max_dims=64, allowed_dtypes=ALL | {"<f4", "object", "S2"}) if loose else Limits()
    try:
        out = decode(frames_of(tensors, frames), limits=limits, content=content)
    except WireError as e:
        assert e.code in REASONS and e.seq == 7
        return
    assert isinstance(out, Sample)
    for ent, frame in zip(tensors, frames):
        a = out.tensors[ent["name"]]
        assert a.shape == tuple(ent["shape"]) and a.dtype.name == ent["dtype"] and a.tobytes() == frame
