"""Node ingest throughput versus raw pyzmq PUSH/PULL, and the node's memory over a long stream.

One run, two measurements on the same payload (CREMA-D sized: about 140 KB per sample, one tensor
per modality of the default configuration: audio features (250, 40) float32 + frames (2, 3, 64, 64)
float32; :func:`payload_shapes`):

* raw: a PUSH socket in a child process sends N multipart messages (header + 2 tensor frames) to
  a PULL socket in this process, which receives them (``copy=False``) and does nothing else;
* node: an in-process :class:`~edge_runtime.node.daemon.EdgeNode` with a no-op learner (every sample is
  decided ``trained``) and its real SQLite ledger; D devices in a child process (one DEALER each)
  send the same messages through the wire codec, keeping a credit window full and waiting for acks.

The node's resident memory (``/proc/self/statm``) is sampled every 10% of the stream, so a leak
shows as growth from the first to the last sample (``benchmarks/soak.py`` runs 1,000,000 samples). Writes ``ingest.csv`` and ``ingest.png`` under
``--out``.

Raw and node runs are interleaved (raw, node, raw, node, ...) ``--repeats`` times, and the ratio
node/raw is reported as median, min and max over the pairs (the machine is noisy).

Usage: python benchmarks/ingest.py [--samples 30000] [--repeats 5] [--devices 1] [--quick] [--out benchmarks/out]
"""

from __future__ import annotations

import argparse
import csv
import multiprocessing as mp
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Sequence

import msgpack
import numpy as np
import zmq

from edge_runtime import wire
from edge_runtime.core.config import config_from_dict
from edge_runtime.core.names import SAMPLES_SEEN
from edge_runtime.node.daemon import EdgeNode

AUDIO_FEATURES, FRAME_CHANNELS, FRAME_PX = 40, 3, 64
#: Time steps of the payload's tensors: 250 feature frames of a time series, 2 image frames.
SERIES_STEPS, FRAME_STEPS = 250, 2
#: The node's configuration: the default modalities at CREMA-D sizes.
CONFIG = {"model": {"audio_features": AUDIO_FEATURES, "visual_channels": FRAME_CHANNELS, "num_classes": 6}}


def payload_shapes(overrides: dict | None = None) -> dict[str, tuple[int, ...]]:
    """The shape of each modality's tensor in the payload: the modality's own shape (its spec at the node's
    frame size), axis 0 (time) ``SERIES_STEPS`` long, or ``FRAME_STEPS`` for frames (rank 4)."""
    from edge_runtime.core.modalities import modalities_of

    config = config_from_dict(overrides or CONFIG)
    out: dict[str, tuple[int, ...]] = {}
    for name, m in modalities_of(config).items():
        shape = m.spec((FRAME_PX, FRAME_PX)).shape
        steps = FRAME_STEPS if len(shape) == 4 else SERIES_STEPS
        out[name] = tuple(steps if d == -1 else d for d in shape)
    return out


SHAPES = payload_shapes()


def _payload(seq: int, device: str, shapes: dict[str, tuple[int, ...]] = SHAPES) -> list:
    rng = np.random.default_rng(seq % 64)
    sample = wire.Sample({name: rng.normal(size=shape).astype(np.float32) for name, shape in shapes.items()},
                         label=seq % 6, device=device, seq=seq)
    return wire.encode_sample(sample)


def _raw_sender(endpoint: str, n: int) -> None:
    ctx = zmq.Context()
    push = ctx.socket(zmq.PUSH)
    push.connect(endpoint)
    templates = [[bytes(f) for f in _payload(i, "raw")] for i in range(64)]
    for i in range(n):
        push.send_multipart(templates[i % 64], copy=False)
    push.close(linger=-1)
    ctx.term()


def raw_push_pull(n: int) -> float:
    """Samples/s of raw PUSH -> PULL with the same frames (receiver in this process)."""
    ctx = zmq.Context()
    pull = ctx.socket(zmq.PULL)
    port = pull.bind_to_random_port("tcp://127.0.0.1")
    proc = mp.Process(target=_raw_sender, args=(f"tcp://127.0.0.1:{port}", n))
    proc.start()
    pull.recv_multipart(copy=False)
    started = time.perf_counter()
    for _ in range(n - 1):
        pull.recv_multipart(copy=False)
    elapsed = time.perf_counter() - started
    proc.join()
    pull.close(0)
    ctx.term()
    return (n - 1) / elapsed


def _device_sender(endpoint: str, device: str, n: int, window: int, done: Any) -> None:
    """One DEALER: hello, then keep ``window`` samples in flight until ``n`` are acknowledged."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.ROUTING_ID, device.encode())
    sock.connect(endpoint)
    templates = [[bytes(f) for f in _payload(i, device)] for i in range(64)]
    schema = {name: wire.TensorSpec("float32", (-1, *shape[1:])) for name, shape in SHAPES.items()}
    sock.send_multipart(wire.encode_hello(device, schema))
    welcome = wire.decode(sock.recv_multipart(), direction="to_device")
    if not isinstance(welcome, wire.Welcome):
        raise RuntimeError(f"{device}: hello refused: {welcome}")
    credit = min(window, welcome.credit)
    sent = acked = 0
    while acked < n:
        while sent < n and sent - acked < credit:
            frames = list(templates[sent % 64])
            header = msgpack.unpackb(frames[0])
            header["seq"] = sent
            frames[0] = msgpack.packb(header)
            sock.send_multipart(frames, copy=False)
            sent += 1
        msg = wire.decode(sock.recv_multipart(), direction="to_device")
        if isinstance(msg, wire.Ack):
            acked += len(msg.acks)
        else:
            raise RuntimeError(f"{device}: unexpected {msg}")
    sock.send_multipart(wire.encode_bye())
    sock.close(linger=1000)
    ctx.term()
    done.put(device)


class NoopLearner:
    """Decides every sample ``trained`` without touching it: isolates the node's own cost (a ``LearnerLike``)."""

    def __init__(self) -> None:
        self.seen = 0

    def observe(self, samples: Sequence[wire.Sample]) -> list[str]:
        self.seen += len(samples)
        return ["trained"] * len(samples)

    def summary(self) -> dict[str, Any]:
        return {SAMPLES_SEEN: self.seen}

    def state_dict(self) -> dict[str, Any]:
        return {"seen": self.seen}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.seen = int(state["seen"])

    def export_model(self) -> None:
        return None

    def restore_from_store(self) -> int:
        return 0

    @property
    def updates(self) -> int:
        return 0


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def node_ingest(n: int, devices: int, window: int, state_dir: str) -> tuple[float, list[tuple[int, float]]]:
    cfg = config_from_dict({
        **CONFIG,
        "node": {"bind": "tcp://127.0.0.1:*", "state_dir": state_dir, "credit": window, "queue_max": 4 * devices * window,
                 "batch_size": 64, "batch_window_ms": 5.0, "checkpoint_every_s": 3600.0, "log_format": "text",
                 "max_frame_size": FRAME_PX, "frame_size": [FRAME_PX, FRAME_PX]},
    })
    node = EdgeNode(cfg, learner=NoopLearner())
    ready = threading.Event()
    server = threading.Thread(target=node.run, kwargs={"ready": ready}, daemon=True)
    server.start()
    ready.wait(30)
    per_device = n // devices
    done: Any = mp.Queue()
    procs = [mp.Process(target=_device_sender, args=(node.endpoint, f"bench-{k}", per_device, window, done)) for k in range(devices)]
    rss: list[tuple[int, float]] = []
    started = time.perf_counter()
    for p in procs:
        p.start()
    step = max(n // 10, 1)
    next_mark = 0
    while any(p.is_alive() for p in procs):
        if node.decided_total >= next_mark:
            rss.append((node.decided_total, _rss_mib()))
            next_mark += step
        time.sleep(0.05)
    elapsed = time.perf_counter() - started
    rss.append((node.decided_total, _rss_mib()))
    for p in procs:
        p.join()
    total = node.decided_total
    node.request_stop()
    server.join(60)
    return total / elapsed, rss


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--samples", type=int, default=30_000, help="samples per node run (default 30000)")
    ap.add_argument("--raw-samples", type=int, default=None, help="samples per raw PUSH/PULL run (default: --samples)")
    ap.add_argument("--repeats", type=int, default=5, help="interleaved raw/node pairs (ABAB...; default 5)")
    ap.add_argument("--devices", type=int, default=1, help="simulated devices, one process each (default 1: the same one sender as the raw run)")
    ap.add_argument("--window", type=int, default=256, help="credit window per device (default 256)")
    ap.add_argument("--quick", action="store_true", help="a smoke run: 2 pairs of 1500 samples")
    ap.add_argument("--out", default="benchmarks/out", help="folder for ingest.csv / ingest.png")
    args = ap.parse_args(argv)
    if args.quick:
        args.samples, args.repeats = 1500, 2
    raw_n = args.raw_samples or args.samples
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    kb = sum(len(bytes(f)) for f in _payload(0, "x")) / 1000
    print(f"payload {kb:.0f} KB per sample; {args.repeats} interleaved pairs (raw {raw_n}, node {args.samples} samples)")
    pairs: list[tuple[float, float]] = []
    rss: list[tuple[int, float]] = []
    for r in range(args.repeats):
        raw = raw_push_pull(raw_n)
        with tempfile.TemporaryDirectory() as tmp:
            rate, rss = node_ingest(args.samples, args.devices, args.window, tmp)
        pairs.append((raw, rate))
        print(f"pair {r + 1}: raw {raw:8.0f} samples/s  node {rate:8.0f} samples/s  ratio {rate / raw:.2f}", flush=True)
    ratios = sorted(n / r for r, n in pairs)
    med = statistics.median(ratios)
    print(f"ratio node/raw: median {med:.2f}  min {ratios[0]:.2f}  max {ratios[-1]:.2f}  (bar 0.6, aim 0.8)")
    first = rss[1][1] if len(rss) > 1 else rss[0][1]
    print(f"node RSS (last run): {first:.0f} MiB after {rss[1][0] if len(rss) > 1 else 0} samples, {rss[-1][1]:.0f} MiB after "
          f"{rss[-1][0]} (growth {rss[-1][1] - first:+.0f} MiB)")
    with open(out / "ingest.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["measure", "samples", "value"])
        for raw, rate in pairs:
            w.writerow(["raw_samples_per_s", raw_n, f"{raw:.1f}"])
            w.writerow(["node_samples_per_s", args.samples, f"{rate:.1f}"])
            w.writerow(["ratio_node_raw", args.samples, f"{rate / raw:.3f}"])
        for decided, mib in rss:
            w.writerow(["node_rss_mib", decided, f"{mib:.1f}"])
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
        a.plot(range(1, len(pairs) + 1), [n / r for r, n in pairs], marker="o")
        a.axhline(0.8, color="grey", linestyle="--", label="aim 0.8")
        a.set_xlabel("pair (raw then node)")
        a.set_ylabel("node / raw")
        a.set_ylim(bottom=0)
        a.set_title(f"ingest, {kb:.0f} KB samples (median {med:.2f})")
        a.legend()
        b.plot([d for d, _ in rss], [m for _, m in rss], marker="o")
        b.set_xlabel("samples decided")
        b.set_ylabel("node RSS (MiB)")
        b.set_ylim(bottom=0)
        b.set_title("node memory over the last run")
        fig.tight_layout()
        fig.savefig(out / "ingest.png", dpi=120)
        print(f"wrote {out / 'ingest.csv'} and {out / 'ingest.png'}")
    except ImportError:
        print(f"wrote {out / 'ingest.csv'} (install matplotlib for the plot)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
