"""The wire and the node's control channel share one framing (edge_runtime.core.codec).

The expected bytes below were produced by the encoders as they were before the framing moved into
the codec: a peer built against the earlier code reads every message unchanged. The control
channel keeps its contract: anything malformed is ``ControlError("bad_request", ...)``, and its
server answers it over ZeroMQ (loopback) and keeps serving.
"""

from __future__ import annotations

import msgpack
import numpy as np
import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge_runtime import wire
from edge_runtime.core.sample import Sample, TensorSpec
from edge_runtime.federation import control
from edge_runtime.federation.control import ControlClient, ControlError, ControlServer

SCHEMA = {"a": TensorSpec("float32", (-1, 2))}
SAMPLE = Sample({"a": np.array([[1.5, -2.0]], dtype=">f4"), "v": np.array([1, 2, 3], np.uint8)},
                label=2, split="eval", device="d", seq=5, ts=0.5)
PUT_ARRAYS = {"model.w": np.array([[1.0, 2.0]], ">f8"), "proto.counts": np.array([7], np.int64), "m": np.array([True])}

WIRE_GOLDEN = {
    "sample": (lambda: wire.encode_sample(SAMPLE), [
        "87a17601a474797065a673616d706c65a373657105a27473cb3fe0000000000000a56c6162656c02a573706c6974a46576616c"
        "a774656e736f72739283a46e616d65a161a56474797065a7666c6f61743332a5736861706592010283a46e616d65a176a56474"
        "797065a575696e7438a573686170659103",
        "0000c03f000000c0",
        "010203"]),
    "hello": (lambda: wire.encode_hello("uav-1", SCHEMA), [
        "84a17601a474797065a568656c6c6fa6646576696365a57561762d31a6736368656d6181a16182a56474797065a7666c6f6174"
        "3332a5736861706592ff02"]),
    "ack": (lambda: wire.encode_ack([(3, "admitted"), (4, "invalid:nan_inf")], 16), [
        "84a17601a474797065a361636ba461636b73929203a861646d69747465649204af696e76616c69643a6e616e5f696e66a66372"
        "6564697410"]),
    "welcome": (lambda: wire.encode_welcome(32, 10, SCHEMA, 41), [
        "86a17601a474797065a777656c636f6d65a663726564697420ab6e756d5f636c61737365730aa6736368656d6181a16182a564"
        "74797065a7666c6f61743332a5736861706592ff02a86e6578745f73657129"]),
    "error": (lambda: wire.encode_error(None, "bad_msgpack", "x"), [
        "85a17601a474797065a56572726f72a3736571c0a4636f6465ab6261645f6d73677061636ba36d7367a178"]),
    "ping": (wire.encode_ping, ["82a17601a474797065a470696e67"]),
    "bye": (wire.encode_bye, ["82a17601a474797065a3627965"]),
}

CONTROL_GOLDEN = {
    "put": (lambda: control.encode({"type": "put", "round": 3, "proximal_mu": 0.25}, PUT_ARRAYS), [
        "85a474797065a3707574a5726f756e6403ab70726f78696d616c5f6d75cb3fd0000000000000a66172726179739383a46e616d"
        "65a76d6f64656c2e77a56474797065a7666c6f61743634a5736861706592010283a46e616d65ac70726f746f2e636f756e7473"
        "a56474797065a5696e743634a57368617065910183a46e616d65a16da56474797065a4626f6f6ca573686170659101a17601",
        "000000000000f03f0000000000000040",
        "0700000000000000",
        "01"]),
    "status": (lambda: control.encode({"type": "status"}), ["82a474797065a6737461747573a17601"]),
    "error": (lambda: control.error_frames("mismatch", "array 'x'"), [
        "84a474797065a56572726f72a4636f6465a86d69736d61746368a36d7367a9617272617920277827a17601"]),
}


@pytest.mark.parametrize("name", list(WIRE_GOLDEN))
def test_wire_encoders_send_the_same_bytes_as_before(name):
    make, want = WIRE_GOLDEN[name]
    assert [bytes(f).hex() for f in make()] == want


@pytest.mark.parametrize("name", list(CONTROL_GOLDEN))
def test_control_messages_are_the_same_bytes_as_before(name):
    make, want = CONTROL_GOLDEN[name]
    frames = make()
    assert all(type(f) is bytes for f in frames)
    assert [f.hex() for f in frames] == want


def test_control_round_trip_keeps_values_and_gives_read_only_arrays():
    header, arrays = control.decode(control.encode({"type": "put", "round": 3}, PUT_ARRAYS))
    assert header["type"] == "put" and header["round"] == 3 and header["v"] == 1
    assert list(arrays) == list(PUT_ARRAYS)
    for name, a in PUT_ARRAYS.items():
        assert arrays[name].dtype == a.dtype.newbyteorder("<") and np.array_equal(arrays[name], a)
        assert not arrays[name].flags.writeable


def _control_frames(specs, frames, **over):
    header = {"type": "put", "arrays": specs, "v": 1}
    header.update(over)
    return [msgpack.packb(header), *frames]


HOSTILE_CONTROL = {
    "empty": [],
    "not msgpack": [b"\xc1"],
    "not a map": [msgpack.packb([1, 2])],
    "wrong version": _control_frames([], [], v=2),
    "no type": [msgpack.packb({"v": 1})],
    "frame count": _control_frames([{"name": "a", "dtype": "uint8", "shape": [1]}], []),
    "dtype": _control_frames([{"name": "a", "dtype": "object", "shape": [1]}], [b"\0" * 8]),
    "negative dim": _control_frames([{"name": "a", "dtype": "uint8", "shape": [-1]}], [b""]),
    "huge empty": _control_frames([{"name": "a", "dtype": "float32", "shape": [2**63, 0]}], [b""]),
    "overflowing dims": _control_frames([{"name": "a", "dtype": "float64", "shape": [2**62, 2**62]}], [b""]),
    "non-int dim": _control_frames([{"name": "a", "dtype": "uint8", "shape": ["3"]}], [b"abc"]),
    "float dim": _control_frames([{"name": "a", "dtype": "uint8", "shape": [2.5]}], [b"ab"]),
    "short frame": _control_frames([{"name": "a", "dtype": "int64", "shape": [2]}], [b"\0" * 15]),
    "spec not a map": _control_frames(["a"], [b""]),
}


@pytest.mark.parametrize("case", list(HOSTILE_CONTROL))
def test_control_decode_refuses_malformed_messages_as_bad_request(case):
    with pytest.raises(ControlError) as ei:
        control.decode(HOSTILE_CONTROL[case])
    assert ei.value.code == "bad_request" and ei.value.message


@settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
@given(shape=st.lists(st.integers(-2, 3) | st.integers(2**31, 2**64 - 1) | st.sampled_from([0, 1.5, "2", None, True]),
                      max_size=5),
       dtype=st.sampled_from(sorted(control.ALLOWED_DTYPES) + ["complex64", "f8", 3]), n=st.integers(0, 40))
def test_fuzz_control_decode_raises_only_bad_request(shape, dtype, n):
    frames = _control_frames([{"name": "a", "dtype": dtype, "shape": shape}], [b"\0" * n])
    try:
        header, arrays = control.decode(frames)
    except ControlError as e:
        assert e.code == "bad_request"
        return
    assert arrays["a"].shape == tuple(shape) and arrays["a"].nbytes == n


def test_control_server_answers_malformed_requests_and_keeps_serving(tmp_path):
    status = {"type": "status", "round": 4}
    server = ControlServer("tcp://127.0.0.1:*", {"status": lambda h, a: (status, None)}, records=tmp_path / "c.jsonl")
    endpoint = server.start()
    ctx = zmq.Context()
    try:
        sock = ctx.socket(zmq.REQ)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVTIMEO, 10_000)
        sock.connect(endpoint)
        for case in ("huge empty", "overflowing dims", "non-int dim", "not msgpack"):
            sock.send_multipart(HOSTILE_CONTROL[case])
            header, arrays = control.decode(sock.recv_multipart())
            assert header["type"] == "error" and header["code"] == "bad_request" and arrays == {}
        sock.close(0)
        assert ControlClient(endpoint, timeout_s=10).status() == {**status, "v": 1}
    finally:
        ctx.term()
        server.stop()
    records = control.read_records(tmp_path / "c.jsonl")
    assert [r["code"] for r in records if r["type"] == "error"] == ["bad_request"] * 4
