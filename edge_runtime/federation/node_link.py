"""The node side of federation: a control channel served beside the learner thread.

``EdgeNode`` owns one :class:`FederationLink` when ``federation.enabled`` is true. The control
thread (``edge_runtime.federation.control.ControlServer``) answers ``status`` itself and hands ``get`` and
``put`` to the learner thread, which serves them in :meth:`FederationLink.service` between two
micro-batches (never inside one) and only then replies. A ``put`` is checked against the model
(names, dtypes, shapes, finite values) before it is queued: a mismatch is refused with an error
naming the array and changes nothing.

Applying a put replaces the model's weights and the prototypes of every class some node has seen,
adds those classes to the learner's seen set, and takes a new KD teacher snapshot: the old teacher
is the node's pre-merge model, which knows only the local classes, and distilling towards it would
pull the merged model back to them. The optimiser state, replay buffer, ledger and the rest stay
local. Then it writes a checkpoint, so a node killed later restarts with the merged model and its
round number (``state_dir/federation.json``).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import torch

from edge_runtime.core.atomic import atomic_write_json
from edge_runtime.core.config import FederationConfig
from edge_runtime.federation.control import ControlError, ControlServer
from edge_runtime.federation.arrays import COUNTS, MODEL_PREFIX, PROTO_PREFIX, Spec, mismatch, spec_of

log = logging.getLogger("edge_runtime.federation")

#: How long the control thread waits for the learner thread to reach the end of its micro-batch.
SERVICE_WAIT_S = 30.0


# ---------------------------------------------------------------------- learner <-> arrays
def learner_arrays(learner: Any, counts: np.ndarray) -> dict[str, np.ndarray]:
    """The arrays a node shares: floating-point model weights, prototypes per modality, per-class counts."""
    out = {f"{MODEL_PREFIX}{k}": v.detach().cpu().numpy().copy()
           for k, v in learner.model.state_dict().items() if v.dtype.is_floating_point}
    for name, protos in learner.prototypes.modalities.items():
        out[f"{PROTO_PREFIX}{name}"] = protos.prototypes.detach().cpu().numpy().astype(np.float32)
    out[COUNTS] = np.asarray(counts, dtype=np.int64).copy()
    return out


def apply_global(learner: Any, arrays: dict[str, np.ndarray]) -> None:
    """Load global weights and prototypes into ``learner`` (between micro-batches); new teacher snapshot."""
    state = learner.model.state_dict()
    with torch.no_grad():
        for key, tensor in state.items():
            name = f"{MODEL_PREFIX}{key}"
            if name in arrays:
                tensor.copy_(torch.from_numpy(np.array(arrays[name])))
        known = torch.from_numpy(np.asarray(arrays[COUNTS]) > 0).to(learner.seen.device)
        for mod, protos in learner.prototypes.modalities.items():
            merged = torch.from_numpy(np.array(arrays[f"{PROTO_PREFIX}{mod}"])).to(protos.prototypes)
            protos.prototypes = torch.where(known[:, None], merged, protos.prototypes)
            protos.seen = protos.seen | known
        learner.seen |= known
    learner.teacher.snapshot(learner.model, learner.seen, learner.stats.updates)


def count_labels(counts: np.ndarray, labels: Iterable[int]) -> int:
    """Add labelled training samples to the per-class ``counts``; returns how many."""
    n = 0
    for y in labels:
        counts[y] += 1
        n += 1
    return n


# ---------------------------------------------------------------------- the link
@dataclass
class _Request:
    kind: str
    header: dict[str, Any]
    arrays: dict[str, np.ndarray]
    done: threading.Event = field(default_factory=threading.Event)
    result: tuple[dict[str, Any], dict[str, np.ndarray] | None] | None = None
    error: BaseException | None = None


class FederationLink:
    """Control channel + round bookkeeping of one node (see the module docstring)."""

    def __init__(self, learner: Any, state_dir: Path, fc: FederationConfig, wake: Callable[[], None],
                 checkpoint: Callable[[], Any], lr: float) -> None:
        self.learner = learner
        self.state_dir = Path(state_dir)
        self.fc = fc
        self.wake = wake
        self.checkpoint = checkpoint
        self.lr = lr
        self.num_classes = int(learner.num_classes)
        self.spec: Spec = spec_of(learner_arrays(learner, np.zeros(self.num_classes, dtype=np.int64)))
        self.state_path = self.state_dir / "federation.json"
        self.round = 0
        self.samples_total = 0
        self.samples_since_round = 0
        self.round_at = 0.0  # unix time the last global model was applied (0: none in this run)
        self.counts = np.zeros(self.num_classes, dtype=np.int64)
        self._load()
        self._requests: deque[_Request] = deque()
        self._global: list[tuple[torch.Tensor, torch.Tensor]] = []  # (param, global value) for the FedProx pull
        self._mu = 0.0
        self._last_save = time.monotonic()
        bind = fc.control_bind or f"ipc://{(self.state_dir / 'control.ipc').resolve()}"
        self.server = ControlServer(bind, {"status": self._status, "get": self._queued, "put": self._put},
                                    records=self.state_dir / "control.jsonl")
        self.endpoint: str | None = None

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> str:
        self.endpoint = self.server.start()
        log.info("federation control channel", extra={"event": "control_listening", "endpoint": self.endpoint, "round": self.round})
        return self.endpoint

    def stop(self) -> None:
        self.server.stop()
        self._save()

    def _load(self) -> None:
        if self.state_path.exists():
            st = json.loads(self.state_path.read_text())
            self.round = int(st["round"])
            self.samples_total = int(st["samples_total"])
            self.samples_since_round = int(st.get("samples_since_round", 0))
            counts = np.asarray(st["counts"], dtype=np.int64)
            if counts.shape == self.counts.shape:
                self.counts = counts

    def _save(self) -> None:
        atomic_write_json(self.state_path, {"round": self.round, "samples_total": self.samples_total,
                                            "samples_since_round": self.samples_since_round,
                                            "counts": self.counts.tolist()}, indent=None)
        self._last_save = time.monotonic()

    # ------------------------------------------------------------------ control thread
    def _status(self, header: dict[str, Any], arrays: dict[str, np.ndarray]) -> tuple[dict[str, Any], None]:
        return {"type": "status", "round": self.round, "samples_since_round": self.samples_since_round,
                "samples_total": self.samples_total}, None

    def _put(self, header: dict[str, Any], arrays: dict[str, np.ndarray]):
        problem = mismatch(self.spec, arrays)
        if problem:
            log.warning("put refused", extra={"event": "put_refused", "reason": problem})
            raise ControlError("mismatch", f"put refused, nothing changed: {problem}")
        if not isinstance(header.get("round"), int) or header["round"] < 0:
            raise ControlError("bad_request", "put needs an integer round >= 0")
        return self._queued(header, arrays)

    def _queued(self, header: dict[str, Any], arrays: dict[str, np.ndarray]):
        req = _Request(header["type"], header, arrays)
        self._requests.append(req)
        self.wake()
        if not req.done.wait(SERVICE_WAIT_S):
            raise ControlError("busy", f"the learner did not reach the end of its micro-batch within {SERVICE_WAIT_S:.0f} s")
        if req.error is not None:
            raise req.error
        assert req.result is not None
        return req.result

    # ------------------------------------------------------------------ learner thread
    def has_pending(self) -> bool:
        return bool(self._requests)

    def after_batch(self, labels: Iterable[int]) -> None:
        """Learner thread, after a micro-batch: count what was learned, FedProx pull, serve requests."""
        n = count_labels(self.counts, labels)
        self.samples_since_round += n
        self.samples_total += n
        if self._mu > 0 and n:
            step = self.lr * self._mu
            with torch.no_grad():
                for param, glob in self._global:
                    param.sub_(step * (param - glob))
        if time.monotonic() - self._last_save > 2.0:
            self._save()
        self.service()

    def service(self) -> None:
        """Serve queued get / put requests (learner thread, between micro-batches)."""
        while self._requests:
            req = self._requests.popleft()
            try:
                req.result = self._get() if req.kind == "get" else self._apply(req.header, req.arrays)
            except BaseException as err:  # reported to the client; the learner keeps going
                req.error = err
            req.done.set()

    def _get(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        header, _ = self._status({}, {})
        header["type"] = "state"
        return header, learner_arrays(self.learner, self.counts)

    def _apply(self, header: dict[str, Any], arrays: dict[str, np.ndarray]) -> tuple[dict[str, Any], None]:
        apply_global(self.learner, arrays)
        self._mu = float(header.get("proximal_mu") or 0.0)
        params = dict(self.learner.model.named_parameters())
        self._global = [(p, p.detach().clone()) for p in params.values()] if self._mu > 0 else []
        self.round = int(header["round"])
        self.samples_since_round = 0
        self.round_at = time.time()
        self.checkpoint()
        self._save()
        log.info("global model applied", extra={"event": "put_applied", "round": self.round})
        return {"type": "ok", "round": self.round}, None
