"""Many devices on one node: node CPU per sample, node memory per device, ack latency, at 10 / 100 / 1,000 devices.

For each fleet size N (and each repeat, sizes interleaved: 10, 100, 1000, 10, 100, ...):

1. a real ``edge-node run`` starts in a child process (fresh state folder, loopback port) with a
   light learner configuration (:data:`LIGHT`: a narrower model and a 100-item buffer; the learning
   step is the real one);
2. one warm-up device streams ``--warmup`` samples at full speed (the learner, its buffer and SQLite
   are then past their first allocations), and the node's CPU time and RSS are read from ``/proc``;
3. N simulated devices (``device_sim.client.run_many``: N DEALERs on one poller in this process)
   say hello and stream the synthetic data set, i.i.d., at the same *total* rate ``--rate`` whatever
   N is (each device ``rate / N`` samples/s, starts staggered), so what grows with N is only the
   number of devices; after ``--settle`` seconds the measurement window of ``--seconds`` opens;
4. at the end of the window (all N devices still connected) the node's CPU time and RSS are read
   again; the devices then stop sending and drain their in-flight verdicts; the node gets SIGTERM.

Reported per run: samples acked in the window, node CPU ms per sample (CPU seconds of the node
process, all threads, over the window / samples acked in it), node RSS, RSS per device
((RSS at the end of the window - RSS after warm-up) / N), p50 / p99 ack latency (send to verdict,
as the devices see it, for the samples acked in the window), this process's CPU share (the device
side), and samples left unanswered after the drain (0 expected). Writes ``fleet_scale.csv`` (one row
per run) and ``fleet_scale.png`` under ``--out``; prints median [min, max] per N.

Usage: python benchmarks/fleet_scale.py [--devices 10,100,1000] [--repeats 1] [--rate 100] [--seconds 20] [--out DIR]
       python benchmarks/fleet_scale.py --replot --out DIR   (table + PNG again from DIR/fleet_scale.csv)
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import zmq

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import plt_figure  # noqa: E402
from device_sim.client import ClientConfig, DeviceClient, run_many  # noqa: E402
from device_sim.datasets.synthetic import SyntheticConfig, SyntheticDataset  # noqa: E402
from device_sim.fleet import shard  # noqa: E402
from device_sim.scenario import make_order  # noqa: E402
from edge_runtime.core.config import config_from_dict  # noqa: E402
from edge_runtime.cli.demo import start_node, stop_node  # noqa: E402
from edge_runtime.wire import schema_of  # noqa: E402

#: The node's learner for this benchmark: the real learning step on a narrower model, a small buffer.
LIGHT: dict[str, Any] = {
    "model": {"tiny_channels": 8, "audio_channels": 16, "embed_dim": 32},
    "buffer": {"max_items": 100},
    "num_threads": 1,
    "node": {"checkpoint_every_s": 3600.0, "log_format": "json", "frame_size": [16, 16]},  # the synthetic frames' size
}

FIELDS = ["devices", "repeat", "total_rate", "seconds", "samples_acked", "node_cpu_s", "cpu_ms_per_sample",
          "node_rss_mib", "rss_base_mib", "rss_kib_per_device", "p50_ms", "p99_ms", "device_side_cpu_pct", "unanswered"]


def proc_stats(pid: int) -> tuple[float, float]:
    """(CPU seconds, user + system, all threads; resident MiB) of process ``pid`` from /proc."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()  # after "pid (comm)": field 3 is fields[0]
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    with open(f"/proc/{pid}/status") as f:
        rss_kib = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    return cpu, rss_kib / 1024


def _self_cpu() -> float:
    t = os.times()
    return t.user + t.system


def one_run(devices: int, repeat: int, rate: float, seconds: float, settle: float, warmup: int, work: Path) -> dict[str, Any]:
    """Start a node, warm it up, stream from ``devices`` devices at ``rate`` samples/s in total; measure."""
    config = config_from_dict(LIGHT)
    work.mkdir(parents=True, exist_ok=True)
    node, info, log_path = start_node(config, work)
    endpoint = info["endpoint"]
    per_device = rate / devices
    total = int(rate * (settle + seconds) * 1.5) + 4 * devices + warmup
    dataset = SyntheticDataset(SyntheticConfig(size=total, seed=repeat))
    order = make_order("iid", dataset.labels(), seed=repeat)
    schema = schema_of(dataset.sample(0))
    ctx = zmq.Context()
    ctx.setsockopt(zmq.MAX_SOCKETS, devices + 64)
    try:
        warm = DeviceClient(ClientConfig(endpoint, "warmup"), (dataset.sample(i) for i in range(total - warmup, total)), schema, ctx=ctx)
        warm_summary = warm.run(deadline=time.monotonic() + 300)
        if not warm_summary.complete:
            raise RuntimeError(f"warm-up did not finish: {warm_summary}; see {log_path}")
        _cpu0, rss_base = proc_stats(node.pid)
        order.indices = order.indices[order.indices < total - warmup]
        gap = 1.0 / per_device
        clients = [DeviceClient(ClientConfig(endpoint, f"fleet-{k}", rate=per_device, jitter=0.2, ping_after_s=5.0,
                                             record_latency=True, start_delay_s=gap * k / devices),
                                shard(dataset, order, k, devices, None), schema, ctx=ctx) for k in range(devices)]
        deadline = time.monotonic() + settle + seconds
        summaries: list = []
        fleet = threading.Thread(target=lambda: summaries.extend(run_many(clients, deadline=deadline)), daemon=True)
        fleet.start()
        time.sleep(settle)
        cpu_a, _ = proc_stats(node.pid)
        self_a, wall_a = _self_cpu(), time.monotonic()
        acked_a = [c.summary.acked for c in clients]
        lat_a = [len(c.latencies) for c in clients]
        time.sleep(max(0.0, deadline - time.monotonic()))
        cpu_b, rss_b = proc_stats(node.pid)
        self_b, wall_b = _self_cpu(), time.monotonic()
        acked = sum(c.summary.acked for c in clients) - sum(acked_a)
        latencies = np.array([x for c, i in zip(clients, lat_a) for x in c.latencies[i:]])
        fleet.join(120)
        if fleet.is_alive():
            raise RuntimeError(f"the devices did not finish draining within 120 s; see {log_path}")
    finally:
        ctx.term()
        if node.poll() is None:
            stop_node(node, log_path)
    if acked == 0 or latencies.size == 0:
        raise RuntimeError(f"no sample was acked in the measurement window; see {log_path}")
    return {
        "devices": devices, "repeat": repeat, "total_rate": rate, "seconds": seconds, "samples_acked": acked,
        "node_cpu_s": cpu_b - cpu_a, "cpu_ms_per_sample": 1000 * (cpu_b - cpu_a) / acked,
        "node_rss_mib": rss_b, "rss_base_mib": rss_base, "rss_kib_per_device": 1024 * (rss_b - rss_base) / devices,
        "p50_ms": 1000 * float(np.percentile(latencies, 50)), "p99_ms": 1000 * float(np.percentile(latencies, 99)),
        "device_side_cpu_pct": 100 * (self_b - self_a) / (wall_b - wall_a),
        "unanswered": sum(s.unanswered for s in summaries),
    }


def _spread(rows: list[dict[str, Any]], key: str, fmt: str) -> str:
    v = [float(r[key]) for r in rows]
    if len(v) == 1:
        return format(v[0], fmt)
    return f"{format(statistics.median(v), fmt)} [{format(min(v), fmt)}, {format(max(v), fmt)}]"


def table(rows: list[dict[str, Any]]) -> str:
    """Markdown table: median [min, max] over repeats, one line per fleet size."""
    out = ["| devices | samples acked | node CPU ms / sample | node RSS MiB | RSS KiB / device | ack p50 ms | ack p99 ms | unanswered |",
           "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for n in sorted({int(r["devices"]) for r in rows}):
        rs = [r for r in rows if int(r["devices"]) == n]
        out.append(f"| {n:,} | {_spread(rs, 'samples_acked', '.0f')} | {_spread(rs, 'cpu_ms_per_sample', '.2f')} | "
                   f"{_spread(rs, 'node_rss_mib', '.0f')} | {_spread(rs, 'rss_kib_per_device', '.1f')} | "
                   f"{_spread(rs, 'p50_ms', '.0f')} | {_spread(rs, 'p99_ms', '.0f')} | {sum(int(r['unanswered']) for r in rs)} |")
    return "\n".join(out)


def marginal_kib_per_device(rows: list[dict[str, Any]]) -> float:
    """Least-squares slope of the node's RSS growth over its warm-up level against N, in KiB per device.

    The learner's own growth in the window is the same at every N (same total rate and duration),
    so the slope is what one more connected device costs; RSS / N at small N is mostly that growth.
    """
    n = np.array([float(r["devices"]) for r in rows])
    growth = np.array([float(r["node_rss_mib"]) - float(r["rss_base_mib"]) for r in rows])
    if len(set(n.tolist())) < 2:
        return float("nan")
    return 1024 * float(np.polyfit(n, growth, 1)[0])


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    plt, fig, (a, b, c) = plt_figure(3, width=4.6, height=3.8)
    sizes = sorted({int(r["devices"]) for r in rows})

    def med(key: str) -> list[float]:
        return [statistics.median(float(r[key]) for r in rows if int(r["devices"]) == n) for n in sizes]

    growth = [float(r["node_rss_mib"]) - float(r["rss_base_mib"]) for r in rows]
    b.scatter([int(r["devices"]) for r in rows], growth, s=16, color="tab:green", label="runs")
    slope = marginal_kib_per_device(rows)
    intercept = float(np.mean(growth)) - slope / 1024 * float(np.mean([float(r["devices"]) for r in rows]))
    grid = np.geomspace(sizes[0], sizes[-1], 50)
    b.plot(grid, intercept + slope / 1024 * grid, color="tab:green", label=f"fit: {slope:.1f} KiB / device")
    b.legend()
    for ax, keys, ylabel in ((a, ["cpu_ms_per_sample"], "node CPU ms per sample"),
                             (b, [], "node RSS growth MiB over the window"),
                             (c, ["p50_ms", "p99_ms"], "ack latency ms")):
        for key in keys:  # the line is the median, every run a dot
            line, = ax.plot(sizes, med(key), marker="o", label=key.split("_")[0])
            ax.scatter([int(r["devices"]) for r in rows], [float(r[key]) for r in rows], s=12, color=line.get_color(), alpha=0.5)
        ax.set_xscale("log")
        ax.set_xticks(sizes, [f"{n:,}" for n in sizes])
        ax.minorticks_off()
        ax.set_xlabel("devices on one node")
        ax.set_ylabel(ylabel)
        ax.set_ylim(bottom=0)
    c.legend()
    fig.suptitle(f"one edge-node, {float(rows[0]['total_rate']):g} samples/s in total")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--devices", default="10,100,1000", help="comma-separated fleet sizes (default 10,100,1000)")
    ap.add_argument("--repeats", type=int, default=1, help="runs per fleet size, interleaved (default 1)")
    ap.add_argument("--rate", type=float, default=100.0, help="samples/s over the whole fleet (default 100)")
    ap.add_argument("--seconds", type=float, default=20.0, help="measurement window per run (default 20)")
    ap.add_argument("--settle", type=float, default=4.0, help="seconds after the devices start before the window opens (default 4)")
    ap.add_argument("--warmup", type=int, default=200, help="samples of the warm-up device (default 200)")
    ap.add_argument("--out", default="benchmarks/out/fleet_scale", help="folder for fleet_scale.csv / .png")
    ap.add_argument("--quick", action="store_true", help="smoke run: 2 and 5 devices, 20 samples/s, 2 s windows")
    ap.add_argument("--replot", action="store_true", help="only print the table and redraw the PNG from --out's fleet_scale.csv")
    args = ap.parse_args(argv)
    if args.replot:
        with open(Path(args.out) / "fleet_scale.csv", newline="") as fh:
            rows = list(csv.DictReader(fh))
        report(rows, Path(args.out))
        return 0
    if args.quick:
        args.devices, args.rate, args.seconds, args.settle, args.warmup = "2,5", 20.0, 2.0, 1.5, 40
    try:
        sizes = [int(x) for x in args.devices.split(",") if x.strip()]
    except ValueError:
        ap.error(f"--devices must be comma-separated integers (got {args.devices!r})")
    if not sizes or min(sizes) < 1 or args.repeats < 1 or args.rate <= 0 or args.seconds <= 0:
        ap.error("--devices >= 1 each, --repeats >= 1, --rate > 0 and --seconds > 0")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    with open(out / "fleet_scale.csv", "w", newline="") as fh, tempfile.TemporaryDirectory() as tmp:
        writer = csv.DictWriter(fh, fieldnames=FIELDS)
        writer.writeheader()
        for repeat in range(args.repeats):
            for n in sizes:
                row = one_run(n, repeat, args.rate, args.seconds, args.settle, args.warmup, Path(tmp) / f"n{n}-r{repeat}")
                rows.append(row)
                writer.writerow({k: f"{v:.10g}" if isinstance(v, float) else v for k, v in row.items()})
                fh.flush()
                print(f"{n:5d} devices (run {repeat + 1}): {row['samples_acked']} acked, {row['cpu_ms_per_sample']:.2f} ms CPU/sample, "
                      f"RSS {row['node_rss_mib']:.0f} MiB ({row['rss_kib_per_device']:.1f} KiB/device), "
                      f"p50 {row['p50_ms']:.0f} ms, p99 {row['p99_ms']:.0f} ms, device side {row['device_side_cpu_pct']:.0f}% CPU, "
                      f"{row['unanswered']} unanswered", flush=True)
    report(rows, out)
    return 0


def report(rows: list[dict[str, Any]], out: Path) -> None:
    """Print the table and the marginal memory per device; draw ``out/fleet_scale.png``."""
    print()
    print(table(rows))
    print(f"\nmarginal node memory per connected device (slope of RSS growth over N): {marginal_kib_per_device(rows):.1f} KiB")
    plot(rows, out / "fleet_scale.png")
    print(f"\nwrote {out / 'fleet_scale.csv'} and {out / 'fleet_scale.png'}")


if __name__ == "__main__":
    raise SystemExit(main())
