"""DeviceClient against a scripted ROUTER (real zmq on loopback): window, resend, resume, retryable errors."""

from __future__ import annotations

import pytest

import threading
import time

import numpy as np
import zmq

from device_sim.client import ClientConfig, DeviceClient, run_many
from edge_runtime import wire


def _samples(n: int) -> list[wire.Sample]:
    rng = np.random.default_rng(0)
    return [wire.Sample({"audio": rng.normal(size=(4, 13)).astype(np.float32), "video": rng.normal(size=(1, 1, 4, 4)).astype(np.float32)},
                        label=i % 3) for i in range(n)]


def _serve(router: zmq.Socket, script, stop: threading.Event, log: list) -> None:
    while not stop.is_set():
        if not router.poll(50):
            continue
        rid, *frames = router.recv_multipart()
        msg = wire.decode(frames)
        log.append((msg, [bytes(f) for f in frames]))
        for reply in script(msg):
            router.send_multipart([rid, *reply])


def _run(script, n: int, **cfg_over):
    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    stop, log = threading.Event(), []
    t = threading.Thread(target=_serve, args=(router, script, stop, log), daemon=True)
    t.start()
    cfg = ClientConfig(endpoint=f"tcp://127.0.0.1:{port}", device_id="dev", resend_timeout_s=0.3, hello_timeout_s=0.5, **cfg_over)
    schema = wire.schema_of(_samples(1)[0])
    client = DeviceClient(cfg, _samples(n), schema, ctx=ctx)
    summary = client.run(deadline=time.monotonic() + 20)
    stop.set()
    t.join()
    router.close(0)
    ctx.term()
    return summary, client, log


def test_window_resend_same_bytes_and_resume_from_next_seq():
    state = {"dropped": False, "in_flight": set(), "max_in_flight": 0}

    def script(msg):
        if isinstance(msg, wire.Hello):
            return [wire.encode_welcome(3, 10, wire.schema_of(_samples(1)[0]), next_seq=2)]  # seqs 0, 1 decided before
        if isinstance(msg, wire.Sample):
            state["in_flight"].add(msg.seq)
            state["max_in_flight"] = max(state["max_in_flight"], len(state["in_flight"]))
            if msg.seq == 4 and not state["dropped"]:
                state["dropped"] = True  # lose the first copy of seq 4: the client must resend it
                return []
            state["in_flight"].discard(msg.seq)
            return [wire.encode_ack([(msg.seq, "trained")], 3)]
        return []

    summary, client, log = _run(script, 12, max_in_flight=8)
    assert summary.complete and summary.skipped_resume == 2
    assert sorted(client.verdicts) == list(range(2, 12))
    assert state["max_in_flight"] <= 3, "never more unacknowledged samples than the node's credit"
    copies = [frames for msg, frames in log if isinstance(msg, wire.Sample) and msg.seq == 4]
    assert len(copies) == 2 and copies[0] == copies[1], "a resend carries the same seq and the same bytes"
    assert summary.resent >= 1 and summary.sent == 10 and summary.acked == 10


def test_retryable_errors_are_retried_and_no_hello_says_hello_again():
    state = {"hellos": 0, "refused": set()}

    def script(msg):
        if isinstance(msg, wire.Hello):
            state["hellos"] += 1
            return [wire.encode_welcome(4, 10, {}, next_seq=0)]
        if isinstance(msg, wire.Sample):
            if msg.seq == 1 and "nohello" not in state["refused"]:
                state["refused"].add("nohello")  # as after a node restart
                return [wire.encode_error(1, "no_hello", "send hello")]
            if msg.seq == 2 and "busy" not in state["refused"]:
                state["refused"].add("busy")
                return [wire.encode_error(2, "busy", "queue full")]
            return [wire.encode_ack([(msg.seq, "admitted")], 4)]
        return []

    summary, client, _ = _run(script, 6)
    assert summary.complete and client.verdicts == {i: "admitted" for i in range(6)}
    assert state["hellos"] >= 2
    assert summary.errors == {"no_hello": 1, "busy": 1}


def _delayed_router(delay_s: float, answer_after: float | None = None):
    """A scripted node that acks each sample ``delay_s`` after it arrived; after ``answer_after`` s it answers nothing."""
    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    stop, received = threading.Event(), []
    started = time.monotonic()

    def serve():
        due: list[tuple[float, bytes, int]] = []
        while not stop.is_set():
            if router.poll(10):
                rid, *frames = router.recv_multipart()
                msg = wire.decode(frames)
                if isinstance(msg, wire.Hello):
                    router.send_multipart([rid, *wire.encode_welcome(8, 3, {}, next_seq=0)])
                elif isinstance(msg, wire.Sample):
                    received.append((rid, msg.seq))
                    due.append((time.monotonic() + delay_s, rid, msg.seq))
            now = time.monotonic()
            if answer_after is not None and now - started > answer_after:
                due.clear()
            for item in [d for d in due if d[0] <= now]:
                due.remove(item)
                router.send_multipart([item[1], *wire.encode_ack([(item[2], "trained")], 8)])

    t = threading.Thread(target=serve, daemon=True)
    t.start()

    def close():
        stop.set()
        t.join()
        router.close(0)
        ctx.term()

    return f"tcp://127.0.0.1:{port}", received, close


@pytest.mark.slow
def test_deadline_stops_sending_then_waits_for_every_verdict():
    endpoint, received, close = _delayed_router(delay_s=0.4)
    ctx = zmq.Context()
    try:
        cfg = ClientConfig(endpoint=endpoint, device_id="dev", resend_timeout_s=5.0, record_latency=True)
        client = DeviceClient(cfg, _samples(500), wire.schema_of(_samples(1)[0]), ctx=ctx)
        summary = client.run(deadline=time.monotonic() + 1.0)
    finally:
        ctx.term()
        close()
    assert not summary.complete, "the deadline came before the 500 samples"
    assert 0 < summary.sent < 500
    assert summary.acked == summary.sent and summary.unanswered == 0
    assert len(received) == summary.sent, "nothing was sent after the deadline"
    assert len(client.latencies) == summary.acked and min(client.latencies) > 0


@pytest.mark.slow
def test_drain_is_bounded_and_reports_what_stayed_unanswered():
    endpoint, _received, close = _delayed_router(delay_s=0.05, answer_after=0.6)
    ctx = zmq.Context()
    try:
        cfg = ClientConfig(endpoint=endpoint, device_id="dev", resend_timeout_s=5.0, drain_timeout_s=0.5)
        client = DeviceClient(cfg, _samples(500), wire.schema_of(_samples(1)[0]), ctx=ctx)
        summary = client.run(deadline=time.monotonic() + 1.0)
    finally:
        ctx.term()
        close()
    assert summary.unanswered > 0 and summary.unanswered == len(client._unacked)
    assert summary.sent == summary.acked + summary.unanswered
    assert summary.acked == len(client.verdicts)


def test_run_many_drives_many_devices_on_one_poller():
    endpoint, received, close = _delayed_router(delay_s=0.0)
    ctx = zmq.Context()
    try:
        schema = wire.schema_of(_samples(1)[0])
        clients = [DeviceClient(ClientConfig(endpoint=endpoint, device_id=f"d{k}"), _samples(7), schema, ctx=ctx) for k in range(40)]
        summaries = run_many(clients, deadline=time.monotonic() + 30)
    finally:
        ctx.term()
        close()
    assert [s.device for s in summaries] == [f"d{k}" for k in range(40)]
    assert all(s.complete and s.sent == s.acked == 7 for s in summaries)
    assert sorted(received) == sorted((f"d{k}".encode(), seq) for k in range(40) for seq in range(7))
