"""A full disk is a state, not a crash (issue 24 G7).

Before, a periodic checkpoint failing with ENOSPC killed the learner thread (exit 1), a failing ledger
commit did the same, status/history failures were logged every interval, and a node started on a full
disk died with a traceback (exit 1). Now:

* a failing checkpoint, status.json or history.csv is logged once per episode, counted in
  ``edge_disk_errors_total{what}`` / ``edge_disk_failing{what}`` and in status.json's ``disk``, retried
  with backoff, and learning goes on; recovery logs one "disk writable again" line;
* a failing ledger commit holds its micro-batch (no ack before the commit), retried until it succeeds;
* start-up on a full disk is one line naming the folder and the fix, exit 2.

The full disk is injected in-process (``OSError(ENOSPC)`` / SQLite's "database or disk is full") for the
unit tests; the real-process tests put ``node.state_dir`` on a small tmpfs mounted in a private mount
namespace (``unshare -rm``, no root needed where user namespaces are allowed; skipped elsewhere), the
test reaching it through ``/proc/<pid>/root``.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
import zmq

from edge_runtime.core.config import config_from_dict
from edge_runtime.node.daemon import EdgeNode
from edge_runtime.ops.metrics import NodeMetrics
from edge_runtime.ops.observe import NodeObserver
from tests.node.test_node_ledger import CountingLearner
from tests.support.nodeclient import Device
from tests.support.nodeproc import ROOT, NodeProcess
from tests.support.wait import wait_until as _wait

ENOSPC = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))




def _events(caplog, event: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if getattr(r, "event", None) == event]


@pytest.fixture
def node_in_thread(tmp_path):
    started: list[tuple[EdgeNode, threading.Thread]] = []

    def start(**node_cfg) -> EdgeNode:
        cfg = config_from_dict({"node": {"bind": "tcp://127.0.0.1:*", "state_dir": str(tmp_path / "state"), "log_format": "text",
                                         "batch_window_ms": 2.0, "status_every_s": 0.05, "disk_retry_max_s": 0.2, "frame_size": [16, 16],
                                         **node_cfg}})
        node = EdgeNode(cfg, learner=CountingLearner())
        ready = threading.Event()
        thread = threading.Thread(target=node.run, kwargs={"ready": ready}, daemon=True)
        thread.start()
        assert ready.wait(30)
        started.append((node, thread))
        return node

    ctx = zmq.Context()
    yield start, ctx
    ctx.destroy(linger=0)
    for node, thread in started:
        node.request_stop()
        thread.join(60)
        assert not thread.is_alive()


def _four_samples_onto_a_full_disk(ctx, node, full: threading.Event, what: str) -> "Device":
    """A welcomed device sends seqs 0-3 once ``full`` is set; returns when the ledger counted 3 disk errors."""
    dev = Device(ctx, node.endpoint, "dev")
    assert dev.hello()["type"] == "welcome"
    full.set()
    for seq in range(4):
        dev.sample(seq)
    _wait(lambda: node.metrics.registry.get_sample_value("edge_disk_errors_total", {"what": "ledger"}) >= 3, what=what)
    return dev


def test_g7_checkpoint_enospc_is_logged_once_retried_and_learning_goes_on(node_in_thread, caplog):
    start, ctx = node_in_thread
    caplog.set_level(logging.INFO, logger="edge_runtime")
    node = start(checkpoint_every_s=0.05)
    full = threading.Event()
    full.set()
    real_save = node.checkpoints.save
    attempts = []

    def save(state, step):
        if full.is_set():
            attempts.append(step)
            raise ENOSPC
        return real_save(state, step)

    node.checkpoints.save = save  # type: ignore[method-assign]
    dev = Device(ctx, node.endpoint, "dev")
    assert dev.hello()["type"] == "welcome"
    seq = 0
    deadline = time.monotonic() + 60
    while len(attempts) < 3 and time.monotonic() < deadline:  # checkpoints are tried between micro-batches
        dev.sample(seq)
        assert dev.acks({seq}) == {seq: "trained"}  # still learning, still acking, while every checkpoint fails
        seq += 1
        time.sleep(0.02)
    assert len(attempts) >= 3 and node.decided_total == seq
    status = _wait(lambda: _status_disk(node.state_dir).get("failing", {}).get("checkpoint"), what="status.json's disk")
    assert "ENOSPC" in status["error"] and status["errors"] >= 1
    m = node.metrics.registry
    assert m.get_sample_value("edge_disk_errors_total", {"what": "checkpoint"}) >= 3
    assert m.get_sample_value("edge_disk_failing", {"what": "checkpoint"}) == 1
    assert len(_events(caplog, "disk_write_failed")) == 1  # once per episode, not per attempt
    full.clear()
    while not _events(caplog, "disk_writable") and time.monotonic() < deadline + 60:
        dev.sample(seq)
        dev.acks({seq})
        seq += 1
        time.sleep(0.02)
    assert m.get_sample_value("edge_disk_failing", {"what": "checkpoint"}) == 0
    assert list((node.state_dir / "checkpoints").glob("ckpt-*.pt"))
    for seq in range(seq, seq + 5):  # more checkpoints succeed: still one recovery line
        dev.sample(seq)
        dev.acks({seq})
        time.sleep(0.06)
    assert len(_events(caplog, "disk_writable")) == 1 and len(_events(caplog, "disk_write_failed")) == 1
    dev.close()


def _status_disk(state_dir: Path) -> dict:
    try:
        return json.loads((state_dir / "status.json").read_text()).get("disk") or {}
    except (OSError, ValueError):
        return {}


def test_g7_failing_ledger_commit_holds_the_acks_until_it_commits(node_in_thread, caplog):
    start, ctx = node_in_thread
    caplog.set_level(logging.INFO, logger="edge_runtime")
    node = start()
    full = threading.Event()
    real_commit = node.store.commit

    def commit():
        if full.is_set() and node.store.conn.in_transaction:
            raise sqlite3.OperationalError("database or disk is full")  # the transaction stays open, as SQLite leaves it
        real_commit()

    node.store.commit = commit  # type: ignore[method-assign]
    dev = _four_samples_onto_a_full_disk(ctx, node, full, what="three failed commits")
    assert dev.silent(500)  # no ack while the ledger cannot commit
    with sqlite3.connect(node.state_dir / "state.db") as db:
        assert db.execute("SELECT COUNT(*) FROM verdicts").fetchone() == (0,)
    full.clear()
    assert set(dev.acks(set(range(4))).values()) == {"trained"}
    with sqlite3.connect(node.state_dir / "state.db") as db:
        assert db.execute("SELECT COUNT(*) FROM verdicts WHERE device = 'dev'").fetchone() == (4,)
    assert len(_events(caplog, "disk_write_failed")) == 1 and len(_events(caplog, "disk_writable")) == 1
    dev.close()


def test_g7_low_space_holds_a_batch_before_the_learner_writes_it(node_in_thread, caplog):
    """The store's inserts spill into SQLite's WAL before the commit: on a nearly full disk the batch must wait
    before the learner writes anything (else the insert itself fails and the node stops), and be acked once there is room."""
    start, ctx = node_in_thread
    caplog.set_level(logging.INFO, logger="edge_runtime")
    node = start()
    worker = node._worker
    real_free = worker._free_bytes
    full = threading.Event()
    worker._free_bytes = lambda: 100 << 10 if full.is_set() else real_free()  # type: ignore[method-assign]
    dev = _four_samples_onto_a_full_disk(ctx, node, full, what="three waits for room")
    assert node.learner.calls == 0 and not node.learner.seen  # nothing written while there is no room
    assert dev.silent(300)
    full.clear()
    assert set(dev.acks(set(range(4))).values()) == {"trained"}
    assert sum(node.learner.seen.values()) == 4
    assert len(_events(caplog, "disk_writable")) == 1
    dev.close()


def test_g7_commit_rolled_back_by_sqlite_stops_the_node_without_acking(tmp_path, caplog):
    """When SQLite cancels the transaction itself, memory is ahead of the ledger: stop, no ack, a reason."""
    from edge_runtime.node.worker import StateWriteError

    caplog.set_level(logging.INFO, logger="edge_runtime")
    cfg = config_from_dict({"node": {"bind": "tcp://127.0.0.1:*", "state_dir": str(tmp_path / "state"), "log_format": "text",
                                     "batch_window_ms": 2.0, "frame_size": [16, 16]}})
    node = EdgeNode(cfg, learner=CountingLearner())
    real_commit = node.store.commit
    full = threading.Event()

    def commit():
        if full.is_set() and node.store.conn.in_transaction:
            node.store.conn.execute("ROLLBACK")  # what SQLite does when the WAL cannot grow at COMMIT
            raise sqlite3.OperationalError("database or disk is full")
        real_commit()

    node.store.commit = commit  # type: ignore[method-assign]
    failure: list[BaseException] = []
    ready = threading.Event()

    def run() -> None:
        try:
            node.run(ready=ready)
        except BaseException as err:
            failure.append(err)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert ready.wait(30)
    ctx = zmq.Context()
    try:
        dev = Device(ctx, node.endpoint, "dev")
        assert dev.hello()["type"] == "welcome"
        full.set()
        for seq in range(3):
            dev.sample(seq)
        thread.join(60)
        assert not thread.is_alive() and failure  # the node stopped, non-zero (edge-node run exits 1)
        assert isinstance(failure[0].__cause__, StateWriteError) and "rolled the transaction back" in str(failure[0].__cause__)
        assert dev.silent(300)  # nothing acked
    finally:
        ctx.destroy(linger=0)
    with sqlite3.connect(node.state_dir / "state.db") as db:
        assert db.execute("SELECT COUNT(*) FROM verdicts").fetchone() == (0,)
    assert _events(caplog, "learner_stopped") and not list((node.state_dir / "checkpoints").glob("ckpt-*.pt"))


def test_g7_status_and_history_failures_are_logged_once_per_episode(tmp_path, monkeypatch, caplog):
    import edge_runtime.ops.history as history
    import edge_runtime.ops.observe as observe

    caplog.set_level(logging.INFO, logger="edge_runtime")
    metrics = NodeMetrics()
    obs = NodeObserver(tmp_path, metrics, num_classes=3, status_every_s=0.02, history_every_s=0.02)
    obs.disk.retry_max_s = 0.05
    full = threading.Event()
    real_json, real_open = observe.atomic_write_json, open

    def write_json(*a, **k):
        if full.is_set():
            raise ENOSPC
        return real_json(*a, **k)

    def opener(path, *a, **k):
        if full.is_set() and str(path).endswith("history.csv") and a and "a" in a[0]:
            raise ENOSPC
        return real_open(path, *a, **k)

    monkeypatch.setattr(observe, "atomic_write_json", write_json)
    monkeypatch.setattr(history, "open", opener, raising=False)
    obs.start({"pid": os.getpid(), "endpoint": "tcp://x"})
    try:
        full.set()
        _wait(lambda: all((metrics.registry.get_sample_value("edge_disk_errors_total", {"what": w}) or 0) >= 5
                          for w in ("status", "history")), what="five failures of each")
        failed = _events(caplog, "disk_write_failed")
        assert sorted(r.what for r in failed) == ["history", "status"]  # one line per kind, not per attempt
        # status.json still shows the condition: rewritten in place, within the blocks it already holds
        assert set(_wait(lambda: _status_disk(tmp_path).get("failing"), what="the condition in status.json")) >= {"status"}
        full.clear()
        _wait(lambda: _events(caplog, "disk_writable"), what="'disk writable again'")
        _wait(lambda: _status_disk(tmp_path).get("ok"), what="status.json ok again")
    finally:
        obs.stop()
    assert len(_events(caplog, "disk_writable")) == 1 and len(_events(caplog, "disk_write_failed")) == 2


# ------------------------------------------------------------------ real processes on a small tmpfs


def _can_unshare() -> bool:
    if not shutil.which("unshare"):
        return False
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt 2>/dev/null || "
                            "mount -t tmpfs -o size=64k tmpfs /tmp"], capture_output=True, timeout=30)
    return probe.returncode == 0


needs_unshare = pytest.mark.skipif(not _can_unshare(), reason="needs unshare -rm (user + mount namespaces) to mount a small tmpfs")


class TmpfsNode(NodeProcess):
    """``edge-node run`` with ``node.state_dir`` on a tmpfs of ``size`` bytes in its own mount namespace."""

    def __init__(self, tmp: Path, size: int, overrides: dict | None = None, setup: str = "") -> None:
        self.mnt = tmp / "mnt"
        self.mnt.mkdir()
        overrides = dict(overrides or {})
        overrides["node"] = {**overrides.get("node", {}), "state_dir": str(self.mnt)}
        super().__init__(tmp, overrides)
        self.size, self.setup = size, setup

    def inside(self, rel: str = "") -> Path:
        """A path in the node's tmpfs, as this process sees it."""
        assert self.proc is not None
        return Path(f"/proc/{self.proc.pid}/root{self.mnt}") / rel

    def launch(self) -> None:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self._log = open(self.log_path, "ab")
        script = (f"mount -t tmpfs -o size={self.size} tmpfs {self.mnt} && {self.setup} exec {sys.executable} "
                  f"-m edge_runtime.cli.main run --config {self.config_path}")
        self.proc = subprocess.Popen(["unshare", "-rm", "sh", "-c", script], stdout=self._log, stderr=subprocess.STDOUT,
                                     env=env, cwd=str(ROOT))

    def start(self, timeout: float = 90.0) -> "TmpfsNode":
        self.launch()
        info = _wait(lambda: self._node_json() or self.proc.poll() is not None, timeout, "node.json")  # type: ignore[union-attr]
        if info is True:
            raise RuntimeError(f"edge-node exited with {self.proc.returncode}:\n{self.log()}")  # type: ignore[union-attr]
        self.info, self.endpoint = info, info["endpoint"]
        return self

    def _node_json(self) -> dict | None:
        try:
            return json.loads(self.inside("node.json").read_text())
        except (OSError, ValueError):
            return None


def _fill(path: Path, leave: int) -> None:
    """Write ``path`` until the file system is full, then give back ``leave`` bytes."""
    with open(path, "wb") as f:
        chunk = b"\0" * (1 << 16)
        try:
            while True:
                f.write(chunk)
                f.flush()
        except OSError as err:
            assert err.errno == errno.ENOSPC
        size = f.seek(0, os.SEEK_END)
    os.truncate(path, max(0, size - leave))


def _metric(port: int, name: str, labels: str) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    for line in text.splitlines():
        if line.startswith(f"{name}{{{labels}}}"):
            return float(line.split()[-1])
    return 0.0


@pytest.mark.slow
@needs_unshare
def test_g7_real_node_keeps_serving_when_checkpoints_do_not_fit(tmp_path):
    """As found: 0.7 MB free, enough for SQLite commits for a while, not for a checkpoint (about 1.3 MB).

    Checkpoints fail and learning and acks go on; when the free space gets too small for the next commit
    the acks are held (the node alive, the transaction open); freeing space releases them, one line says so."""
    node = TmpfsNode(tmp_path, 32 << 20, {"node": {"metrics_port": 0, "checkpoint_every_s": 1.0, "checkpoint_keep": 1,
                                                   "disk_retry_max_s": 1.0, "credit": 32, "batch_size": 32}}).start()
    ctx = zmq.Context()
    try:
        port = node.info["metrics_port"]
        dev = Device(ctx, node.endpoint, "uav")
        assert dev.hello()["type"] == "welcome"
        for seq in range(32):
            dev.sample(seq, label=seq % 3)
        assert "invalid" not in "".join(dev.acks(set(range(32))).values())
        _fill(node.inside("filler"), leave=700 << 10)
        seq, held, acked_after_failure = 32, set(), 0
        deadline = time.monotonic() + 180
        while not held and time.monotonic() < deadline:  # 4 samples a micro-batch until the commits are held
            batch = set(range(seq, seq + 4))
            for s in batch:
                dev.sample(s, label=s % 3)
            failed_before = _metric(port, "edge_disk_errors_total", 'what="checkpoint"')
            try:
                got = dev.acks(batch, timeout_ms=5000)
            except TimeoutError:
                held = batch
                break
            assert "invalid" not in "".join(got.values())
            acked_after_failure += len(got) if failed_before else 0
            seq += 4
            time.sleep(0.2)
        assert _metric(port, "edge_disk_errors_total", 'what="checkpoint"') >= 2
        assert acked_after_failure > 0  # learning and acking went on while checkpoints failed
        assert held and _metric(port, "edge_disk_failing", 'what="ledger"') == 1 and node.proc.poll() is None
        disk = _wait(lambda: _status_disk(node.inside()).get("failing", {}).get("checkpoint"), 60, "status.json's disk")
        assert "ENOSPC" in disk["error"]
        status = subprocess.run([sys.executable, "-m", "edge_runtime.cli.main", "status", "--metrics", f"127.0.0.1:{port}/metrics"],
                                capture_output=True, text=True, timeout=60, cwd=str(ROOT), env={**os.environ, "PYTHONPATH": str(ROOT)})
        assert status.returncode == 0 and "disk: cannot write checkpoint" in status.stdout, status.stdout + status.stderr
        assert node.log().count('"disk_write_failed"') <= 4  # once per kind (checkpoint, ledger, status, history)
        node.inside("filler").unlink()
        assert set(dev.acks(held, timeout_ms=60000)) == held  # the held micro-batch, committed now
        seq += 4
        deadline = time.monotonic() + 120
        while "disk writable again" not in node.log() and time.monotonic() < deadline:
            dev.sample(seq, label=seq % 3)
            dev.acks({seq})
            seq += 1
            time.sleep(0.2)
        assert "disk writable again" in node.log()
        assert _metric(port, "edge_disk_failing", 'what="checkpoint"') == 0
        dev.close()
    finally:
        ctx.destroy(linger=0)
        code = node.stop()
    assert code == 0, node.log()
    assert node.log().count("disk writable again") == 1


@pytest.mark.slow
@needs_unshare
def test_g7_start_on_a_full_disk_is_one_line_and_exit_2(tmp_path):
    """A state folder from an earlier run (lock file, state.db), on a disk with no free block."""
    prepared = tmp_path / "prepared"
    prepared.mkdir()
    (prepared / ".lock").write_text(json.dumps({"pid": 1, "endpoint": "tcp://127.0.0.1:5555", "host": "x", "started": 0}) + "\n")
    with sqlite3.connect(prepared / "state.db") as db:
        db.execute("CREATE TABLE t (x)")
    node = TmpfsNode(tmp_path, 4 << 20, setup=f"cp -a {prepared}/. {tmp_path / 'mnt'}/ && "
                     f"(dd if=/dev/zero of={tmp_path / 'mnt'}/filler bs=64k 2>/dev/null; true) &&")
    node.launch()
    try:
        code = node.proc.wait(120)  # type: ignore[union-attr]
    finally:
        node.kill()
    out = node.log()
    assert code == 2, out
    assert "Traceback" not in out
    lines = [line for line in out.splitlines() if line.strip()]
    assert len(lines) == 1 and "node.state_dir" in lines[0] and str(tmp_path / "mnt") in lines[0], out
    assert "full" in lines[0] and "free space" in lines[0], out
