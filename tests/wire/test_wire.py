"""Wire protocol v1 (docs/protocol.md): round trips, one rejection per reason, fuzzing.

Bad messages are built by hand with ``msgpack.packb`` so that the tests pin the byte layout, not
the encoder's opinion of it.  No sockets here (``zmq.Frame`` objects only).
"""

from __future__ import annotations

import math

import msgpack
import numpy as np
import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge_runtime import wire
from edge_runtime.wire import (
    REASONS,
    Ack,
    BadHeader,
    BadMsgpack,
    BadSplit,
    Bye,
    DtypeNotAllowed,
    Error,
    FrameCountMismatch,
    FrameSizeMismatch,
    HeaderTooLarge,
    Hello,
    LabelOutOfRange,
    Limits,
    MessageTooLarge,
    NonFinite,
    Ping,
    Sample,
    SchemaMismatch,
    TensorSpec,
    TooManyDims,
    TooManyTensors,
    UnknownType,
    UnknownVersion,
    Welcome,
    WireError,
    decode,
    encode_ack,
    encode_bye,
    encode_error,
    encode_hello,
    encode_ping,
    encode_sample,
    encode_welcome,
    schema_of,
)

ALL_DTYPES = ("float32", "float16", "uint8", "int16", "int32", "int64")
SCHEMA = {"audio": TensorSpec("float32", (-1, 13)), "video": TensorSpec("uint8", (-1, 3, 8, 8))}


def pack(obj) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def unpack(frame) -> object:
    return msgpack.unpackb(bytes(frame), raw=False)


def as_wire(frames) -> list[bytes]:
    """What a receiving socket hands over: independent bytes objects."""
    return [bytes(f) for f in frames]


def sample_header(**over) -> dict:
    h = {"v": 1, "type": "sample", "seq": 7, "ts": 1.5, "label": 3, "split": "train",
         "tensors": [{"name": "audio", "dtype": "float32", "shape": [4, 13]}]}
    h.update(over)
    return h


def audio(t: int = 4) -> np.ndarray:
    return np.arange(t * 13, dtype=np.float32).reshape(t, 13) / 7


def av_sample(seq: int = 5, label: int | None = 2, split: str = "train") -> Sample:
    rng = np.random.default_rng(seq)
    return Sample(
        tensors={"audio": rng.standard_normal((6, 13)).astype(np.float32),
                 "video": rng.integers(0, 256, (2, 3, 8, 8), dtype=np.uint8)},
        label=label, split=split, device="uav-1", seq=seq, ts=123.25)


# ------------------------------------------------------------------------------------------
# round trips
# ------------------------------------------------------------------------------------------


def test_hello_round_trip():
    frames = encode_hello("uav-1", SCHEMA)
    assert len(frames) == 1
    assert unpack(frames[0]) == {
        "v": 1, "type": "hello", "device": "uav-1",
        "schema": {"audio": {"dtype": "float32", "shape": [-1, 13]},
                   "video": {"dtype": "uint8", "shape": [-1, 3, 8, 8]}},
    }
    msg = decode(as_wire(frames))
    assert msg == Hello("uav-1", SCHEMA)


def test_sample_round_trip_all_dtypes_bit_exact_and_zero_copy():
    rng = np.random.default_rng(0)
    tensors = {}
    for i, dt in enumerate(ALL_DTYPES):
        shape = (3, 2, i + 1)
        if np.dtype(dt).kind == "f":
            a = rng.standard_normal(shape).astype(dt)
            a.flat[0] = -0.0
            a.flat[1] = np.finfo(dt).tiny / 2  # subnormal
            a.flat[2] = np.finfo(dt).max
        else:
            info = np.iinfo(dt)
            a = rng.integers(info.min, info.max, shape, dtype=dt, endpoint=True)
        tensors[f"t_{dt}"] = a
    s = Sample(tensors=tensors, label=None, split="eval", device="d", seq=0, ts=2)
    frames = encode_sample(s)
    assert len(frames) == 1 + len(tensors)
    assert unpack(frames[0]) == {
        "v": 1, "type": "sample", "seq": 0, "ts": 2.0, "label": None, "split": "eval",
        "tensors": [{"name": n, "dtype": a.dtype.name, "shape": list(a.shape)} for n, a in tensors.items()],
    }
    # encoder: frames are views of the arrays (no copy), in dict order
    for f, a in zip(frames[1:], tensors.values()):
        assert isinstance(f, memoryview)
        assert np.shares_memory(np.frombuffer(f, np.uint8), a)

    wire_frames = as_wire(frames)
    out = decode(wire_frames, device="d", num_classes=10)
    assert isinstance(out, Sample)
    assert (out.seq, out.ts, out.label, out.split, out.device) == (0, 2.0, None, "eval", "d")
    assert list(out.tensors) == list(tensors)
    for (name, a), f in zip(tensors.items(), wire_frames[1:]):
        b = out.tensors[name]
        assert b.dtype == a.dtype and b.shape == a.shape
        assert b.tobytes() == a.tobytes()  # bit-exact (NaN-free, -0.0, subnormals)
        assert np.shares_memory(b, np.frombuffer(f, np.uint8))  # decoder: zero copy


def test_sample_round_trip_with_schema_and_zmq_frames():
    s = av_sample()
    assert schema_of(s) == SCHEMA
    frames = [zmq.Frame(bytes(f)) for f in encode_sample(s)]
    out = decode(frames, schema=SCHEMA, num_classes=10, device="uav-1")
    assert out.key == ("uav-1", 5) and out.label == 2 and out.split == "train" and out.ts == 123.25
    for name, a in s.tensors.items():
        np.testing.assert_array_equal(out.tensors[name], a)
    assert np.shares_memory(out.tensors["video"], np.frombuffer(frames[2].buffer, np.uint8))


def test_encode_sample_makes_contiguous_little_endian():
    a = np.asfortranarray(audio(5)).astype(">f4")
    s = Sample(tensors={"audio": a}, label=1, seq=0)
    frames = encode_sample(s)
    assert unpack(frames[0])["tensors"] == [{"name": "audio", "dtype": "float32", "shape": [5, 13]}]
    assert bytes(frames[1]) == np.ascontiguousarray(a, dtype="<f4").tobytes()
    out = decode(as_wire(frames))
    np.testing.assert_array_equal(out.tensors["audio"], a)


def test_encode_sample_needs_a_seq():
    with pytest.raises(ValueError, match="seq"):
        encode_sample(Sample(tensors={"audio": audio()}, label=1))  # seq defaults to -1


def test_ping_bye_round_trip():
    assert unpack(encode_ping()[0]) == {"v": 1, "type": "ping"}
    assert unpack(encode_bye()[0]) == {"v": 1, "type": "bye"}
    assert decode(as_wire(encode_ping())) == Ping()
    assert decode(as_wire(encode_bye())) == Bye()


def test_welcome_round_trip():
    frames = encode_welcome(credit=32, num_classes=10, schema=SCHEMA, next_seq=41)
    assert unpack(frames[0]) == {
        "v": 1, "type": "welcome", "credit": 32, "num_classes": 10,
        "schema": {"audio": {"dtype": "float32", "shape": [-1, 13]},
                   "video": {"dtype": "uint8", "shape": [-1, 3, 8, 8]}},
        "next_seq": 41,
    }
    assert decode(as_wire(frames), direction="to_device") == Welcome(32, 10, SCHEMA, 41)


def test_ack_round_trip():
    acks = [(3, "admitted"), (4, "invalid:nan_inf"), (5, "eval")]
    frames = encode_ack(acks, credit=16)
    assert unpack(frames[0]) == {"v": 1, "type": "ack",
                                 "acks": [[3, "admitted"], [4, "invalid:nan_inf"], [5, "eval"]],
                                 "credit": 16}
    assert decode(as_wire(frames), direction="to_device") == Ack(acks, 16)


def test_error_round_trip():
    for seq in (None, 9):
        frames = encode_error(seq, "bad_msgpack", "frame 0 is not msgpack")
        assert unpack(frames[0]) == {"v": 1, "type": "error", "seq": seq, "code": "bad_msgpack",
                                     "msg": "frame 0 is not msgpack"}
        assert decode(as_wire(frames), direction="to_device") == Error(seq, "bad_msgpack",
                                                                       "frame 0 is not msgpack")


def test_direction_is_enforced_and_model_is_reserved():
    with pytest.raises(UnknownType):
        decode(as_wire(encode_sample(av_sample())), direction="to_device")
    with pytest.raises(UnknownType):
        decode(as_wire(encode_ack([], 1)), direction="to_node")
    with pytest.raises(UnknownType, match="reserved"):
        decode([pack({"v": 1, "type": "model"})], direction="to_device")


def test_unknown_extra_header_fields_are_ignored():
    out = decode([pack(sample_header(future="x")), audio().tobytes()])
    assert out.seq == 7


def test_empty_tensor_and_label_none():
    h = sample_header(label=None, tensors=[{"name": "audio", "dtype": "float32", "shape": [0, 13]}])
    out = decode([pack(h), b""], schema={"audio": TensorSpec("float32", (-1, 13))}, num_classes=2)
    assert out.tensors["audio"].shape == (0, 13) and out.label is None


# ------------------------------------------------------------------------------------------
# rejections: one case per reason, built by hand
# ------------------------------------------------------------------------------------------


def _t(name="audio", dtype="float32", shape=(4, 13)):
    return {"name": name, "dtype": dtype, "shape": list(shape)}


BIG = 16 * 1024 * 1024

REJECTIONS = {
    # code: (exception class, frames, decode kwargs, expected seq)
    "bad_msgpack": (BadMsgpack, [b"\xc1"], {}, None),
    "bad_header": (BadHeader, [pack(sample_header(seq=True)), audio().tobytes()], {}, None),
    "unknown_version": (UnknownVersion, [pack(sample_header(v=2)), audio().tobytes()], {}, None),
    "unknown_type": (UnknownType, [pack({"v": 1, "type": "dance"})], {}, None),
    "header_too_large": (HeaderTooLarge, [pack(sample_header(pad="x" * 8200)), audio().tobytes()], {}, None),
    "too_many_tensors": (TooManyTensors,
                         [pack(sample_header(tensors=[_t(f"t{i}", shape=[1]) for i in range(9)]))]
                         + [b"\0" * 4] * 9, {}, 7),
    "too_many_dims": (TooManyDims, [pack(sample_header(tensors=[_t(shape=[1] * 7)])), b"\0" * 4], {}, 7),
    "dtype_not_allowed": (DtypeNotAllowed,
                          [pack(sample_header(tensors=[_t(dtype="float64")])), audio().astype("f8").tobytes()],
                          {}, 7),
    "frame_count": (FrameCountMismatch,
                    [pack(sample_header(tensors=[_t(), _t("video", "uint8", [1, 3, 8, 8])])), audio().tobytes()],
                    {}, 7),
    "frame_size": (FrameSizeMismatch, [pack(sample_header()), audio().tobytes()[:-4]], {}, 7),
    "schema_mismatch": (SchemaMismatch,
                        [pack(sample_header(tensors=[_t(shape=[4, 12])])), b"\0" * 4 * 48],
                        {"schema": {"audio": TensorSpec("float32", (-1, 13))}}, 7),
    "nan_inf": (NonFinite, [pack(sample_header()), np.where(audio() > 3, np.nan, audio()).tobytes()], {}, 7),
    "label_out_of_range": (LabelOutOfRange, [pack(sample_header(label=10)), audio().tobytes()],
                           {"num_classes": 10}, 7),
    "message_too_large": (MessageTooLarge, [pack(sample_header(tensors=[_t(shape=[BIG // 4])])), bytes(BIG)],
                          {}, 7),
    "bad_split": (BadSplit, [pack(sample_header(split="test")), audio().tobytes()], {}, 7),
}


def test_every_reason_has_a_rejection_case():
    assert set(REJECTIONS) == set(REASONS)
    assert len(REASONS) == len(set(REASONS)) == 15


@pytest.mark.parametrize("code", list(REJECTIONS))
def test_rejection(code):
    cls, frames, kwargs, seq = REJECTIONS[code]
    with pytest.raises(cls) as ei:
        decode(frames, **kwargs)
    e = ei.value
    assert type(e) is cls and isinstance(e, WireError) and isinstance(e, ValueError)
    assert e.code == cls.code == code
    assert e.verdict == f"invalid:{code}"
    assert e.seq == seq
    assert str(e)


@pytest.mark.parametrize("frame0", [
    b"",
    pack(sample_header()) + b"\x00",            # ExtraData
    b"\x81\xa1v\xa2\xff\xfe",                    # invalid UTF-8 in a str
    b"\x81\x01\x01",                             # int map key (strict_map_key)
    b"\x91" * 5000,                              # nesting deeper than the unpacker's stack
    b"\xdd\xff\xff\xff\xff",                     # array claiming 4G entries
    b"\xd6\xff\x00\x00\x00\x01",                 # ext (timestamp), max_ext_len=0
    b"\x92\x01",                                 # truncated
])
def test_bad_msgpack_variants(frame0):
    with pytest.raises(BadMsgpack) as ei:
        decode([frame0])
    assert ei.value.seq is None and ei.value.code == "bad_msgpack"


@pytest.mark.parametrize("header, field, seq", [
    ([1, 2], "map", None),
    ({"type": "ping"}, "'v'", None),
    ({"v": True, "type": "ping"}, "'v'", None),
    ({"v": 1, "type": 3}, "'type'", None),
    (sample_header(seq=-1), "'seq'", None),
    (sample_header(seq="7"), "'seq'", None),
    (sample_header(ts="now"), "'ts'", 7),
    (sample_header(ts=False), "'ts'", 7),
    (sample_header(label=1.0), "'label'", 7),
    (sample_header(label=True), "'label'", 7),
    (sample_header(split=0), "'split'", 7),
    (sample_header(tensors={"audio": 1}), "'tensors'", 7),
    (sample_header(tensors=[_t(shape=[4, -13])]), "tensors[0].shape", 7),
    (sample_header(tensors=[_t(), _t()]), "tensors[1].name", 7),
    (sample_header(tensors=[{"name": "audio", "shape": [4, 13]}]), "tensors[0].dtype", 7),
])
def test_bad_header_names_the_field(header, field, seq):
    with pytest.raises(BadHeader, match=field.replace("[", r"\[").replace("]", r"\]")) as ei:
        decode([pack(header), audio().tobytes()])
    assert ei.value.seq == seq


def test_label_without_num_classes_must_still_be_non_negative():
    with pytest.raises(LabelOutOfRange) as ei:
        decode([pack(sample_header(label=-1)), audio().tobytes()])
    assert ei.value.seq == 7
    assert decode([pack(sample_header(label=10**6)), audio().tobytes()]).label == 10**6


def test_message_too_large_without_readable_header_has_no_seq():
    with pytest.raises(MessageTooLarge) as ei:
        decode([b"\xc1", bytes(BIG)])
    assert ei.value.seq is None
    small = Limits(max_message_bytes=100)
    with pytest.raises(MessageTooLarge) as ei:
        decode([pack(sample_header()), audio().tobytes()], limits=small)
    assert ei.value.seq == 7


@pytest.mark.parametrize("tensors, frames, schema, cls", [
    # dims are checked before dtypes, dtypes before frame count, count before sizes
    ([_t(dtype="float64", shape=[1] * 7)], [b""], None, TooManyDims),
    ([_t(dtype="complex64")], [], None, DtypeNotAllowed),
    ([_t(), _t("video", "uint8", [2])], [b"", b""], None, FrameSizeMismatch),
    ([_t(shape=[1, 13])], [b"\0" * 52, b""], None, FrameCountMismatch),
    # sizes before schema, schema before NaN
    ([_t(name="other")], [b"\0"], SCHEMA, FrameSizeMismatch),
    ([_t(name="audio", dtype="float16", shape=[2, 13])], [np.full(26, np.inf, np.float16).tobytes()],
     {"audio": TensorSpec("float32", (-1, 13))}, SchemaMismatch),
    ([_t(name="audio")], [audio().tobytes()], SCHEMA, SchemaMismatch),  # "video" missing
])
def test_validation_order(tensors, frames, schema, cls):
    with pytest.raises(cls) as ei:
        decode([pack(sample_header(tensors=tensors)), *frames], schema=schema)
    assert ei.value.seq == 7


def test_nan_checked_before_label_and_float16_inf():
    bad = np.full((4, 13), np.inf, np.float16)
    h = sample_header(label=99, tensors=[_t(dtype="float16")])
    with pytest.raises(NonFinite):
        decode([pack(h), bad.tobytes()], num_classes=10)


@pytest.mark.parametrize("header, frames, cls", [
    ({"v": 1, "type": "hello", "device": "d" * 65, "schema": {}}, [], BadHeader),
    ({"v": 1, "type": "hello", "device": "", "schema": {}}, [], BadHeader),
    ({"v": 1, "type": "hello", "device": "ü" * 33, "schema": {}}, [], BadHeader),  # 66 bytes
    ({"v": 1, "type": "hello", "device": "d"}, [], BadHeader),
    ({"v": 1, "type": "hello", "device": "d", "schema": {f"m{i}": {"dtype": "uint8", "shape": [1]}
                                                         for i in range(9)}}, [], TooManyTensors),
    ({"v": 1, "type": "hello", "device": "d", "schema": {"a": {"dtype": "uint8", "shape": [-1] * 7}}},
     [], TooManyDims),
    ({"v": 1, "type": "hello", "device": "d", "schema": {"a": {"dtype": "float64", "shape": [-1]}}},
     [], DtypeNotAllowed),
    ({"v": 1, "type": "hello", "device": "d", "schema": {"a": {"dtype": "uint8", "shape": [-2]}}},
     [], BadHeader),
    ({"v": 1, "type": "ping"}, [b"x"], FrameCountMismatch),
    ({"v": 1, "type": "bye"}, [b""], FrameCountMismatch),
])
def test_hello_ping_bye_rejections(header, frames, cls):
    with pytest.raises(cls) as ei:
        decode([pack(header), *frames])
    assert ei.value.seq is None


@pytest.mark.parametrize("header, cls", [
    ({"v": 1, "type": "ack", "acks": [[1, "admitted"], [2]], "credit": 3}, BadHeader),
    ({"v": 1, "type": "ack", "acks": [[True, "admitted"]], "credit": 3}, BadHeader),
    ({"v": 1, "type": "ack", "acks": [], "credit": -1}, BadHeader),
    ({"v": 1, "type": "welcome", "credit": 1, "num_classes": 2, "schema": [], "next_seq": 0}, BadHeader),
    ({"v": 1, "type": "welcome", "credit": 1, "num_classes": 2, "schema": {}}, BadHeader),
    ({"v": 1, "type": "error", "code": "x", "msg": "y"}, BadHeader),  # seq must be present (may be null)
    ({"v": 1, "type": "error", "seq": None, "code": 1, "msg": "y"}, BadHeader),
    ({"v": 3, "type": "ack", "acks": [], "credit": 1}, UnknownVersion),
])
def test_to_device_rejections(header, cls):
    with pytest.raises(cls):
        decode([pack(header)], direction="to_device")


# ------------------------------------------------------------------------------------------
# fuzzing: decode returns a message or raises WireError, never anything else
# ------------------------------------------------------------------------------------------

MESSAGE_TYPES = (Hello, Sample, Ping, Bye, Welcome, Ack, Error)

leaves = (st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats()
          | st.text(max_size=8) | st.binary(max_size=8))
msgpack_objs = st.recursive(
    leaves, lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=6), c, max_size=4),
    max_leaves=16)


def near(valid):
    """Mostly ``valid``, sometimes any msgpack object: reaches the deep checks and the shallow ones."""
    return st.integers(0, 31).flatmap(lambda k: msgpack_objs if k == 7 else valid)


def drop_one_key(strategy):
    return st.tuples(strategy, st.integers(0, 15)).flatmap(
        lambda hk: st.just(hk[0]) if hk[1] != 7 else st.sampled_from(sorted(hk[0])).map(
            lambda k: {q: v for q, v in hk[0].items() if q != k}))


def base(mtype, **fields):
    return drop_one_key(st.fixed_dictionaries(
        {"v": near(st.just(1)), "type": near(st.just(mtype)), **fields},
        optional={"extra": msgpack_objs}))


tensor_names = st.sampled_from(["audio", "video", "a", "b", "c", "d", "e", "f", "g"])
dtype_names = st.sampled_from(ALL_DTYPES + ("float64", "<f4"))
entries = st.fixed_dictionaries({
    "name": near(tensor_names), "dtype": near(dtype_names),
    "shape": near(st.lists(st.integers(0, 4), max_size=4) | st.lists(st.integers(-1, 1), max_size=8)),
})
wire_schema = st.dictionaries(tensor_names | st.text(max_size=3), st.fixed_dictionaries(
    {"dtype": near(dtype_names), "shape": near(st.lists(st.integers(-2, 4), max_size=7))}), max_size=9)
headers = st.one_of(
    base("sample", seq=near(st.integers(0, 10)), ts=near(st.floats() | st.integers(-5, 5)),
         label=near(st.none() | st.integers(-1, 11)), split=near(st.sampled_from(["train", "eval", "train", "eval", "x"])),
         tensors=near(st.lists(entries, max_size=3, unique_by=lambda e: repr(e["name"]))
                      | st.lists(entries, min_size=8, max_size=9, unique_by=lambda e: repr(e["name"])))),
    base("hello", device=near(st.text(max_size=3) | st.text(min_size=30, max_size=70)), schema=near(wire_schema)),
    base("ping"), base("bye"),
    base("welcome", credit=near(st.integers(-1, 5)), num_classes=near(st.integers(-1, 5)),
         schema=near(wire_schema), next_seq=near(st.integers(-1, 5))),
    base("ack", acks=near(st.lists(near(st.tuples(st.integers(-1, 5), st.text(max_size=5)).map(list)),
                                   max_size=3)), credit=near(st.integers(-1, 5))),
    base("error", seq=near(st.none() | st.integers(-1, 5)), code=near(st.text(max_size=5)),
         msg=near(st.text(max_size=5))),
    base("model"),
)
frame0s = st.one_of(st.binary(max_size=64), msgpack_objs.map(pack), *[headers.map(pack)] * 6)


def _exact_frames(header, data):
    """Frames of exactly the declared sizes where that is computable, so deeper checks run."""
    out = []
    tensors = header.get("tensors")
    for ent in tensors if isinstance(tensors, list) else []:
        n = 4
        try:
            shape = ent["shape"]
            if all(type(d) is int for d in shape):
                n = np.dtype(ent["dtype"]).itemsize * math.prod(shape)
        except Exception:
            pass
        out.append(data.draw(st.binary(min_size=n, max_size=n)) if 0 <= n <= 512 else b"")
    return out


def fuzz_case(data, frame0, extra, wrong_direction, with_schema, num_classes) -> str:
    """Decode one fuzzed message; returns the outcome (message type or error code)."""
    frames = [frame0, *extra]
    try:
        header = msgpack.unpackb(frame0, raw=False)
    except Exception:
        header = None
    header = header if isinstance(header, dict) else {}
    if data.draw(st.sampled_from([True, True, False])):  # mostly: frames of the declared sizes
        frames = [frame0, *_exact_frames(header, data)]
    direction = "to_device" if header.get("type") in wire.TO_DEVICE_TYPES else "to_node"
    if wrong_direction:
        direction = "to_node" if direction == "to_device" else "to_device"
    schema = None
    if with_schema:  # declared schema: the message's own tensors where readable (so it can match)
        schema = {"audio": TensorSpec("float32", (-1, -1)), "video": TensorSpec("uint8", (-1,))}
        try:
            schema = {e["name"]: TensorSpec(e["dtype"], tuple(e["shape"])) for e in header["tensors"]}
        except Exception:
            pass
    try:
        msg = decode(frames, direction=direction, schema=schema, num_classes=num_classes)
    except WireError as e:
        assert e.code in REASONS
        assert e.seq is None or (isinstance(e.seq, int) and e.seq >= 0)
        return e.code
    assert isinstance(msg, MESSAGE_TYPES)
    if isinstance(msg, Sample):
        assert msg.split in ("train", "eval") and msg.seq >= 0
        for a in msg.tensors.values():
            assert a.dtype.kind not in "fc" or np.isfinite(a).all()
    return type(msg).__name__


@pytest.mark.slow
@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data(), frame0=frame0s, extra=st.lists(st.binary(max_size=48), max_size=4),
       wrong_direction=st.integers(0, 9).map(lambda k: k == 7), with_schema=st.booleans(),
       num_classes=st.none() | st.integers(0, 10))
def test_fuzz_decode_never_raises_anything_but_wire_error(data, frame0, extra, wrong_direction,
                                                          with_schema, num_classes):
    fuzz_case(data, frame0, extra, wrong_direction, with_schema, num_classes)


@settings(max_examples=60, deadline=None)
@given(seq=st.integers(0, 2**63 - 1), label=st.none() | st.integers(0, 9), split=st.sampled_from(["train", "eval"]),
       ts=st.floats(allow_nan=False), t=st.integers(0, 5), dtype=st.sampled_from(ALL_DTYPES), seed=st.integers(0, 99))
def test_fuzz_sample_round_trip(seq, label, split, ts, t, dtype, seed):
    raw = np.random.default_rng(seed).integers(0, 256, t * 3 * np.dtype(dtype).itemsize, dtype=np.uint8)
    a = raw.view(dtype).reshape(t, 3)
    if a.dtype.kind == "f":
        a = np.where(np.isfinite(a), a, 0).astype(dtype)
    s = Sample(tensors={"x": a}, label=label, split=split, seq=seq, ts=ts)
    out = decode(as_wire(encode_sample(s)), schema=schema_of(s), num_classes=10)
    assert (out.seq, out.label, out.split, out.ts) == (seq, label, split, ts)
    assert out.tensors["x"].tobytes() == a.tobytes() and out.tensors["x"].dtype == a.dtype


def test_encode_sample_accepts_numpy_scalars():
    s = Sample(tensors={"audio": audio()}, label=np.int64(4), seq=np.int32(9), ts=np.float32(0.5))
    h = unpack(encode_sample(s)[0])
    assert (h["seq"], h["label"], h["ts"]) == (9, 4, 0.5)
    assert type(h["seq"]) is int and type(h["label"]) is int
