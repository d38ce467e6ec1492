"""One snapshot of a node for its operator: the dict ``edge-node status --json`` prints.

The same shape comes from two sources:

* :func:`from_metrics`: the node's Prometheus series (its registry in-process, or a scrape of
  ``/metrics`` parsed with ``prometheus_client``'s text parser); no per-device table, since no
  series is labelled by device;
* ``state_dir/status.json``, which the node writes itself (:mod:`edge_runtime.ops.observe`): the
  metrics plus the per-device table, the checkpoint path and rates; :func:`read_state_dir`
  completes it with the state DB, opened read-only.

Times in a snapshot are unix seconds (``*_at``), for people to read; durations (``uptime_s``,
``*_age_s``) are measured on the monotonic clock where there is one: the node writes them into
``status.json`` as of ``written_at`` with its ``time.monotonic()`` reading (``clock``), and
:func:`with_ages` advances them by the time since, so that a wall clock set back or forward shows
no negative uptime or age. A duration only wall-clock times give (a scrape of ``/metrics``, a
checkpoint file's mtime) is None when the clock went back past it.
Rates (``rates``) are per second over the interval between two snapshots (:func:`with_rates`).
Series whose name starts with ``edge_federation_`` are copied under ``federation`` (without the
prefix), so a federation round counter shows up without this module knowing it.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from pathlib import Path
from typing import Any, Iterable

from edge_runtime.core.names import EVAL_ACCURACY, MODALITY_EVAL_ACCURACY, PREQUENTIAL_ACCURACY, SAMPLES_SEEN, UPDATES

SCHEMA = 1
FEDERATION_PREFIX = "edge_federation_"
VERDICT_KINDS = ("admitted", "trained", "skipped", "eval", "invalid")

Values = dict[str, list[tuple[dict[str, str], float]]]


def metric_values(families: Iterable[Any]) -> Values:
    """Sample name -> [(labels, value)] of Prometheus metric families (a registry's ``collect()`` or parsed text)."""
    out: Values = {}
    for family in families:
        for sample in family.samples:
            out.setdefault(sample.name, []).append((dict(sample.labels), float(sample.value)))
    return out


def parse_metrics_text(text: str) -> Values:
    """:func:`metric_values` of a ``/metrics`` page."""
    from prometheus_client.parser import text_string_to_metric_families

    return metric_values(text_string_to_metric_families(text))


def _total(values: Values, name: str) -> float | None:
    rows = values.get(name)
    return None if not rows else sum(v for _, v in rows)


def _int(value: float | None) -> int | None:
    return None if value is None else int(value)


def _by(values: Values, name: str, label: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for labels, value in values.get(name, []):
        key = labels.get(label, "")
        out[key] = out.get(key, 0.0) + value
    return out


def _positive(value: float | None) -> float | None:
    """A gauge that is 0 until first set (a timestamp, a version) means 'none yet'."""
    return value if value else None


def accuracy_view(summary: dict[str, Any]) -> dict[str, Any]:
    """A snapshot's ``accuracy`` from a learner summary: prequential, streamed eval, and the streamed eval
    accuracy of each modality's own head by name (None from a summary written before it existed)."""
    return {"prequential": summary.get(PREQUENTIAL_ACCURACY), "streamed_eval": summary.get(EVAL_ACCURACY),
            "modality_streamed_eval": summary.get(MODALITY_EVAL_ACCURACY)}


def from_metrics(values: Values) -> dict[str, Any]:
    """A snapshot (without per-device table, checkpoint path or rates) from the node's series."""
    info = (values.get("edge_node_info") or [({}, 0.0)])[0][0]
    verdicts = {k: int(v) for k, v in sorted(_by(values, "edge_samples_decided_total", "verdict").items())}
    learned = _total(values, "edge_samples_learned")
    classes = {k: int(v) for k, v in _by(values, "edge_buffer_class_items", "label").items() if v > 0}
    federation = {name[len(FEDERATION_PREFIX):]: rows[0][1] if len(rows) == 1 else {json.dumps(l, sort_keys=True): v for l, v in rows}
                  for name, rows in values.items() if name.startswith(FEDERATION_PREFIX) and not name.endswith("_created")}
    pid = info.get("pid")
    return {
        "schema": SCHEMA,
        "state": "running",
        "pid": int(pid) if pid and pid.isdigit() else None,
        "started_at": _positive(_total(values, "edge_start_time_seconds")),
        "endpoint": info.get("endpoint") or None,
        "devices": {"connected": _int(_total(values, "edge_devices")), "known": _int(_total(values, "edge_devices_known")), "top": None},
        "samples": {
            "received": _int(_total(values, "edge_samples_received_total")),
            "decided": sum(verdicts.values()),
            "verdicts": verdicts,
            "duplicates": _int(_total(values, "edge_duplicates_total")),
            "learned": _int(learned),
        },
        "queue": {"depth": _int(_total(values, "edge_queue_depth")), "bytes": _int(_total(values, "edge_queue_bytes"))},
        "credit_in_flight": _int(_total(values, "edge_credit_in_flight")),
        "buffer": {"items": _int(_total(values, "edge_buffer_items")), "bytes": _int(_total(values, "edge_buffer_bytes")),
                   "classes": dict(sorted(classes.items(), key=lambda kv: _label_key(kv[0])))},
        "accuracy": {  # the gauges read 0 before the first labelled sample
            "prequential": _total(values, "edge_prequential_accuracy") if learned else None,
            "streamed_eval": _total(values, "edge_eval_accuracy") if verdicts.get("eval") else None,
            # each modality's own head, by name: a series appears with the first eval sample
            "modality_streamed_eval": _by(values, "edge_modality_eval_accuracy", "modality") or None,
        },
        UPDATES: _int(_total(values, "edge_updates")),
        "update_seconds": {"count": _int(_total(values, "edge_update_seconds_count")), "sum": _total(values, "edge_update_seconds_sum")},
        "checkpoint": {"count": _int(_total(values, "edge_checkpoints_total")),
                       "written_at": _positive(_total(values, "edge_last_checkpoint_timestamp_seconds")), "path": None},
        "model": {"version": _int(_positive(_total(values, "edge_model_version"))), "endpoint": info.get("model_endpoint") or None},
        "federation": federation or None,
        "disk": _disk(values),
    }


def _disk(values: Values) -> dict[str, Any] | None:
    """Failing writes to the state folder from ``edge_disk_failing`` / ``edge_disk_errors_total`` (None: a node without them)."""
    if "edge_disk_failing" not in values:
        return None
    failing = {what: {} for what, v in sorted(_by(values, "edge_disk_failing", "what").items()) if v > 0}
    errors = {what: int(v) for what, v in sorted(_by(values, "edge_disk_errors_total", "what").items()) if v > 0}
    return {"ok": not failing, "failing": failing, "errors": errors}


def _label_key(label: str) -> tuple[int, str]:
    return (int(label), "") if label.lstrip("-").isdigit() else (1 << 30, label)


def _rate(new: float | None, old: float | None, dt: float) -> float | None:
    if new is None or old is None or dt <= 0 or new < old:
        return None
    return (new - old) / dt


def with_rates(cur: dict[str, Any], prev: dict[str, Any] | None, dt: float) -> dict[str, Any]:
    """``cur`` plus ``rates``: received, decided and per-verdict samples/s and the mean update latency
    between ``prev`` and ``cur`` (``dt`` seconds apart); None where ``prev`` is missing or a counter restarted."""
    p = prev or {}
    ps, cs = p.get("samples", {}), cur["samples"]
    pu, cu = p.get("update_seconds", {}), cur["update_seconds"]
    batches = _rate(cu.get("count"), pu.get("count"), 1.0)
    latency = None
    if batches and cu.get("sum") is not None and pu.get("sum") is not None:
        latency = (cu["sum"] - pu["sum"]) / batches
    cur["rates"] = {
        "interval_s": dt if prev else None,
        "received": _rate(cs.get("received"), ps.get("received"), dt) if prev else None,
        "decided": _rate(cs.get("decided"), ps.get("decided"), dt) if prev else None,
        "verdicts": {k: _rate(v, ps.get("verdicts", {}).get(k, 0), dt) for k, v in cs["verdicts"].items()} if prev else {},
        "update_latency_s": latency,
    }
    return cur


_BOOT_ID: list[str | None] = []


def boot_id() -> str | None:
    """This boot of the machine (Linux: ``/proc/sys/kernel/random/boot_id``), or None: two
    ``time.monotonic()`` readings compare across processes only within one boot."""
    if not _BOOT_ID:
        try:
            _BOOT_ID.append(Path("/proc/sys/kernel/random/boot_id").read_text().strip() or None)
        except OSError:
            _BOOT_ID.append(None)
    return _BOOT_ID[0]


def _wall_age(now: float, then: float | None) -> float | None:
    """``now - then`` of two wall-clock times; None when unknown or negative (the clock was set back)."""
    if not then:
        return None
    age = now - then
    return age if age >= 0 else None


def since_written(snap: dict[str, Any], now: float | None = None, mono: float | None = None) -> float:
    """Seconds since the node took ``snap``: on the monotonic clock when ``snap`` carries the node's reading
    and this process runs on the same boot, else on the wall clock; never negative."""
    clock = snap.get("clock") or {}
    if clock.get("monotonic") is not None and clock.get("boot_id") and clock["boot_id"] == boot_id():
        mono = time.monotonic() if mono is None else mono
        return max(0.0, mono - clock["monotonic"])
    now = time.time() if now is None else now
    return _wall_age(now, snap.get("written_at")) or 0.0


def with_ages(snap: dict[str, Any], now: float | None = None, mono: float | None = None) -> dict[str, Any]:
    """Set ``uptime_s``, the checkpoint's ``age_s`` and each device's ``last_seen_age_s`` as of now.

    Durations the node measured (a snapshot of ``status.json`` carries ``clock``) are advanced by
    :func:`since_written` (uptime only while the node runs); others are wall-clock differences as of
    ``now``, None where negative. ``now`` / ``mono``: the ``time.time()`` / ``time.monotonic()`` readings
    to use (default: read now).
    """
    now = time.time() if now is None else now
    measured = snap.get("clock") is not None
    since = since_written(snap, now, mono) if measured else 0.0
    if measured and snap.get("uptime_s") is not None:
        snap["uptime_s"] = snap["uptime_s"] + (0.0 if snap.get("stopped_at") else since)
    else:
        snap["uptime_s"] = _wall_age(snap.get("stopped_at") or now, snap.get("started_at"))
    ck = snap.get("checkpoint") or {}
    if measured and ck.get("age_s") is not None:
        ck["age_s"] = ck["age_s"] + since
    else:
        ck["age_s"] = _wall_age(now, ck.get("written_at"))
    for dev in (snap.get("devices") or {}).get("top") or []:
        if measured and dev.get("last_seen_age_s") is not None:
            dev["last_seen_age_s"] = dev["last_seen_age_s"] + since
        else:
            dev["last_seen_age_s"] = _wall_age(now, dev.get("last_seen"))
    return snap


# ----------------------------------------------------------------------------------- state dir


def newest_checkpoint(state_dir: Path) -> tuple[str, float] | None:
    """(path, mtime) of the newest ``checkpoints/ckpt-*.pt`` (the name carries the step), or None."""
    found = sorted((state_dir / "checkpoints").glob("ckpt-*.pt"), reverse=True)
    for path in found:
        try:
            return str(path), path.stat().st_mtime
        except OSError:  # removed by the node's rotation between glob and stat
            continue
    return None


def store_view(db: Path) -> dict[str, Any] | None:
    """Buffer histogram and known devices from the state DB, opened read-only (a WAL reader takes no lock
    that could make the learner wait); None when there is no DB."""
    if not db.exists():
        return None
    try:  # absolute, not resolved: a folder reached through a symlink (/proc/<pid>/root/...) stays that folder
        conn = sqlite3.connect(db.absolute().as_uri() + "?mode=ro", uri=True, timeout=1.0, isolation_level=None)
    except sqlite3.Error as err:
        raise ValueError(f"{db}: cannot be opened ({err}); is it a node's state.db?") from None
    try:
        conn.execute("PRAGMA query_only=1")
        conn.execute("BEGIN")  # one read transaction (a WAL snapshot, no lock): both queries see the same commit
        rows = conn.execute("SELECT label, COUNT(*), COALESCE(SUM(nbytes), 0) FROM items GROUP BY label ORDER BY label").fetchall()
        (known,) = conn.execute("SELECT COUNT(*) FROM devices").fetchone()
        conn.execute("COMMIT")
    except sqlite3.DatabaseError as err:
        raise ValueError(f"{db}: cannot be read ({err}); is it a node's state.db?") from None
    finally:
        conn.close()
    return {"buffer": {"items": sum(n for _, n, _ in rows), "bytes": int(sum(b for _, _, b in rows)),
                       "classes": {str(label): int(n) for label, n, _ in rows}},
            "known_devices": int(known)}


def _pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: it exists
        return True
    return True


def _read_json(path: Path, tries: int = 1) -> dict[str, Any] | None:
    """``path`` as JSON (None when missing); ``tries`` > 1: read again after a torn read (see below)."""
    for attempt in range(tries):
        try:
            return json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as err:
            if attempt + 1 < tries and isinstance(err, ValueError):
                time.sleep(0.05)
                continue
            raise ValueError(f"{path} cannot be read ({err}); is it a node's state_dir?") from None
    return None


def read_state_dir(state_dir: str | Path) -> dict[str, Any]:
    """The snapshot of the node that owns ``state_dir`` (running or not), ages included.

    ``status.json`` (the node's own, refreshed every ``node.status_every_s``) gives the live numbers;
    the state DB gives the buffer histogram and known devices as of its newest commit. A status file
    whose process is gone is reported with state ``stale``.
    """
    state_dir = Path(state_dir)
    if not state_dir.is_dir():
        raise ValueError(f"--state-dir {state_dir}: no such folder; give the node's node.state_dir")
    snap = _read_json(state_dir / "status.json", tries=3)  # on a full disk the node rewrites it in place
    summary = _read_json(state_dir / "summary.json")
    store = store_view(state_dir / "state.db")
    if snap is None and store is None and summary is None:
        raise ValueError(f"{state_dir} holds no status.json, summary.json or state.db; give the node's node.state_dir")
    if snap is None:  # written by a node without the status file: what the files say
        snap = from_metrics({})
        snap["state"] = "unknown"
        if summary:
            snap["samples"].update(decided=summary.get("decided"), learned=summary.get(SAMPLES_SEEN))
            snap["accuracy"] = accuracy_view(summary)
            snap[UPDATES] = summary.get(UPDATES)
            snap["endpoint"] = summary.get("endpoint")
    elif snap.get("state") == "running" and not _pid_alive(snap.get("pid")):
        snap["state"] = "stale"  # the process died without writing its final status (killed, crashed)
    if store is not None:
        snap["buffer"] = store["buffer"]
        snap["devices"]["known"] = max(store["known_devices"], snap["devices"].get("known") or 0)
    if not (snap.get("checkpoint") or {}).get("path"):
        newest = newest_checkpoint(state_dir)
        if newest:
            snap.setdefault("checkpoint", {}).update(path=newest[0], written_at=newest[1], age_s=None)  # from its mtime
    snap["source"] = f"state_dir {state_dir}"
    return with_ages(snap)


def read_metrics(url: str, interval: float = 1.0) -> dict[str, Any]:
    """The snapshot from two scrapes of ``url`` taken ``interval`` seconds apart (for the rates), ages included."""
    import urllib.error
    import urllib.request

    def scrape() -> Values:
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:
                return parse_metrics_text(resp.read().decode())
        except (urllib.error.URLError, OSError, ValueError) as err:
            raise ValueError(f"--metrics {url}: cannot scrape ({err}); is node.metrics_port set and the node running?") from None

    first = from_metrics(scrape())
    t0 = time.monotonic()
    time.sleep(interval)
    snap = with_rates(from_metrics(scrape()), first, time.monotonic() - t0)
    snap["source"] = f"metrics {url}"
    return with_ages(snap)
