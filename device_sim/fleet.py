"""A fleet of simulated devices: one data set, one scenario, sharded over N DEALER clients in threads."""

from __future__ import annotations

import threading
import time
from typing import Any, Iterator

import numpy as np
import zmq
from tqdm import tqdm

from device_sim.client import ClientConfig, DeviceClient, DeviceSummary
from device_sim.scenario import StreamOrder
from edge_runtime.wire import Sample, schema_of


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
    results: list[DeviceSummary | None] = [None] * devices

    def work(i: int) -> None:
        results[i] = clients[i].run(stop=stop, deadline=deadline)

    threads = [threading.Thread(target=work, args=(i,), daemon=True, name=f"uav-{i}") for i in range(devices)]
    for t in threads:
        t.start()
    bar = tqdm(total=len(order.indices), unit="sample", desc="acked", disable=not progress, mininterval=0.5, dynamic_ncols=True)
    try:
        while any(t.is_alive() for t in threads):
            time.sleep(0.25)
            sent = sum(c.summary.sent for c in clients)
            acked = sum(c.summary.acked for c in clients)
            admitted = sum(c.summary.verdicts.get("admitted", 0) for c in clients)
            bar.update(acked - bar.n)
            bar.set_postfix(sent=sent, admitted=admitted, resent=sum(c.summary.resent for c in clients), refresh=False)
    except KeyboardInterrupt:
        stop.set()
    for t in threads:
        t.join()
    bar.close()
    for f in followers:
        f.close()
    summaries = [r.as_dict() for r in results if r is not None]
    for s, f in zip(summaries, followers):
        s["inference"] = f.summary()
    ctx.term()
    totals: dict[str, Any] = {"devices": devices, "samples": int(len(order.indices))}
    for key in ("sent", "resent", "acked", "skipped_resume", "ack_conflicts"):
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
