"""Issue 24: arbitrary wire headers and frames against a live node, while a good device is served.

Unlike ``test_node_hostile.py`` (malformed messages of known kinds, each with the answer it must
get), this test draws messages from the whole space: msgpack maps with the protocol's keys and any
values (huge and negative ints, floats, NaN, strings, bytes, nested lists and maps), tensor entries
with any shapes and dtypes, any number of frames of any sizes, and first frames that are not
msgpack at all; sent with and without a hello, from several connections. Nothing is asserted
about the answers to junk (some get none, e.g. before a hello); what is asserted is that the node
keeps serving a good device between the junk, learns nothing from the junk, and exits 0 on SIGTERM.
"""

from __future__ import annotations

import sqlite3
import time

import msgpack
import numpy as np
import pytest
import torch
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge_runtime.learning.checkpoint import CheckpointManager
from tests.support.nodeclient import Device
from tests.support.nodeproc import NodeProcess

MAX_EXAMPLES = 1500
MAX_SECONDS = 60.0  # the fuzzing stops early when this much time has passed (a bound on the test, not an assertion)
GOOD_EVERY = 25  # the good device sends one sample after this many junk messages

PROTOCOL_KEYS = ["v", "type", "seq", "ts", "label", "split", "tensors", "device", "schema", "credit", "name", "dtype", "shape"]
INTS = st.one_of(st.integers(-3, 20), st.integers(-2**63, 2**64 - 1), st.sampled_from([0, 1, -1, 2**31, 2**32, 2**63 - 1, 2**63, 2**64 - 1]))
SCALARS = st.one_of(st.none(), st.booleans(), INTS, st.floats(allow_nan=True, allow_infinity=True),
                    st.text(max_size=12), st.binary(max_size=12))
VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
                      max_leaves=12)
DTYPES = st.sampled_from(["float32", "float64", "float16", "uint8", "int8", "int16", "int32", "int64", "bool",
                          "complex64", "object", "U4", "<f4", ">f4", "", "float"]) | st.text(max_size=8)
SHAPES = st.lists(st.one_of(st.integers(-2, 40), INTS), max_size=8) | VALUES


@st.composite
def tensor_entry(draw):
    entry = {"name": draw(st.sampled_from(["audio", "video", "waveform", "frames"]) | st.text(max_size=6)),
             "dtype": draw(DTYPES), "shape": draw(SHAPES)}
    if draw(st.booleans()):
        entry[draw(st.text(max_size=4))] = draw(VALUES)
    return entry


GOOD_TENSORS = [{"name": "audio", "dtype": "float32", "shape": [5, 13]}, {"name": "video", "dtype": "float32", "shape": [2, 1, 16, 16]}]
HUGE_SHAPES = st.lists(st.sampled_from([0, 1, 2, 13, 16, -1, 2**31, 2**32, 2**62, 2**63 - 1, 2**63, 2**64 - 1]), min_size=1, max_size=7)


@st.composite
def random_header(draw):
    h = {key: draw(VALUES) for key in draw(st.lists(st.sampled_from(PROTOCOL_KEYS), unique=True, max_size=9))}
    if draw(st.integers(0, 3)):  # mostly a version and a type the node knows, so the junk goes deep
        h["v"] = draw(st.sampled_from([1, 1, 1, 0, 2, "1", 1.0, True]))
        h["type"] = draw(st.sampled_from(["sample", "sample", "sample", "hello", "ping", "bye", "ack", ""]))
    if h.get("type") == "sample" and draw(st.integers(0, 2)):
        h["tensors"] = draw(st.lists(tensor_entry(), max_size=4))
        h.setdefault("seq", draw(st.integers(0, 10_000) | INTS))
    if h.get("type") == "hello" and draw(st.booleans()):
        h["schema"] = {e["name"]: {"dtype": e["dtype"], "shape": e["shape"]} for e in draw(st.lists(tensor_entry(), max_size=3))}
    return h


@st.composite
def mutated_sample_header(draw):
    """A valid sample header with one to three fields changed, removed or added: junk that gets deep into the checks."""
    h = {"v": 1, "type": "sample", "seq": draw(st.integers(0, 5000)), "ts": 0.0, "label": draw(st.integers(0, 9)),
         "split": "train", "tensors": [dict(t) for t in GOOD_TENSORS]}
    for _ in range(draw(st.integers(1, 3))):
        what = draw(st.sampled_from(["field", "drop", "add", "shape", "shape", "shape", "dtype", "tensor"]))
        if what == "field":
            h[draw(st.sampled_from(sorted(h)))] = draw(VALUES)
        elif what == "drop":
            h.pop(draw(st.sampled_from(sorted(h))))
        elif what == "add":
            h[draw(st.text(max_size=6))] = draw(VALUES)
        elif isinstance(h.get("tensors"), list) and h["tensors"]:
            entry = h["tensors"][draw(st.integers(0, len(h["tensors"]) - 1))]
            if not isinstance(entry, dict):  # an earlier "field" change put junk in the list: already junk
                continue
            if what == "shape":
                entry["shape"] = draw(HUGE_SHAPES | SHAPES)
            elif what == "dtype":
                entry["dtype"] = draw(DTYPES)
            else:
                entry[draw(st.sampled_from(["name", "dtype", "shape", "extra"]))] = draw(VALUES)
    return h


def _nbytes(entry) -> int | None:
    """The frame size an entry declares, when it is a small computable number."""
    try:
        n = int(np.prod([int(d) for d in entry["shape"]], dtype=object)) * np.dtype(entry["dtype"]).itemsize
    except Exception:
        return None
    return n if 0 <= n <= 8192 else None


@st.composite
def message(draw):
    """(which connection sends it, the frames)."""
    kind = draw(st.sampled_from(["random", "mutated", "mutated", "mutated", "bytes"]))
    if kind == "bytes":
        return draw(st.integers(0, 3)), [draw(st.binary(max_size=64)), *draw(st.lists(st.binary(max_size=256), max_size=3))]
    h = draw(random_header() if kind == "random" else mutated_sample_header())
    tensors = h.get("tensors") if isinstance(h.get("tensors"), list) else []
    frames = []
    for entry in tensors:  # frames of the declared sizes where those are computable, so the decoder gets past the sizes
        n = _nbytes(entry) if isinstance(entry, dict) else None
        frames.append(draw(st.binary(min_size=n, max_size=n)) if n is not None and draw(st.integers(0, 4)) else draw(st.binary(max_size=512)))
    if draw(st.integers(0, 4)) == 0:
        frames = draw(st.lists(st.binary(max_size=2048), max_size=5))
    return draw(st.integers(0, 3)), [msgpack.packb(h), *frames]


def _drain(sock: zmq.Socket) -> None:
    while True:
        try:
            sock.recv_multipart(zmq.NOBLOCK)
        except zmq.Again:
            return


@pytest.mark.slow
def test_live_node_fuzzed_headers_and_frames_keeps_serving_a_good_device(tmp_path):
    node = NodeProcess(tmp_path, {"node": {"frame_size": [16, 16], "batch_window_ms": 5.0, "max_message_bytes": 2**20}}).start()
    ctx = zmq.Context()
    good = Device(ctx, node.endpoint, "good-device")
    fuzzers = [Device(ctx, node.endpoint, f"fuzz-{i}") for i in range(4)]
    try:
        assert good.hello()["type"] == "welcome"
        for dev in fuzzers[:2]:  # two of the four connections are past a hello, two never said one
            assert dev.hello()["type"] == "welcome"
        state = {"sent": 0, "good_seq": 0, "good": {}}
        started = time.monotonic()

        def good_round_trip() -> None:
            seq = state["good_seq"]
            good.sample(seq, label=seq % 10, audio=np.full((5, 13), 0.5, "<f4"), video=np.full((2, 1, 16, 16), 0.25, "<f4"))
            state["good"].update(good.acks({seq}, timeout_ms=60_000))  # raises TimeoutError if the node stopped serving
            state["good_seq"] += 1

        @settings(max_examples=MAX_EXAMPLES, deadline=None, database=None, derandomize=True,
                  suppress_health_check=list(HealthCheck))
        @given(message())
        def send_junk(msg):
            if time.monotonic() - started > MAX_SECONDS:
                return
            which, frames = msg
            sock = fuzzers[which].sock
            try:
                sock.send_multipart(frames, zmq.NOBLOCK)
            except zmq.Again:  # the node is slower than the fuzzer: fine, this is not a flood test
                pass
            state["sent"] += 1
            if state["sent"] % GOOD_EVERY == 0:
                for dev in fuzzers:
                    _drain(dev.sock)
                good_round_trip()
                assert node.proc.poll() is None, f"the node exited:\n{node.log()[-3000:]}"

        send_junk()
        good_round_trip()
        assert node.proc.poll() is None, f"the node exited:\n{node.log()[-3000:]}"
        assert node.stop() == 0, node.log()[-3000:]
    finally:
        good.close()
        for dev in fuzzers:
            dev.close()
        ctx.term()
        node.kill()

    verdicts = state["good"]
    assert state["sent"] >= 200, "too few junk messages sent to mean anything"
    assert len(verdicts) == state["good_seq"] >= state["sent"] // GOOD_EVERY
    assert all(v in ("admitted", "trained", "skipped") for v in verdicts.values()), verdicts
    log = node.log()
    assert "Traceback" not in log, log[-3000:]
    with sqlite3.connect(node.state_dir / "state.db") as db:
        devices = {d for (d,) in db.execute("SELECT DISTINCT device FROM verdicts")}
    assert devices <= {"good-device", "fuzz-0", "fuzz-1"}, f"a connection without a hello got a verdict: {devices}"
    # what junk got learned (arbitrary bytes may by chance form a valid sample) left the model finite
    state_dict, _path = CheckpointManager(node.state_dir / "checkpoints").load_latest()
    tensors = [t for t in _tensors(state_dict) if t.is_floating_point()]
    assert tensors and all(bool(torch.isfinite(t).all()) for t in tensors)


def _tensors(tree):
    if isinstance(tree, torch.Tensor):
        yield tree
    elif isinstance(tree, dict):
        for value in tree.values():
            yield from _tensors(value)
    elif isinstance(tree, (list, tuple)):
        for value in tree:
            yield from _tensors(value)
