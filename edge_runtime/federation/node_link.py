"""The node side of federation: a control channel served beside the learner thread.

``EdgeNode`` owns one :class:`FederationLink` when ``federation.enabled`` is true. The control
thread (``edge_runtime.federation.control.ControlServer``) answers ``status`` itself and hands ``get`` and
``put`` to the learner thread, which serves them in :meth:`FederationLink.service` between two
micro-batches (never inside one) and only then replies. Every field of a ``put`` is checked before
it is queued (:func:`check_put`): the round an int (not a bool) in ``0..2**63-1``, ``proximal_mu`` a
finite number (not a bool) in ``0..PROXIMAL_MU_MAX``, the arrays exactly the model's names, dtypes
and shapes, finite, within ``federation.max_abs_weight``, counts not negative. A refused put is
answered with a code and a message naming the field or array, and changes nothing; so does a put
whose application fails (the learner's weights, prototypes and teacher are restored).

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
from edge_runtime.core.config import PROXIMAL_MU_MAX, CurveConfig, FederationConfig
from edge_runtime.federation.control import ControlError, ControlServer, CurveKeys
from edge_runtime.federation.arrays import COUNTS, MODEL_PREFIX, PROTO_PREFIX, Spec, mismatch, nbytes, spec_of

log = logging.getLogger("edge_runtime.federation")

#: How long the control thread waits for the learner thread to reach the end of its micro-batch.
SERVICE_WAIT_S = 30.0
ROUND_MAX = 2**63 - 1
HEADER_ROOM = 2**20  #: room for a put's header beside its arrays (control_max_bytes must hold both)
REF_SAMPLES = "__ref_samples__"  #: the entry of federation_ref.npz holding samples_since_round at the reference
SPARE_FRAMES = 16  #: frames a message may have beyond the header and the model's arrays (a put with extra arrays gets mismatch naming one)


# ---------------------------------------------------------------------- put validation
def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_put(header: dict[str, Any], arrays: dict[str, np.ndarray], spec: Spec, max_abs: float) -> tuple[int, float]:
    """(round, proximal_mu) of a valid put; else :class:`ControlError` naming the field or array. Changes nothing."""
    rnd = header.get("round")
    if not isinstance(rnd, int) or isinstance(rnd, bool) or not 0 <= rnd <= ROUND_MAX:
        raise ControlError("bad_request", f"put refused, nothing changed: round must be an integer in 0..2**63-1, "
                                          f"got {type(rnd).__name__} {str(rnd)[:40]}")
    mu = header.get("proximal_mu", 0.0)
    if not _number(mu) or not np.isfinite(mu) or not 0.0 <= mu <= PROXIMAL_MU_MAX:
        raise ControlError("bad_request", f"put refused, nothing changed: proximal_mu must be a finite number in "
                                          f"0..{PROXIMAL_MU_MAX:g}, got {type(mu).__name__} {str(mu)[:40]}")
    problem = mismatch(spec, arrays)
    if problem:
        raise ControlError("mismatch", f"put refused, nothing changed: {problem}")
    for name, value in arrays.items():
        a = np.asarray(value)
        if a.dtype.kind == "f" and a.size and float(np.abs(a).max()) > max_abs:
            raise ControlError("out_of_range", f"put refused, nothing changed: array {name!r} holds {float(np.abs(a).max()):.3g}, "
                                               f"beyond federation.max_abs_weight ({max_abs:g})")
        if a.dtype.kind in "iu" and a.size and int(a.min()) < 0:
            raise ControlError("out_of_range", f"put refused, nothing changed: array {name!r} holds a negative count")
    return int(rnd), float(mu)


# ---------------------------------------------------------------------- learner <-> arrays
def learner_arrays(learner: Any, counts: np.ndarray) -> dict[str, np.ndarray]:
    """The arrays a node shares: floating-point model weights, prototypes per modality, per-class counts."""
    out = {f"{MODEL_PREFIX}{k}": v.detach().cpu().numpy().copy()
           for k, v in learner.model.state_dict().items() if v.dtype.is_floating_point}
    for name, protos in learner.prototypes.modalities.items():
        out[f"{PROTO_PREFIX}{name}"] = protos.prototypes.detach().cpu().numpy().astype(np.float32)
    out[COUNTS] = np.asarray(counts, dtype=np.int64).copy()
    return out


def _learner_state(learner: Any) -> dict[str, torch.Tensor]:
    """What :func:`apply_global` changes, copied (to restore it when a put cannot be applied)."""
    out = {f"m.{k}": v.detach().clone() for k, v in learner.model.state_dict().items()}
    for mod, protos in learner.prototypes.modalities.items():
        out[f"p.{mod}"] = protos.prototypes.detach().clone()
        out[f"s.{mod}"] = protos.seen.clone()
    out["seen"] = learner.seen.clone()
    return out


def _restore_learner(learner: Any, saved: dict[str, torch.Tensor]) -> None:
    with torch.no_grad():
        for k, v in learner.model.state_dict().items():
            v.copy_(saved[f"m.{k}"])
        for mod, protos in learner.prototypes.modalities.items():
            protos.prototypes = saved[f"p.{mod}"]
            protos.seen = saved[f"s.{mod}"]
        learner.seen.copy_(saved["seen"])


def _non_finite(learner: Any) -> str | None:
    """The first weight or prototype of ``learner`` holding NaN or Inf, or None."""
    for k, v in learner.model.state_dict().items():
        if v.dtype.is_floating_point and not bool(torch.isfinite(v).all()):
            return f"model.{k}"
    for mod, protos in learner.prototypes.modalities.items():
        if not bool(torch.isfinite(protos.prototypes).all()):
            return f"proto.{mod}"
    return None


def apply_global(learner: Any, arrays: dict[str, np.ndarray], carry: dict[str, torch.Tensor] | None = None) -> None:
    """Load global weights and prototypes into ``learner`` (between micro-batches); new teacher snapshot.

    ``carry`` (state-dict key -> tensor) is added to the loaded weights: what the node learned after
    the reply this global model was made from (:meth:`FederationLink._carry`), so a merge does not
    discard it. All or nothing: when loading fails, or leaves a non-finite weight, the learner is
    restored and :class:`ControlError` (or the failure) is raised; the teacher is snapshot only after success.
    """
    saved = _learner_state(learner)
    try:
        _load_global(learner, arrays)
        if carry:
            state = learner.model.state_dict()
            with torch.no_grad():
                for key, delta in carry.items():
                    state[key].add_(delta)
        bad = _non_finite(learner)
        if bad is not None:
            raise ControlError("out_of_range", f"put refused, nothing changed: {bad} would hold NaN or Inf")
    except BaseException:
        _restore_learner(learner, saved)
        raise
    learner.teacher.snapshot(learner.model, learner.seen, learner.stats.updates)


def _load_global(learner: Any, arrays: dict[str, np.ndarray]) -> None:
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
    round: int = 0
    mu: float = 0.0
    done: threading.Event = field(default_factory=threading.Event)
    result: tuple[dict[str, Any], dict[str, np.ndarray] | None] | None = None
    error: BaseException | None = None
    state: str = "queued"  # queued -> started (learner thread) | cancelled (the client was told busy): under FederationLink._claim


#: Requests waiting for the learner thread at most; one more is answered busy at once (each may hold a model copy).
MAX_QUEUED_REQUESTS = 2


class FederationLink:
    """Control channel + round bookkeeping of one node (see the module docstring)."""

    def __init__(self, learner: Any, state_dir: Path, fc: FederationConfig, wake: Callable[[], None],
                 checkpoint: Callable[[], Any], lr: float, curve: CurveConfig | None = None) -> None:
        self.learner = learner
        self.state_dir = Path(state_dir)
        self.fc = fc
        self.wake = wake
        self.checkpoint = checkpoint
        self.lr = lr
        self.num_classes = int(learner.num_classes)
        shared = learner_arrays(learner, np.zeros(self.num_classes, dtype=np.int64))
        self.spec: Spec = spec_of(shared)
        if nbytes(shared) + HEADER_ROOM > fc.control_max_bytes:
            raise ValueError(f"federation.control_max_bytes ({fc.control_max_bytes}) is too small for this model: a put of its "
                             f"weights and prototypes is {nbytes(shared)} bytes; set it to at least {nbytes(shared) + HEADER_ROOM}")
        self.state_path = self.state_dir / "federation.json"
        self.round = 0
        self.samples_total = 0
        self.samples_since_round = 0
        self.round_at = 0.0  # unix time the last global model was applied (0: none in this run)
        self.counts = np.zeros(self.num_classes, dtype=np.int64)
        # The reference the node's local learning is measured from: the last global model applied, or the
        # weights of the last round's get (what the node replied with), and samples_since_round then.
        self.ref_path = self.state_dir / "federation_ref.npz"
        self._ref: dict[str, torch.Tensor] | None = None
        self._ref_samples = 0
        self._load()
        self._requests: deque[_Request] = deque()
        self._claim = threading.Lock()  # a request is started by the learner or cancelled by its client, never both
        self._global: list[tuple[torch.Tensor, torch.Tensor]] = []  # (param, global value) for the FedProx pull
        self._mu = 0.0
        self._last_save = time.monotonic()
        self._save_failed = False
        bind = fc.control_bind or f"ipc://{(self.state_dir / 'control.ipc').resolve()}"
        self.server = ControlServer(bind, {"status": self._status, "get": self._queued, "put": self._put},
                                    records=self.state_dir / "control.jsonl", max_bytes=fc.control_max_bytes,
                                    max_frames=len(self.spec) + 1 + SPARE_FRAMES, log_max_bytes=fc.control_log_max_bytes,
                                    curve=self._curve(fc, curve, learner))
        self.endpoint: str | None = None

    @staticmethod
    def _curve(fc: FederationConfig, curve: CurveConfig | None, learner: Any) -> CurveKeys | None:
        """The node's CURVE keys for a remote control channel; ``ValueError`` naming the keys when they are missing."""
        if not fc.control_allow_remote:
            return None
        if curve is None:  # the daemon's learner carries the whole configuration
            curve = getattr(getattr(getattr(learner, "config", None), "node", None), "curve", None)
        if curve is None or not curve.enabled or not curve.server_secret_key or not curve.allowed_keys_dir:
            raise ValueError("federation.control_allow_remote: true needs node.curve.enabled: true with node.curve.server_secret_key "
                             "and node.curve.allowed_keys_dir (the control channel can replace the model, so a remote one "
                             "takes only allowed keys; create them with: edge-node keys DIR)")
        for key in ("server_secret_key", "allowed_keys_dir"):
            if not Path(getattr(curve, key)).exists():
                raise ValueError(f"node.curve.{key}: {getattr(curve, key)} does not exist (create keys with: edge-node keys DIR)")
        return CurveKeys(str(curve.server_secret_key), str(curve.allowed_keys_dir), curve.reload_s)

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
        if self.ref_path.exists():  # the last global model applied, or the weights of the last round's reply
            try:
                with np.load(self.ref_path) as ref:
                    state = self.learner.model.state_dict()
                    loaded = {k: torch.from_numpy(np.array(ref[f"{MODEL_PREFIX}{k}"])).to(v) for k, v in state.items()
                              if v.dtype.is_floating_point}
                    samples = int(ref[REF_SAMPLES]) if REF_SAMPLES in ref.files else 0
                if all(loaded[k].shape == state[k].shape for k in loaded):
                    self._ref, self._ref_samples = loaded, samples
            except (OSError, ValueError, KeyError) as err:  # unreadable: a rejoin then replaces the local learning
                log.warning(f"cannot read {self.ref_path} ({err}); the next put replaces this node's weights",
                            extra={"event": "federation_ref_unreadable", "error": str(err)})

    def _save(self) -> bool:
        """Write federation.json; on a full disk (any ``OSError``) log once and return False (retried later)."""
        self._last_save = time.monotonic()
        try:
            atomic_write_json(self.state_path, {"round": self.round, "samples_total": self.samples_total,
                                                "samples_since_round": self.samples_since_round,
                                                "counts": self.counts.tolist()}, indent=None)
        except OSError as err:
            if not self._save_failed:
                log.error(f"cannot write {self.state_path} ({err}); the round is kept in memory and the write retried",
                          extra={"event": "federation_save_failed", "error": str(err)})
            self._save_failed = True
            return False
        if self._save_failed:
            log.warning(f"{self.state_path} written again", extra={"event": "federation_save_resumed"})
            self._save_failed = False
        return True

    def _save_ref(self, arrays: dict[str, np.ndarray], samples: int = 0) -> None:
        """Write the reference (the global weights just applied, or the weights a round's reply carried, and
        ``samples_since_round`` then) in one file, so a node restarted before the next merge carries exactly
        what it learned after it, not its reply's learning a second time. Never raises."""
        tmp = self.ref_path.with_suffix(".tmp.npz")
        try:
            np.savez(tmp, **{k: v for k, v in arrays.items() if k.startswith(MODEL_PREFIX)},
                     **{REF_SAMPLES: np.asarray(samples, dtype=np.int64)})
            tmp.replace(self.ref_path)
        except OSError as err:  # a full disk: the reference stays in memory; a restart rejoins without it
            log.error(f"cannot write {self.ref_path} ({err})", extra={"event": "federation_ref_failed", "error": str(err)})

    # ------------------------------------------------------------------ control thread
    def _status(self, header: dict[str, Any], arrays: dict[str, np.ndarray]) -> tuple[dict[str, Any], None]:
        return {"type": "status", "round": self.round, "samples_since_round": self.samples_since_round,
                "samples_total": self.samples_total}, None

    def _put(self, header: dict[str, Any], arrays: dict[str, np.ndarray]):
        try:
            rnd, mu = check_put(header, arrays, self.spec, self.fc.max_abs_weight)
        except ControlError as err:
            log.warning("put refused", extra={"event": "put_refused", "code": err.code, "reason": err.message[:300]})
            raise
        return self._queued(header, arrays, rnd, mu)

    def _queued(self, header: dict[str, Any], arrays: dict[str, np.ndarray], rnd: int = 0, mu: float = 0.0):
        req = _Request(header["type"], header, arrays, rnd, mu)
        with self._claim:
            if len(self._requests) >= MAX_QUEUED_REQUESTS:
                raise ControlError("busy", f"{len(self._requests)} requests already wait for the learner; retry shortly")
            self._requests.append(req)
        self.wake()
        if not req.done.wait(SERVICE_WAIT_S):
            with self._claim:
                cancelled = req.state == "queued"
                if cancelled:  # never applied later: the client was told it was not
                    req.state = "cancelled"
                    self._requests.remove(req)
            if cancelled:
                raise ControlError("busy", f"the learner did not reach the end of its micro-batch within {SERVICE_WAIT_S:.0f} s; "
                                           "nothing was changed, retry")
            if not req.done.wait(SERVICE_WAIT_S):  # started just now: an apply takes milliseconds
                raise ControlError("busy", "the learner started this request late and has not finished it; check the node's log")
        if req.error is not None:
            raise req.error
        assert req.result is not None
        return req.result

    # ------------------------------------------------------------------ in-process (the simulation's nodes)
    def reply(self, rnd: int) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """Round ``rnd``'s get, called on the learner's own thread (no control channel): what a ``train`` reply carries."""
        return self._get({"type": "get", "round": int(rnd)})

    def save(self) -> bool:
        """Write ``federation.json`` now (False on a full disk; see :meth:`_save`)."""
        return self._save()

    def merge(self, rnd: int, arrays: dict[str, np.ndarray], proximal_mu: float = 0.0) -> dict[str, Any]:
        """Round ``rnd``'s put, called on the learner's own thread: checked like a control-channel put, then applied."""
        header = {"type": "put", "round": rnd, "proximal_mu": proximal_mu}
        rnd, mu = check_put(header, arrays, self.spec, self.fc.max_abs_weight)
        return self._apply(_Request("put", header, arrays, rnd, mu))[0]

    # ------------------------------------------------------------------ learner thread
    def has_pending(self) -> bool:
        return bool(self._requests)

    def after_batch(self, labels: Iterable[int]) -> None:
        """Learner thread, after a micro-batch: count what was learned, FedProx pull, serve requests."""
        n = count_labels(self.counts, labels)
        self.samples_since_round += n
        self.samples_total += n
        if self._mu > 0 and n:
            step = min(self.lr * self._mu, 1.0)  # at most all the way to the global weights, never past them
            with torch.no_grad():
                for param, glob in self._global:
                    param.sub_(step * (param - glob))
        if time.monotonic() - self._last_save > 2.0:
            self._save()
        self.service()

    def service(self) -> None:
        """Serve queued get / put requests (learner thread, between micro-batches)."""
        while True:
            with self._claim:
                if not self._requests:
                    return
                req = self._requests.popleft()
                req.state = "started"
            try:
                req.result = self._get(req.header) if req.kind == "get" else self._apply(req)
            except BaseException as err:  # reported to the client; the learner keeps going
                req.error = err
            req.done.set()

    def _get(self, request: dict[str, Any] | None = None) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """The shared arrays; a round's get (its header carries ``round``: the ClientApp's ``train`` reply)
        moves the reference: what the node learns after it is carried over that round's merge."""
        header, _ = self._status({}, {})
        header["type"] = "state"
        arrays = learner_arrays(self.learner, self.counts)
        if request is not None and isinstance(request.get("round"), int) and not isinstance(request.get("round"), bool):
            self._ref = {k: v.detach().clone() for k, v in self.learner.model.state_dict().items() if v.dtype.is_floating_point}
            self._ref_samples = self.samples_since_round
            self._save_ref(arrays, self._ref_samples)
        return header, arrays

    def _carry(self) -> tuple[dict[str, torch.Tensor] | None, int]:
        """(weights learned since the reference, samples learned since it): kept over a put.

        Without it a put replaced the weights and zeroed ``samples_since_round``: whatever the node
        learned after its reply (while the other nodes finished the round), and all its learning since
        its last merge when it rejoined after a restart or missed rounds, was in neither the global
        model nor the node. ``w <- w_global + (w - w_ref)`` keeps it, and the samples it came from count
        in the next round's FedAvg weight.
        """
        if self._ref is None:  # never merged nor replied in this state folder: nothing to measure from
            return None, 0
        state = self.learner.model.state_dict()
        return {k: state[k].detach() - ref for k, ref in self._ref.items()}, max(self.samples_since_round - self._ref_samples, 0)

    def _apply(self, req: _Request) -> tuple[dict[str, Any], None]:
        carry, carried = self._carry()
        apply_global(self.learner, req.arrays, carry)  # all or nothing
        self._mu = req.mu
        params = dict(self.learner.model.named_parameters())
        self._global = [(p, torch.from_numpy(np.array(req.arrays[f"{MODEL_PREFIX}{n}"])).to(p))
                        for n, p in params.items()] if self._mu > 0 else []  # the pull is towards the global weights
        self._ref = {k: torch.from_numpy(np.array(req.arrays[f"{MODEL_PREFIX}{k}"])).to(v)
                     for k, v in self.learner.model.state_dict().items() if v.dtype.is_floating_point}
        self._ref_samples = 0
        self._save_ref(req.arrays)
        self.round = req.round
        self.samples_since_round = carried
        self.round_at = time.time()
        try:
            self.checkpoint()
        except OSError as err:  # a full disk: the merged model is learned from in memory; a restart rejoins (put again)
            log.error(f"checkpoint after the put of round {self.round} failed ({err}); the merged model is in memory",
                      extra={"event": "put_checkpoint_failed", "round": self.round, "error": str(err)})
        self._save()
        log.info("global model applied", extra={"event": "put_applied", "round": self.round})
        return {"type": "ok", "round": self.round}, None
