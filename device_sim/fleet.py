"""A fleet of simulated devices: one data set, one scenario, sharded over N DEALER clients.

All clients run on one ZeroMQ poller in one worker thread (:func:`device_sim.client.run_many`), so a
fleet of 1,000 devices is one process with two threads, not 1,000 threads.
"""

from __future__ import annotations

import sys
import threading
import time
from collections import Counter
from typing import Any, Iterator

import numpy as np
import zmq
from tqdm import tqdm

from device_sim.client import SILENT_AFTER_S, ClientConfig, DeviceClient, DeviceSummary, run_many
from device_sim.scenario import StreamOrder
from edge_runtime.core.sample import Sample
from edge_runtime.wire import schema_of


def shard(dataset: Any, order: StreamOrder, k: int, n: int, eval_every: int | None, owner: np.ndarray | None = None,
          follower: Any = None, split: str | None = None) -> Iterator[Sample]:
    """Device ``k`` of ``n`` replays its stream positions in order: those with ``owner == k`` (see
    :func:`device_sim.scenario.assign_devices` and :func:`~device_sim.scenario.assign_natural`), or
    k, k+n, ... without an owner array.  Every ``eval_every``-th of them is split ``eval``;
    ``split`` stamps every sample with that split instead (``"eval"``: a held-out split sent after training)."""
    mine = order.indices[k::n] if owner is None else order.indices[owner == k]
    for j, index in enumerate(mine.tolist()):
        sample = dataset.sample(int(index))
        if split is not None:
            sample.split = split
        elif eval_every and j % eval_every == eval_every - 1:
            sample.split = "eval"
        if follower is not None:
            follower.observe(sample)  # on-device inference with the newest model, before sending
        yield sample


def say(line: str) -> None:
    """One line on stderr, above the progress bar when there is one."""
    tqdm.write(f"device-sim: {line}", file=sys.stderr)
    sys.stderr.flush()


def failure_lines(summaries: list[dict[str, Any]]) -> list[str]:
    """Why devices gave up, one line per distinct reason ("3 of 4 devices: ..." when not all)."""
    reasons = Counter(s["failure"] for s in summaries if s.get("failure"))
    return [why if n == len(summaries) == 1 or (n == len(summaries) and len(reasons) == 1) else f"{n} of {len(summaries)} devices: {why}"
            for why, n in reasons.most_common()]


class _SilenceWatch:
    """Says, once per silence, that the node stopped answering and how long the devices wait for it."""

    def __init__(self, endpoint: str, wait_s: float) -> None:
        self.endpoint, self.wait_s, self.shown = endpoint, wait_s, False

    def check(self, clients: list[DeviceClient]) -> None:
        silent = max((c.silent_for(time.monotonic()) for c in clients), default=0.0)
        if silent >= SILENT_AFTER_S and not self.shown:
            say(f"node at {self.endpoint} silent for {silent:.0f} s, waiting (up to {self.wait_s:g} s)...")
            self.shown = True
        elif silent < SILENT_AFTER_S and self.shown:
            say(f"node at {self.endpoint} answers again")
            self.shown = False


def run_fleet(dataset: Any, order: StreamOrder, base: ClientConfig, devices: int, eval_every: int | None = None,
              seconds: float | None = None, progress: bool = True, owner: np.ndarray | None = None, prefix: str = "uav",
              infer: str | None = None, suffix: str = "", interrupt: threading.Event | None = None,
              interrupt_drain_s: float = 5.0, split: str | None = None) -> dict[str, Any]:
    """Stream ``order`` from ``devices`` clients named ``{prefix}-K{suffix}``; returns per-device summaries and totals.

    ``split`` (e.g. ``"eval"``) stamps every sample with that split (see :func:`shard`).

    ``interrupt`` (set by a first Ctrl-C) stops sending and waits at most ``interrupt_drain_s`` for
    the verdicts in flight; the result then has ``"interrupted": True``.
    """
    ctx = zmq.Context()
    ctx.setsockopt(zmq.MAX_SOCKETS, max(1024, 3 * devices + 64))  # a DEALER, its monitor (and a model follower) per device
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
        cfg = ClientConfig(**{**base.__dict__, "device_id": f"{prefix}-{k}{suffix}"})
        follower = followers[k] if followers else None
        clients.append(DeviceClient(cfg, shard(dataset, order, k, devices, eval_every, owner, follower, split), schema, ctx=ctx))
    stop, drain = threading.Event(), interrupt or threading.Event()
    results: list[DeviceSummary] = []
    timeout = f", hello timeout {base.hello_give_up_s:g} s" if base.hello_give_up_s else ""
    say(f"connecting {devices} device{'s' if devices > 1 else ''} to {base.endpoint}{timeout}")
    deadline = time.monotonic() + seconds if seconds else None
    worker = threading.Thread(target=lambda: results.extend(run_many(clients, stop=stop, deadline=deadline, drain=drain,
                                                                      drain_s=interrupt_drain_s)),
                              daemon=True, name="uav-fleet")
    worker.start()
    watch = _SilenceWatch(base.endpoint, base.drain_timeout_s)
    bar = tqdm(total=len(order.indices), unit="sample", desc="acked", disable=not progress, mininterval=0.5, dynamic_ncols=True)
    try:
        while worker.is_alive():
            time.sleep(0.25)
            sent = sum(c.summary.sent for c in clients)
            acked = sum(c.summary.acked for c in clients)
            admitted = sum(c.summary.verdicts.get("admitted", 0) for c in clients)
            bar.update(acked - bar.n)
            bar.set_postfix(sent=sent, admitted=admitted, resent=sum(c.summary.resent for c in clients), refresh=False)
            watch.check(clients)
    except KeyboardInterrupt:  # without a SIGINT handler of the caller's: stop at once
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
    totals["failed"] = sum(1 for s in summaries if s["failure"])
    return {"devices": summaries, "totals": totals, "interrupted": drain.is_set() or stop.is_set()}
