"""Where the node's two threads meet: the bounded ingest queue one way, acks and requests the other.

The IO thread :meth:`~Handoff.offer` s accepted samples and the learner thread takes them in
micro-batches (:meth:`~Handoff.take_batch`); the learner thread appends the verdicts of each
committed micro-batch to ``outbox`` and the IO thread sends them as acks. ``to_bind`` (CURVE key
bindings to persist, ``(device, key)``; ``(device, None)``: release the rows of a freed device that
never delivered a valid sample, see :meth:`~edge_runtime.node.ledger.Ledger.bind_key`) and ``forget``
(devices whose state the IO thread freed) go from the IO thread to the learner thread, applied at
its next micro-batch. The deques are only appended to on one
side and popped on the other, which CPython's deque makes thread-safe; the queue and its byte
count change under the condition.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Callable

from edge_runtime.core.sample import Sample


@dataclass
class Item:
    """One accepted sample on its way to the learner (``verdict`` set: decided already, e.g. invalid)."""

    rid: bytes
    device: str
    seq: int
    sample: Sample | None
    verdict: str | None
    arrived: float
    nbytes: int = 0
    raw: bool = False


#: The verdicts of one committed micro-batch: (routing id, seq, verdict) per sample.
Acks = list[tuple[bytes, int, str]]


class Handoff:
    """The ingest queue (bounded by ``node.queue_max`` samples and ``node.queue_max_bytes``) and the return paths."""

    def __init__(self, batch_size: int, batch_window_s: float, queue_max: int, queue_max_bytes: int) -> None:
        self.batch_size = batch_size
        self.window = batch_window_s
        self.queue_max = queue_max
        self.queue_max_bytes = queue_max_bytes
        self.cond = threading.Condition()
        self.queue: deque[Item] = deque()
        self.queued_bytes = 0
        self.outbox: deque[Acks] = deque()
        self.to_bind: deque[tuple[str, str | None]] = deque()
        self.forget: deque[str] = deque()
        #: devices whose release (rows of an id that never delivered a valid sample) is queued or not yet
        #: committed: a hello for one is answered busy until the learner thread has committed it
        self.releasing: set[str] = set()
        self.draining = False  # set by the IO thread once stopping: decide what is queued, take nothing new

    def offer(self, item: Item) -> bool:
        """Queue ``item`` for the learner; False (nothing queued) when the queue is full."""
        with self.cond:
            queue = self.queue
            if len(queue) >= self.queue_max or (bool(queue) and self.queued_bytes + item.nbytes > self.queue_max_bytes):
                return False
            queue.append(item)
            self.queued_bytes += item.nbytes
            if len(queue) == 1 or len(queue) >= self.batch_size:
                # The learner needs waking only to start a batch window or when a batch is full;
                # otherwise its own window timeout wakes it (one wake-up per sample costs the GIL).
                self.cond.notify()
        return True

    def take_batch(self, idle_work: Callable[[], bool] | None = None) -> list[Item] | None:
        """Block until a micro-batch is due (size reached, window elapsed, or draining); None: stop.

        ``[]``: nothing to learn, but key bindings to persist, or ``idle_work()`` says there is
        work to do between batches (federation).
        """
        with self.cond:
            while True:
                if self.queue:
                    age = time.monotonic() - self.queue[0].arrived
                    if len(self.queue) >= self.batch_size or age >= self.window or self.draining:
                        n = min(self.batch_size, len(self.queue))
                        batch = [self.queue.popleft() for _ in range(n)]
                        self.queued_bytes -= sum(it.nbytes for it in batch)
                        return batch
                    self.cond.wait(self.window - age)
                elif self.draining:
                    return None
                elif self.to_bind or (idle_work is not None and idle_work()):
                    return []
                else:
                    self.cond.wait(0.1)

    def drain(self) -> None:
        """Stop taking samples: the learner decides what is queued, then :meth:`take_batch` returns None."""
        self.draining = True
        self.wake()

    def wake(self) -> None:
        """Wake the learner thread (e.g. a federation request arrived)."""
        with self.cond:
            self.cond.notify_all()
