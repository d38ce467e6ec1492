"""The one framing codec (edge_runtime.core.codec): round trips, and its own errors on hostile input.

Hostile input means headers, dtype names, shapes and frame lengths a peer or a damaged disk can
send; every fault must come out as a CodecError with a reason, never a numpy or msgpack exception.
"""

from __future__ import annotations

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge_runtime.core import codec
from edge_runtime.core.codec import CodecError

NUMERIC = ("bool", "uint8", "int16", "int32", "int64", "float16", "float32", "float64", "complex64")


def reason(excinfo: pytest.ExceptionInfo[CodecError]) -> str:
    assert type(excinfo.value) is CodecError and isinstance(excinfo.value, ValueError)
    assert excinfo.value.reason in codec.REASONS and str(excinfo.value)
    return excinfo.value.reason


# --------------------------------------------------------------------------- writing and reading back


def test_pack_then_read_back_is_bit_exact_read_only_and_zero_copy():
    rng = np.random.default_rng(0)
    arrays = {name: rng.integers(0, 100, (2, i + 1)).astype(name) for i, name in enumerate(NUMERIC)}
    frames = codec.pack({"v": 1, "type": "t"}, arrays, key="arrays")
    header = codec.unpack_header(frames[0])
    assert list(header) == ["v", "type", "arrays"]  # the list goes last: the header's key order is kept
    assert header["arrays"] == [{"name": n, "dtype": a.dtype.name, "shape": list(a.shape)} for n, a in arrays.items()]
    wire = [bytes(f) for f in frames]
    out = codec.to_arrays(codec.read_specs(header["arrays"]), wire[1:])
    assert list(out) == list(arrays)
    for (name, a), frame in zip(arrays.items(), wire[1:]):
        b = out[name]
        assert b.dtype == a.dtype and b.shape == a.shape and b.tobytes() == a.tobytes()
        assert not b.flags.writeable
        assert np.shares_memory(b, np.frombuffer(frame, np.uint8))


def test_array_frames_make_little_endian_c_contiguous_and_copy_only_then():
    native = np.arange(12, dtype=np.float32).reshape(3, 4)
    big = np.asfortranarray(native).astype(">f4")
    specs, frames = codec.array_frames({"native": native, "big": big})
    assert specs == [{"name": "native", "dtype": "float32", "shape": [3, 4]},
                     {"name": "big", "dtype": "float32", "shape": [3, 4]}]
    assert np.shares_memory(np.frombuffer(frames[0], np.uint8), native)  # no copy
    assert bytes(frames[0]) == bytes(frames[1]) == native.astype("<f4").tobytes()


def test_array_frames_refuse_dtypes_without_raw_bytes():
    with pytest.raises(CodecError) as ei:
        codec.array_frames({"o": np.array([object()])})
    assert reason(ei) == "bad_dtype" and "'o'" in str(ei.value)
    with pytest.raises(CodecError) as ei:
        codec.array_frames({"c": np.zeros(2, np.complex64)}, kinds="biuf")
    assert reason(ei) == "bad_dtype"
    assert codec.array_frames({"c": np.zeros(2, np.complex64)})[0][0]["dtype"] == "complex64"


def test_to_array_of_a_writable_buffer_is_a_read_only_view():
    buf = bytearray(np.arange(6, dtype="<i2").tobytes())
    a = codec.to_array("int16", [2, 3], buf)
    assert a.tolist() == [[0, 1, 2], [3, 4, 5]] and not a.flags.writeable
    buf[0] = 9  # a view, not a copy
    assert a[0, 0] == 9


def test_split_payload_cuts_by_specs_and_checks_the_total():
    specs = codec.read_specs([{"name": "a", "dtype": "float32", "shape": [2]},
                              {"name": "b", "dtype": "uint8", "shape": [0, 5]},
                              {"name": "c", "dtype": "int16", "shape": [3]}])
    payload = np.array([1, 2], "<f4").tobytes() + np.array([7, 8, 9], "<i2").tobytes()
    parts = codec.split_payload(payload, specs)
    assert [p.nbytes for p in parts] == [8, 0, 6]
    out = codec.to_arrays(specs, parts)
    assert out["a"].tolist() == [1, 2] and out["b"].shape == (0, 5) and out["c"].tolist() == [7, 8, 9]
    for bad in (payload[:-1], payload + b"\0"):
        with pytest.raises(CodecError) as ei:
            codec.split_payload(bad, specs)
        assert reason(ei) == "frame_size"


# --------------------------------------------------------------------------- headers


@pytest.mark.parametrize("frame0, why", [
    (b"", "bad_msgpack"),
    (msgpack.packb({"v": 1}) + b"\x00", "bad_msgpack"),   # extra data
    (b"\x81\x01\x01", "bad_msgpack"),                    # int map key
    (b"\x91" * 5000, "bad_msgpack"),                     # nesting deeper than the unpacker's stack
    (b"\xdd\xff\xff\xff\xff", "bad_msgpack"),            # array claiming 4G entries
    (b"\xd6\xff\x00\x00\x00\x01", "bad_msgpack"),        # an extension type (timestamp)
    (msgpack.packb([1, 2]), "bad_header"),               # not a map
    (msgpack.packb({"pad": "x" * 8200}), "header_too_large"),
])
def test_unpack_header_refusals(frame0, why):
    with pytest.raises(CodecError) as ei:
        codec.unpack_header(frame0, max_bytes=8192)
    assert reason(ei) == why


def test_unpack_header_accepts_frame_like_objects_and_refuses_others():
    class FrameLike:
        buffer = memoryview(msgpack.packb({"type": "x"}))

    assert codec.unpack_header(FrameLike()) == {"type": "x"}
    with pytest.raises(CodecError) as ei:
        codec.unpack_header(12)
    assert reason(ei) == "bad_header"


# --------------------------------------------------------------------------- dtypes and shapes


@pytest.mark.parametrize("name", NUMERIC)
def test_dtype_of_canonical_numeric_names_is_little_endian(name):
    dt = codec.dtype_of(name)
    assert dt.name == name and dt.byteorder in "<|"


@pytest.mark.parametrize("name", ["f4", "<f4", ">f4", "int", "object", "O", "S5", "U3", "V8", "(2,)f4",
                                  "datetime64", "float32 ", "", "x" * 100, 5, None, ["float32"]])
def test_dtype_of_refuses_aliases_non_numeric_and_non_str(name):
    with pytest.raises(CodecError) as ei:
        codec.dtype_of(name)
    assert reason(ei) == "bad_dtype"


def test_dtype_of_honours_the_allowed_set():
    assert codec.dtype_of("uint8", {"uint8"}).name == "uint8"
    with pytest.raises(CodecError, match="float32") as ei:
        codec.dtype_of("float32", {"uint8"})
    assert reason(ei) == "bad_dtype"


@pytest.mark.parametrize("dtype, shape, want", [
    ("float32", [2, 3], 24),
    ("float32", [], 4),
    ("float32", [0, 13], 0),
    ("uint8", [2**62, 0], 0),            # numpy can build it: it is empty and addressable
    ("uint8", [2**31, 2**31, 0], 0),
    ("float64", (3,), 24),
])
def test_nbytes(dtype, shape, want):
    assert codec.nbytes(codec.dtype_of(dtype), shape) == want


@pytest.mark.parametrize("dtype, shape, why", [
    ("float32", [2**63, 0], "frame_size"),      # empty, yet no array can have that shape
    ("float32", [2**62, 0], "frame_size"),
    ("uint8", [2**63, 0], "frame_size"),
    ("uint8", [2**40, 2**40, 0], "frame_size"),
    ("uint8", [2**62, 2, 0], "frame_size"),
    ("uint8", [2**64 - 1] * 6, "frame_size"),
    ("float32", [-1, 0], "bad_shape"),
    ("float32", [2, -3], "bad_shape"),
    ("float32", [2.0], "bad_shape"),
    ("float32", ["3"], "bad_shape"),
    ("float32", [True], "bad_shape"),
    ("float32", [None], "bad_shape"),
    ("float32", [[2]], "bad_shape"),
    ("float32", 6, "bad_shape"),
    ("float32", "23", "bad_shape"),
    ("float32", None, "bad_shape"),
    ("uint8", [1] * 33, "too_many_dims"),
    ("uint8", [0] * 65, "too_many_dims"),
])
def test_nbytes_and_to_array_refuse_unbuildable_shapes_with_their_own_error(dtype, shape, why):
    dt = codec.dtype_of(dtype)
    with pytest.raises(CodecError) as ei:
        codec.nbytes(dt, shape)
    assert reason(ei) == why
    with pytest.raises(CodecError) as ei:
        codec.to_array(dt, shape, b"")
    assert reason(ei) == why


def test_an_empty_array_with_a_huge_axis_is_built_when_numpy_can_address_it():
    a = codec.to_array("uint8", [2**62, 0], b"")
    assert a.shape == (2**62, 0) and a.size == 0


def test_to_array_frame_length_must_match_exactly():
    for frame in (b"\0" * 23, b"\0" * 25, b""):
        with pytest.raises(CodecError) as ei:
            codec.to_array("float32", [2, 3], frame)
        assert reason(ei) == "frame_size"


@pytest.mark.parametrize("entries, why", [
    ({"a": 1}, "bad_header"),
    ([["a", "float32", [1]]], "bad_header"),
    ([{"dtype": "float32", "shape": [1]}], "bad_header"),                       # no name
    ([{"name": 3, "dtype": "float32", "shape": [1]}], "bad_header"),
    ([{"name": "a", "dtype": "float32", "shape": [1]}] * 2, "bad_header"),      # a repeated name
    ([{"name": "a", "shape": [1]}], "bad_dtype"),
    ([{"name": "a", "dtype": "float64", "shape": [1]}], "bad_dtype"),          # not in allowed
    ([{"name": "a", "dtype": "float32"}], "bad_shape"),
    ([{"name": "a", "dtype": "float32", "shape": [2**63, 0]}], "frame_size"),
])
def test_read_specs_refusals(entries, why):
    with pytest.raises(CodecError) as ei:
        codec.read_specs(entries, allowed={"float32"})
    assert reason(ei) == why


def test_to_arrays_needs_one_frame_per_spec():
    specs = codec.read_specs([{"name": "a", "dtype": "uint8", "shape": [1]}])
    for frames in ([], [b"x", b"y"]):
        with pytest.raises(CodecError) as ei:
            codec.to_arrays(specs, frames)
        assert reason(ei) == "frame_count"


# --------------------------------------------------------------------------- fuzzing

small = st.integers(0, 4)
dims = st.one_of(small, small, small, st.integers(-3, -1), st.integers(2**30, 2**64 - 1),
                 st.sampled_from([2**31, 2**62, 2**63 - 1, 2**63, 2.0, True, "2", None]))
shapes = st.one_of(st.lists(small, max_size=5), st.lists(small, max_size=5), st.lists(dims, max_size=8),
                   st.lists(dims, max_size=8), st.lists(st.integers(0, 1), min_size=28, max_size=36),
                   st.none() | st.text(max_size=3))
dtype_names = st.one_of(st.sampled_from(NUMERIC), st.sampled_from(NUMERIC), st.sampled_from(NUMERIC),
                        st.sampled_from(("f4", "<f4", "object", "S3", "(2,)u1", "float128", "int8")), st.text(max_size=8))


@pytest.mark.slow
@settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
@given(dtype=dtype_names, shape=shapes, data=st.data())
def test_fuzz_to_array_returns_a_matching_array_or_raises_codec_error(dtype, shape, data):
    """Only CodecError escapes; whatever is returned has exactly the declared dtype, shape and bytes."""
    try:
        want = codec.nbytes(codec.dtype_of(dtype), shape)
    except CodecError:
        want = data.draw(st.integers(0, 64))
    n = want if want <= 4096 and data.draw(st.booleans()) else data.draw(st.integers(0, 64))
    frame = data.draw(st.binary(min_size=n, max_size=n))
    try:
        a = codec.to_array(dtype, shape, frame)
    except CodecError as e:
        assert e.reason in codec.REASONS
        return
    assert a.dtype.name == dtype and a.shape == tuple(shape) and a.nbytes == len(frame) == want
    assert a.tobytes() == frame and not a.flags.writeable


@settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
@given(frame0=st.binary(max_size=64) | st.builds(
    lambda h: msgpack.packb(h, use_bin_type=True),
    st.dictionaries(st.text(max_size=4), st.none() | st.integers(-(2**63), 2**64 - 1) | st.text(max_size=4), max_size=4)))
def test_fuzz_unpack_header_returns_a_map_or_raises_codec_error(frame0):
    try:
        header = codec.unpack_header(frame0, max_bytes=48)
    except CodecError as e:
        assert e.reason in ("bad_msgpack", "header_too_large", "bad_header")
        return
    assert isinstance(header, dict) and len(frame0) <= 48
