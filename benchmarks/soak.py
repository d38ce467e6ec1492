"""Soak: a long stream through the node with a no-op learner and the real SQLite ledger.

An in-process :class:`~edge_runtime.node.daemon.EdgeNode` (no-op learner: every sample ``trained``; real
ROUTER socket, real WAL ledger with compaction) is fed by D devices in child processes (one DEALER
each, a full credit window, tiny samples so that the ledger, not the payload, is what is measured).
At 10k, 100k and 1M decided samples (those within ``--samples``) and at the end, it prints the
size of ``state.db`` (with its WAL file), the verdict rows the ledger holds and the node's RSS;
bounded compaction keeps the first two flat, and the last must not grow with the stream.

Usage: python benchmarks/soak.py [--samples 1000000] [--devices 2] [--retention 10000] [--quick] [--out benchmarks/out]
"""

from __future__ import annotations

import argparse
import csv
import multiprocessing as mp
import sqlite3
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import zmq

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script: benchmarks/ is not installed

from benchmarks.ingest import NoopLearner, _rss_mib  # noqa: E402
from edge_runtime import wire  # noqa: E402
from edge_runtime.core.config import config_from_dict  # noqa: E402
from edge_runtime.node.daemon import EdgeNode  # noqa: E402

MARKS = (10_000, 100_000, 1_000_000)


def _sender(endpoint: str, device: str, n: int, window: int) -> None:
    """One DEALER: hello, then keep ``window`` tiny samples in flight until ``n`` are acknowledged."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.ROUTING_ID, device.encode())
    sock.connect(endpoint)
    sock.send_multipart(wire.encode_hello(device, {}))
    welcome = wire.decode(sock.recv_multipart(), direction="to_device")
    if not isinstance(welcome, wire.Welcome):
        raise RuntimeError(f"{device}: hello refused: {welcome}")
    # tiny samples of the welcome's schema (the node's modalities): 2 steps of a free axis 0, 1 of any other free axis
    tensors = {name: np.ones([(2 if axis == 0 else 1) if d == -1 else d for axis, d in enumerate(spec.shape)], spec.dtype)
               for name, spec in welcome.schema.items()}
    body = wire.encode_sample(wire.Sample(tensors, label=1, device=device, seq=0))
    header = msgpack.unpackb(bytes(body[0]))
    frames = [bytes(f) for f in body[1:]]
    sent = acked = 0
    while acked < n:
        while sent < n and sent - acked < window:
            header["seq"] = sent
            sock.send_multipart([msgpack.packb(header), *frames])
            sent += 1
        msg = wire.decode(sock.recv_multipart(), direction="to_device")
        if not isinstance(msg, wire.Ack):
            raise RuntimeError(f"{device}: unexpected {msg}")
        acked += len(msg.acks)
    sock.send_multipart(wire.encode_bye())
    sock.close(linger=1000)
    ctx.term()


def _db_mib(state_dir: Path) -> float:
    return sum(p.stat().st_size for p in state_dir.glob("state.db*")) / 2**20


def _verdict_rows(state_dir: Path) -> int:
    with sqlite3.connect(state_dir / "state.db") as db:
        return int(db.execute("SELECT COUNT(*) FROM verdicts").fetchone()[0])


def soak(n: int, devices: int, retention: int, state_dir: Path) -> list[dict[str, Any]]:
    """Stream ``n`` samples; one row per mark: decided, state.db MiB, verdict rows, RSS MiB, samples/s."""
    cfg = config_from_dict({"node": {
        "bind": "tcp://127.0.0.1:*", "state_dir": str(state_dir), "credit": 256, "queue_max": 1024 * devices,
        "batch_size": 256, "batch_window_ms": 5.0, "checkpoint_every_s": 3600.0, "log_format": "text",
        "ledger_retention": retention}, "features": {"image_size": 4}})  # tiny frames: 4 x 4 (when there are frames)
    node = EdgeNode(cfg, learner=NoopLearner())
    ready = threading.Event()
    server = threading.Thread(target=node.run, kwargs={"ready": ready}, daemon=True)
    server.start()
    ready.wait(30)
    per = n // devices
    procs = [mp.Process(target=_sender, args=(node.endpoint, f"soak-{k}", per, 256)) for k in range(devices)]
    marks = sorted({m for m in MARKS if m <= per * devices} | {per * devices})
    rows: list[dict[str, Any]] = []
    started = time.perf_counter()
    for p in procs:
        p.start()
    while marks:
        decided = node.decided_total
        if decided >= marks[0] or not any(p.is_alive() for p in procs):
            elapsed = time.perf_counter() - started
            rows.append({"decided": decided, "state_db_mib": round(_db_mib(state_dir), 2),
                         "verdict_rows": _verdict_rows(state_dir), "rss_mib": round(_rss_mib(), 1),
                         "samples_per_s": round(decided / elapsed, 1)})
            print(f"{decided:>9} samples  state.db {rows[-1]['state_db_mib']:7.2f} MiB  verdict rows {rows[-1]['verdict_rows']:>7}  "
                  f"RSS {rows[-1]['rss_mib']:7.1f} MiB  ({rows[-1]['samples_per_s']:.0f} samples/s)", flush=True)
            while marks and decided >= marks[0]:
                marks.pop(0)
            if not any(p.is_alive() for p in procs):
                break
        time.sleep(0.05)
    for p in procs:
        p.join()
    node.request_stop()
    server.join(60)
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--samples", type=int, default=1_000_000, help="samples through the node (default 1000000)")
    ap.add_argument("--devices", type=int, default=2, help="devices, one process each (default 2)")
    ap.add_argument("--retention", type=int, default=10_000, help="node.ledger_retention (default 10000)")
    ap.add_argument("--quick", action="store_true", help="a smoke run: 12000 samples, retention 1000")
    ap.add_argument("--out", default="benchmarks/out", help="folder for soak.csv")
    args = ap.parse_args(argv)
    if args.quick:
        args.samples, args.retention = 12_000, 1000
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        rows = soak(args.samples, args.devices, args.retention, Path(tmp))
    with open(out / "soak.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    print(f"wrote {out / 'soak.csv'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
