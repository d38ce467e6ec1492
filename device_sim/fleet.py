"""A fleet of simulated devices: one data set, one scenario, sharded over N DEALER clients.

All clients run on one ZeroMQ poller in one worker thread (:func:`device_sim.client.run_many`), so a
fleet of 1,000 devices is one process with two threads, not 1,000 threads.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Iterator

import numpy as np
import zmq
from tqdm import tqdm

from device_sim.client import ClientConfig, DeviceClient, DeviceSummary, run_many
from device_sim.scenario import StreamOrder
from edge_runtime.core.sample import Sample
from edge_runtime.wire import schema_of


def shard(dataset: Any, order: StreamOrder, k: int, n: int, eval_every: int | None, owner: np.ndarray | None = None,
          follower: Any = None) -> Iterator[Sample]:
    """Device ``k`` of ``n`` replays its stream positions in order: those with ``owner == k`` (see
    :func:`device_sim.scenario.assign_devices`), or k, k+n, ... without an owner array.  Every
    ``eval_every``-th of them is split ``eval``."""
    mine = order.indices[k::n] if owner is None else order.indices[owner == k]
    for j, index in enumerate(mine.tolist()):
        sample = dataset.sample(int(index))
        if eval_every and j % eval_every == eval_every - 1:
            sample.split = "eval"
        if follower is not None:
            follower.observe(sample)  # on-device inference with the newest model, before sending
        yield sample


def run_fleet(dataset: Any, order: StreamOrder, base: ClientConfig, devices: int, eval_every: int | None = None,
              seconds: float | None = None, progress: bool = True, owner: np.ndarray | None = None, prefix: str = "uav",
              infer: str | None = None) -> dict[str, Any]:
    """Stream ``order`` from ``devices`` clients named ``{prefix}-0 ..``; returns per-device summaries and totals."""
    ctx = zmq.Context()
    ctx.setsockopt(zmq.MAX_SOCKETS, max(1024, 2 * devices + 64))  # a DEALER (and a model follower) per device
    schema = schema_of(dataset.sample(int(order.indices[0])))
    clients = []
    followers = []
    if infer:
        from device_sim.infer import ModelFollower

        try:
            for _ in range(devices):
                followers.append(ModelFollower(infer, ctx=ctx))
        except ValueError:
            for f in followers:
                f.close()
            ctx.term()
            raise
    for k in range(devices):
        cfg = ClientConfig(**{**base.__dict__, "device_id": f"{prefix}-{k}"})
        follower = followers[k] if followers else None
        clients.append(DeviceClient(cfg, shard(dataset, order, k, devices, eval_every, owner, follower), schema, ctx=ctx))
    stop = threading.Event()
    deadline = time.monotonic() + seconds if seconds else None
    results: list[DeviceSummary] = []
    worker = threading.Thread(target=lambda: results.extend(run_many(clients, stop=stop, deadline=deadline)),
                              daemon=True, name="uav-fleet")
    worker.start()
    bar = tqdm(total=len(order.indices), unit="sample", desc="acked", disable=not progress, mininterval=0.5, dynamic_ncols=True)
    try:
        while worker.is_alive():
            time.sleep(0.25)
            sent = sum(c.summary.sent for c in clients)
            acked = sum(c.summary.acked for c in clients)
            admitted = sum(c.summary.verdicts.get("admitted", 0) for c in clients)
            bar.update(acked - bar.n)
            bar.set_postfix(sent=sent, admitted=admitted, resent=sum(c.summary.resent for c in clients), refresh=False)
    except KeyboardInterrupt:
        stop.set()
    worker.join()
    bar.close()
    for f in followers:
        f.close()
    summaries = [r.as_dict() for r in results if r is not None]
    for s, f in zip(summaries, followers):
        s["inference"] = f.summary()
    ctx.term()
    totals: dict[str, Any] = {"devices": devices, "samples": int(len(order.indices))}
    for key in ("sent", "resent", "acked", "unanswered", "skipped_resume", "ack_conflicts"):
        totals[key] = sum(s[key] for s in summaries)
    for key in ("verdicts", "errors"):
        merged: dict[str, int] = {}
        for s in summaries:
            for k, v in s[key].items():
                merged[k] = merged.get(k, 0) + v
        totals[key] = merged
    totals["complete"] = all(s["complete"] for s in summaries)
    totals["decided"] = sum(totals["verdicts"].values())
    return {"devices": summaries, "totals": totals}
