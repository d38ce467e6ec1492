"""``device-sim``: simulated UAV / sensor clients.

Sub-commands:
  datasets  list the data sets this machine can replay, and why the others are not available
  inspect   print the tensor shapes, labels and modality kinds of the first samples of a data set
  run       stream a data set from N simulated devices to an edge node (ZeroMQ, wire protocol v1);
            live progress, then a JSON summary; exit 0 when every sample sent got a verdict
            (and the stream ended, or --seconds stopped it); 1 when the node could not be reached,
            refused the devices, went away, or left samples unanswered (one line on stderr says
            which); 2 for a usage or configuration error; 130 after Ctrl-C (the first stops sending,
            waits briefly for verdicts in flight and prints the summary; a second aborts at once).
            With an eval split (--eval-split, or the data set's default such as watch's held-out
            subjects), once every device's training stream is acknowledged one more device,
            PREFIX-eval-0, sends that split as split eval (predicted, never learned), so the node's
            held-out accuracy is the accuracy on that split
"""

from __future__ import annotations

import argparse
import json
import logging
import secrets
import signal
import sys
import threading
import time
from collections import Counter
from typing import Any

import numpy as np

from device_sim.datasets import registry
from edge_runtime import __version__
from device_sim.scenario import (CORRUPTIONS, SCENARIOS, STREAMS, Corrupted, StreamOrder, assign_devices, assign_natural, iid,
                                 make_order, make_stream, natural_shards)

SHARDINGS = ("auto", "natural", "dealt")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="device-sim",
        description="edge-runtime device simulator: replays data sets as sample streams.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n", 1)[1],
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    ds = sub.add_parser("datasets", help="list the data sets available on this machine", description="List every data set and whether it can be replayed here.")
    ds.add_argument("--root", default=None, help="folder of your copy of a data set read from files, to check")
    datasets = sorted(registry.names())
    ins = sub.add_parser("inspect", help="show shapes, labels and kinds of a data set's first samples", description="Print a JSON summary of the first N samples of a data set.")
    ins.add_argument("name", choices=datasets, help="data set name")
    ins.add_argument("-n", type=int, default=200, help="samples to look at (default 200)")
    _data_options(ins)
    run = sub.add_parser("run", help="stream a data set from N simulated devices to an edge node",
                         description="Each device is a DEALER (routing id uav-K) that says hello, keeps at most its credit "
                         "window of samples unacknowledged, resends after a timeout with the same seq, and resumes from the "
                         "node's next_seq after a restart. Device K replays positions K, K+N, ... of the scenario's order, or, "
                         "for a data set with natural shards (watch: one subject per device), its shard's positions.")
    run.add_argument("--endpoint", default="tcp://127.0.0.1:5555", help="node endpoint (default tcp://127.0.0.1:5555)")
    run.add_argument("--devices", type=int, default=4, help="simulated devices (default 4)")
    run.add_argument("--infer", default=None, metavar="ENDPOINT",
                     help="follow the node's published ONNX models (its node.model_bind) and predict on this device's own "
                          "samples; the summary reports accuracy and latency per model version")
    run.add_argument("--device-prefix", default="uav", help="devices are named PREFIX-0, PREFIX-1, ...; give each fleet its own (default uav)")
    run.add_argument("--dataset", choices=datasets, default="synthetic", help="data set (default synthetic; `device-sim datasets` says which this machine can replay)")
    _data_options(run)
    run.add_argument("--scenario", choices=list(SCENARIOS), default="class-incremental", help="stream order (default class-incremental)")
    run.add_argument("--classes-per-task", type=int, default=2, help="classes per task, class-incremental (default 2)")
    run.add_argument("--blur", type=float, default=0.1, help="blurry: share of each task's positions holding other tasks' samples (default 0.1)")
    run.add_argument("--drift-width", type=float, default=0.3, help="gradual: transition length between tasks, in task lengths (default 0.3)")
    run.add_argument("--corrupt-fraction", type=float, default=0.0, help="share of samples with one modality corrupted (default 0)")
    run.add_argument("--corrupt-kind", choices=list(CORRUPTIONS), default="noise", help="noise | occlusion | drop | degrade (default noise)")
    run.add_argument("--corrupt-modality", default="video", metavar="NAME",
                     help="modality to corrupt, any the data set's samples hold; rank-4 frames are corrupted in blocks of pixels, "
                          "other arrays along time (default video)")
    run.add_argument("--stream", choices=list(STREAMS), default=None,
                     help="a named stream where modalities are unequal (corrupted-audio-25, weak-video, ...; docs/datasets.md, "
                          "'Streams where modalities are unequal'); instead of --corrupt-*")
    run.add_argument("--class-skew", type=float, default=0.0,
                     help="0: classes spread evenly over devices; 1: each device sees only its own classes (default 0; "
                          "implies --sharding dealt)")
    run.add_argument("--sharding", choices=list(SHARDINGS), default="auto",
                     help="how stream positions go to devices: natural = by the data set's natural shards (watch: subjects; "
                          "folder: each file's device), round-robin over devices when their numbers differ; dealt = position "
                          "K to device K mod N (and --class-skew); auto = natural when the data set has shards and no "
                          "--class-skew is given (default auto)")
    run.add_argument("--classes", default=None, metavar="LIST",
                     help="stream only these class ids, e.g. 0,1,2 (a box whose drones see a share of the classes; default: all)")
    run.add_argument("--samples", type=int, default=None,
                     help="samples in the stream over all devices (a generated data set such as synthetic: its size, default 5000; "
                          "a data set read from files: the stream is cut to this many)")
    run.add_argument("--rate", type=float, default=None, help="samples/s per device (default: as fast as credit allows)")
    run.add_argument("--jitter", type=float, default=0.0, help="+- fraction of random jitter on the send interval (default 0)")
    run.add_argument("--window", type=int, default=64, help="max unacknowledged samples per device, capped by the node's credit (default 64)")
    run.add_argument("--resend-timeout", type=float, default=2.0,
                     help="initial resend timeout in seconds; after the first verdicts it follows the measured "
                          "send-to-verdict time as TCP's does (RFC 6298: SRTT + 4 RTTVAR, 1..60 s, doubled on each "
                          "timeout) (default 2)")
    run.add_argument("--hello-timeout", type=float, default=5.0,
                     help="give up when the node has said nothing this many seconds after connecting, and say why "
                          "(no node at the endpoint, a CURVE key it refuses); exit 1 (default 5). A peer that "
                          "completed the ZeroMQ handshake is given at least --drain-timeout: a busy node answers late")
    run.add_argument("--fresh", action="store_true",
                     help="a new run: device ids get a run token (PREFIX-K.TOKEN), so the node streams every sample "
                          "again instead of answering that it holds them (without it a rerun resumes: samples the node "
                          "already decided are skipped). Each run adds new ids to the node's ledger and, with CURVE, "
                          "to the key's ids (node.curve.max_ids_per_key)")
    run.add_argument("--eval-every", type=int, default=None, help="every K-th sample of a device is sent as split eval (default: none)")
    run.add_argument("--eval-split", default=None, metavar="SPLIT",
                     help="after every device's training stream is acknowledged, device PREFIX-eval-0 sends this split of the "
                          "data set as split eval (predicted, never learned): the node's held-out accuracy is then measured on "
                          "it (with --eval-every, on both). Default: the data set's own (watch: test, the held-out subjects; "
                          "folder: test when it has one), none for the others; 'none' sends none")
    run.add_argument("--seed", type=int, default=0, help="seed of data set and order (default 0)")
    run.add_argument("--seconds", type=float, default=None,
                     help="stop sending after this many seconds, then wait for the verdicts of what was sent (default: when the stream ends)")
    run.add_argument("--drain-timeout", type=float, default=30.0,
                     help="after --seconds: wait at most this long for in-flight verdicts; the rest is reported unanswered (default 30)")
    run.add_argument("--curve-dir", default=None, help="CURVE keys folder from `edge-node keys DIR`: uses DIR/device.key_secret and DIR/server.key")
    run.add_argument("--curve-name", default="device", help="certificate name in --curve-dir (default device)")
    run.add_argument("--summary", default=None, metavar="FILE", help="also write the JSON summary here")
    run.add_argument("--no-progress", action="store_true", help="no live progress line")
    run.add_argument("--debug", action="store_true", help="debug logging on stderr (and tracebacks of unexpected errors)")
    return parser


def _data_options(p: argparse.ArgumentParser) -> None:
    """``--split``, and the options the registered data sets declare (help prefixed with who takes them)."""
    p.add_argument("--split", choices=registry.splits(), default="train", help="split to replay (default train)")
    for option, users in registry.options():
        p.add_argument(option.flag, help=f"{' / '.join(users)}: {option.help}", **option.argparse_kwargs())


def _open(args: argparse.Namespace, name: str) -> Any:
    """The data set of the command line, or SystemExit(2) with the reason."""
    try:
        return registry.build_from(name, vars(args))
    except (ValueError, FileNotFoundError) as err:
        print(f"device-sim: {err}", file=sys.stderr)
        raise SystemExit(2) from None


def _only_classes(labels, indices, task_of, spec: str):
    """Keep the stream positions whose label is in the comma-separated ``spec`` (--classes)."""
    try:
        wanted = sorted({int(c) for c in spec.split(",") if c.strip()})
    except ValueError:
        raise ValueError(f"--classes {spec!r}: expected comma-separated class ids, e.g. 0,1,2") from None
    keep = np.isin(np.asarray(labels)[indices], wanted)
    if not keep.any():
        raise ValueError(f"--classes {spec!r}: no sample of the stream has one of these labels")
    return indices[keep], task_of[keep]


def fleet_data(args: argparse.Namespace) -> tuple[Any, StreamOrder, np.ndarray]:
    """What ``run`` streams: the data set (corrupted as asked), the stream order, and each position's device.

    Raises ValueError (or FileNotFoundError) naming the option to change.
    """
    return _training_data(args)[1:]


def _owners(args: argparse.Namespace, dataset: Any, order: StreamOrder) -> np.ndarray:
    """The device of every stream position: by natural shard (:func:`assign_natural`) or dealt (:func:`assign_devices`)."""
    sharding = getattr(args, "sharding", "auto")
    shards = natural_shards(dataset)
    if sharding == "natural":
        if shards is None:
            raise ValueError(f"--sharding natural: {args.dataset} has no natural shards (subjects, recording devices); "
                             "use --sharding dealt")
        if args.class_skew:
            raise ValueError("--class-skew deals classes over devices; it needs --sharding dealt (or auto), not natural")
    if shards is not None and (sharding == "natural" or (sharding == "auto" and not args.class_skew)):
        owner, note = assign_natural(shards[order.indices], args.devices, getattr(dataset, "shard_noun", "natural shard"))
        if note:
            print(f"device-sim: {note}", file=sys.stderr)
        return owner
    return assign_devices(dataset.labels()[order.indices], args.devices, args.class_skew, seed=args.seed)


def _training_data(args: argparse.Namespace) -> tuple[Any, Any, StreamOrder, np.ndarray]:
    """The data set as built (before corruption), then :func:`fleet_data`'s three."""
    dataset = raw = registry.build_from(args.dataset, vars(args))
    if args.stream and args.corrupt_fraction:
        raise ValueError("--stream and --corrupt-fraction both corrupt the stream: give one of them")
    if args.stream:
        dataset = make_stream(args.stream, dataset, seed=args.seed)[0]
    if args.corrupt_fraction:
        dataset = Corrupted(dataset, args.corrupt_fraction, args.corrupt_kind, args.corrupt_modality, seed=args.seed)
    order = make_order(args.scenario, dataset.labels(), seed=args.seed, classes_per_task=args.classes_per_task,
                       blur=args.blur, drift_width=args.drift_width)
    if args.samples is not None:  # a generated data set already has exactly --samples (every order is a permutation)
        order.indices, order.task_of = order.indices[: args.samples], order.task_of[: args.samples]
    if args.classes:
        order.indices, order.task_of = _only_classes(dataset.labels(), order.indices, order.task_of, args.classes)
    return raw, dataset, order, _owners(args, dataset, order)


def eval_data(args: argparse.Namespace, raw: Any) -> tuple[str, Any, StreamOrder] | None:
    """The split sent as ``eval`` after the training stream (``--eval-split``), or None.

    ``raw`` is the training data set as built (its ``eval_split`` attribute is the default).  The
    whole split is sent, in a seeded shuffled order, restricted to ``--classes`` when given (not
    cut by ``--samples``); a ``weak-*`` stream degrades it as it does any test split.
    ValueError naming the option to change.
    """
    chosen = getattr(args, "eval_split", None)
    if chosen == "none":
        return None
    if chosen is None:
        chosen = getattr(raw, "eval_split", None)
        if chosen is None or chosen == args.split:
            return None
    if chosen == args.split:
        raise ValueError(f"--eval-split {chosen} is the split streamed for training (--split {args.split}); evaluate on another split")
    cls = registry.dataset_class(args.dataset)
    if not cls.splits:
        raise ValueError(f"--eval-split {chosen}: {args.dataset} is generated and has no splits to hold out; use --eval-every")
    if chosen not in cls.splits:
        raise ValueError(f"--eval-split {chosen}: {args.dataset} has the splits {', '.join(cls.splits)} (or give none)")
    held = registry.build_from(args.dataset, {**vars(args), "split": chosen})
    if args.stream:
        held = make_stream(args.stream, raw, held, seed=args.seed)[1]
    order = iid(held.labels(), seed=args.seed)
    if args.classes:
        order.indices, order.task_of = _only_classes(held.labels(), order.indices, order.task_of, args.classes)
    return chosen, held, order


def _cmd_run(args: argparse.Namespace) -> int:
    from pathlib import Path

    import zmq.auth

    from device_sim.client import ClientConfig
    from device_sim.fleet import run_fleet

    for name in ("devices", "window", "classes_per_task"):
        if getattr(args, name) < 1:
            print(f"device-sim: --{name.replace('_', '-')} must be at least 1 (got {getattr(args, name)})", file=sys.stderr)
            return 2
    for name in ("seconds", "drain_timeout"):
        value = getattr(args, name)
        if value is not None and (value < 0 or (name == "seconds" and value == 0)):
            print(f"device-sim: --{name.replace('_', '-')} must be {'> 0' if name == 'seconds' else '>= 0'} (got {value})", file=sys.stderr)
            return 2
    if args.samples is not None and args.samples < 1:
        print(f"device-sim: --samples must be at least 1 (got {args.samples})", file=sys.stderr)
        return 2
    try:
        raw, dataset, order, owner = _training_data(args)
        held = eval_data(args, raw)
    except (ValueError, FileNotFoundError) as err:
        print(f"device-sim: {err}", file=sys.stderr)
        return 2
    curve: dict = {}
    if args.curve_dir:
        d = Path(args.curve_dir)
        try:
            public, secret = zmq.auth.load_certificate(d / f"{args.curve_name}.key_secret")
            server, _ = zmq.auth.load_certificate(d / "server.key")
        except (OSError, ValueError) as err:
            print(f"device-sim: --curve-dir {d}: cannot read keys ({err}); create them with: edge-node keys {d}", file=sys.stderr)
            return 2
        curve = {"curve_public": public, "curve_secret": secret, "curve_server": server}
    try:
        base = ClientConfig(endpoint=args.endpoint, device_id="uav-0", max_in_flight=args.window, rate=args.rate,
                            jitter=args.jitter, resend_timeout_s=args.resend_timeout, hello_give_up_s=args.hello_timeout,
                            drain_timeout_s=args.drain_timeout, **curve)
    except ValueError as err:
        print(f"device-sim: {err.args[0].replace('resend timeout', '--resend-timeout').replace('hello timeout', '--hello-timeout')}", file=sys.stderr)
        return 2
    suffix = f".{secrets.token_hex(3)}" if args.fresh else ""
    if args.fresh:
        print(f"device-sim: --fresh: a new run as {args.device_prefix}-0{suffix} .. {args.device_prefix}-{args.devices - 1}{suffix}",
              file=sys.stderr)
    interrupt = threading.Event()
    _on_sigint(interrupt, min(5.0, args.drain_timeout))
    started = time.monotonic()
    try:
        result = run_fleet(dataset, order, base, args.devices, eval_every=args.eval_every, seconds=args.seconds,
                           progress=not args.no_progress, owner=owner, prefix=args.device_prefix, infer=args.infer,
                           suffix=suffix, interrupt=interrupt, interrupt_drain_s=min(5.0, args.drain_timeout))
        if held is not None:
            result["eval"] = _run_eval(args, held, base, suffix, result, interrupt, started)
    except ValueError as err:
        print(f"device-sim: {err}", file=sys.stderr)
        return 2
    text = json.dumps(result, indent=2)
    print(text)
    if args.summary:
        Path(args.summary).write_text(text + "\n")
    return _verdict(args, result)


def _run_eval(args: argparse.Namespace, held: tuple[str, Any, StreamOrder], base: Any, suffix: str, result: dict[str, Any],
              interrupt: threading.Event, started: float) -> dict[str, Any]:
    """Send the eval split from one more device once the training stream is acknowledged; its summary."""
    from device_sim.fleet import run_fleet

    split, dataset, order = held
    totals = result["totals"]
    if result.get("interrupted") or not totals["complete"] or totals["failed"]:
        why = ("interrupted" if result.get("interrupted") else f"--seconds {args.seconds:g} stopped the training stream"
               if args.seconds and not totals["failed"] else "the training stream was not acknowledged in full")
        print(f"device-sim: {why}: split {split} not sent for evaluation", file=sys.stderr)
        return {"split": split, "skipped": why}
    left = None if args.seconds is None else args.seconds - (time.monotonic() - started)
    if left is not None and left <= 0:
        print(f"device-sim: --seconds {args.seconds:g} spent on the training stream: split {split} not sent for evaluation",
              file=sys.stderr)
        return {"split": split, "skipped": "--seconds spent"}
    print(f"device-sim: training stream acknowledged; {args.device_prefix}-eval-0{suffix} sends the {len(order.indices)} "
          f"samples of split {split} as eval (predicted, never learned)", file=sys.stderr)
    out = run_fleet(dataset, order, base, 1, seconds=left, progress=not args.no_progress, prefix=f"{args.device_prefix}-eval",
                    suffix=suffix, interrupt=interrupt, interrupt_drain_s=min(5.0, args.drain_timeout), split="eval")
    return {"split": split, **out}


def _on_sigint(interrupt: threading.Event, drain_s: float) -> None:
    """First Ctrl-C: set ``interrupt`` (stop sending, drain ``drain_s``, summary, exit 130); second: exit 130 at once."""
    def handler(signum: int, frame: Any) -> None:
        if interrupt.is_set():
            sys.stderr.write("\ndevice-sim: aborted (second Ctrl-C); no summary\n")
            sys.stderr.flush()
            import os

            os._exit(130)
        interrupt.set()
        sys.stderr.write(f"\ndevice-sim: interrupted: sending stopped, waiting up to {drain_s:g} s for verdicts in flight "
                         "(Ctrl-C again to abort)\n")
        sys.stderr.flush()

    signal.signal(signal.SIGINT, handler)


def _resume_line(totals: dict[str, Any]) -> str | None:
    """What resuming did: nothing to say, or that the node already held some or all of the run's samples."""
    skipped, devices = totals["skipped_resume"], totals["devices"]
    if not skipped:
        return None
    who = f"{devices} device{'s' if devices > 1 else ''}"
    if totals["sent"] == 0 and totals["complete"]:
        return f"{who}: the node already holds every sample of this run ({skipped} skipped); use --fresh to stream again"
    return (f"{who} resumed: the node already held {skipped} of this run's samples (skipped); sent {totals['sent']} more; "
            "use --fresh to stream everything again")


def _verdict(args: argparse.Namespace, result: dict[str, Any]) -> int:
    """The closing line(s) on stderr and the exit code of ``run``: the training stream's, then the eval split's."""
    code = _phase_verdict(args, result, "")
    evaluation = result.get("eval")
    if code == 0 and evaluation is not None and "totals" in evaluation:
        code = _phase_verdict(args, evaluation, f"eval split {evaluation['split']}: ")
    return code


def _phase_verdict(args: argparse.Namespace, result: dict[str, Any], what: str) -> int:
    """The closing line(s) and exit code of one fleet run (``what`` prefixes its lines)."""
    from device_sim.fleet import failure_lines

    totals = result["totals"]
    failures = failure_lines(result["devices"])
    for line in failures:
        print(f"device-sim: {what}{line}", file=sys.stderr)
    resumed = _resume_line(totals)
    if resumed:
        print(f"device-sim: {what}{resumed}", file=sys.stderr)
    if result.get("interrupted"):
        print(f"device-sim: {what}interrupted after {totals['sent']} samples sent, {totals['acked']} acked, "
              f"{totals['unanswered']} unanswered", file=sys.stderr)
        return 130
    if failures:
        return 1
    if totals["unanswered"]:
        print(f"device-sim: {what}{totals['unanswered']} of {totals['sent']} samples sent got no verdict within the "
              f"{args.drain_timeout:g} s drain timeout (node overloaded or unreachable)" if args.seconds else
              f"device-sim: {what}{totals['unanswered']} of {totals['sent']} samples sent got no verdict (interrupted)", file=sys.stderr)
        return 1
    if not totals["complete"]:
        if args.seconds:
            print(f"device-sim: {what}stopped at --seconds {args.seconds:g} after {totals['sent']} of {totals['samples']} samples; "
                  "every sample sent got a verdict", file=sys.stderr)
            return 0
        print(f"device-sim: {what}{totals['samples'] - totals['decided']} of {totals['samples']} samples got no verdict "
              "(node unreachable, or interrupted)", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "run":
        logging.basicConfig(level=logging.DEBUG if args.debug else logging.WARNING, stream=sys.stderr,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        try:
            return _cmd_run(args)
        except KeyboardInterrupt:  # Ctrl-C before the devices started (e.g. while importing torch)
            print("\ndevice-sim: interrupted before streaming started", file=sys.stderr)
            return 130
    if args.command == "datasets":
        for name, (ok, why) in registry.availability(args.root).items():
            print(f"{name}: {'available' if ok else 'not available'} ({why})")
        return 0
    if args.n < 1:
        print(f"device-sim: -n must be at least 1 (got {args.n})", file=sys.stderr)
        return 2
    ds = _open(args, args.name)
    n = min(args.n, len(ds))
    first = ds.sample(0)
    labels, kinds = Counter(), Counter()
    for i in range(n):
        s = ds.sample(i)
        labels[s.label] += 1
        kinds[s.meta.get("kind", "-")] += 1
    print(json.dumps({
        "dataset": args.name,
        "size": len(ds),
        "tensors": {k: {"dtype": str(v.dtype), "shape": list(v.shape)} for k, v in first.tensors.items()},
        "labels": dict(sorted(labels.items())),
        "kinds": dict(kinds),
    }, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
