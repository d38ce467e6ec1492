"""``/metrics`` under unfinished requests (issue 24 G13): a connection cap and a request deadline.

Before, ``prometheus_client.start_http_server`` gave every connection a thread of its own and no
timeout: 400 unfinished requests held 400 threads and 400 descriptors for as long as the peers liked.
Now at most ``node.metrics_max_connections`` connections are served at once (one more is closed as
soon as it is accepted) and a request must arrive within ``node.metrics_timeout_s`` in all.
"""

from __future__ import annotations

import os
import socket
import time
import urllib.request
from pathlib import Path

import pytest

from edge_runtime.ops.metrics import NodeMetrics
from tests.support.nodeproc import NodeProcess

PARTIAL = b"GET /metrics HTTP/1.1\r\nHost: node\r\n"  # no blank line: the request never ends


def _threads(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _closed_by_peer(sock: socket.socket) -> bool:
    """True once the node closed ``sock`` (EOF or reset); False while it is still open."""
    sock.setblocking(False)
    try:
        return sock.recv(1) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        return resp.read().decode()


@pytest.mark.slow
def test_g13_unfinished_metrics_requests_hold_bounded_threads_and_descriptors(tmp_path: Path):
    cap, attackers = 3, 40
    node = NodeProcess(tmp_path, {"node": {"metrics_port": 0, "metrics_max_connections": cap, "metrics_timeout_s": 3.0}}).start()
    socks: list[socket.socket] = []
    try:
        pid, port = node.proc.pid, node.info["metrics_port"]
        assert "edge_samples_received_total" in _scrape(port)
        base_threads, base_fds = _threads(pid), _fds(pid)
        for _ in range(attackers):
            s = socket.create_connection(("127.0.0.1", port), timeout=10)
            s.sendall(PARTIAL)
            socks.append(s)
        # The node accepts every connection; all but `cap` are closed at once, the rest when their deadline passes.
        most_threads, most_fds, closed = 0, 0, set()
        deadline = time.monotonic() + 60
        while len(closed) < attackers - cap and time.monotonic() < deadline:
            most_threads, most_fds = max(most_threads, _threads(pid)), max(most_fds, _fds(pid))
            closed |= {i for i, s in enumerate(socks) if i not in closed and _closed_by_peer(s)}
            time.sleep(0.05)
        assert len(closed) >= attackers - cap, f"only {len(closed)} of {attackers} unfinished requests were closed"
        assert most_threads <= base_threads + cap + 1, (base_threads, most_threads)
        assert most_fds <= base_fds + cap + 2, (base_fds, most_fds)
        # The `cap` served ones end at node.metrics_timeout_s: none is held for ever.
        deadline = time.monotonic() + 60
        while len(closed) < attackers and time.monotonic() < deadline:
            closed |= {i for i, s in enumerate(socks) if i not in closed and _closed_by_peer(s)}
            time.sleep(0.1)
        assert len(closed) == attackers, "an unfinished /metrics request was held past node.metrics_timeout_s"
        assert "edge_metrics_connections_refused_total" in _scrape(port)  # a normal scrape answers again
        assert node.proc.poll() is None
    finally:
        for s in socks:
            s.close()
        code = node.stop()
    assert code == 0, node.log()


def test_metrics_request_trickled_a_byte_at_a_time_ends_at_the_deadline():
    """The timeout bounds the whole request, not each read: a peer sending one byte every 0.2 s is still closed."""
    metrics = NodeMetrics()
    port = metrics.serve(0, "127.0.0.1", timeout_s=1.0, max_connections=2)
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            deadline = time.monotonic() + 30
            closed = False
            for byte in (PARTIAL * 100):
                if time.monotonic() > deadline:
                    break
                try:
                    s.sendall(bytes([byte]))
                except OSError:
                    closed = True
                    break
                if _closed_by_peer(s):
                    closed = True
                    break
                s.setblocking(True)
                time.sleep(0.2)
            assert closed, "a trickled request kept its connection past node.metrics_timeout_s"
        assert "edge_samples_received_total" in _scrape(port)
    finally:
        metrics.close()


@pytest.mark.parametrize("bad", [{"metrics_max_connections": 0}, {"metrics_timeout_s": 0}])
def test_metrics_bounds_are_validated(bad):
    from edge_runtime.core.config import ConfigError, config_from_dict

    with pytest.raises(ConfigError, match=f"node.{next(iter(bad))}"):
        config_from_dict({"node": bad})
