"""``device-sim``: simulated UAV / sensor clients.

Sub-commands:
  datasets  list the data sets this machine can replay, and why the others are not available
  inspect   print the tensor shapes, labels and modality kinds of the first samples of a data set
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter

from device_sim.datasets import DATASETS, get_dataset


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="device-sim",
        description="edge-runtime device simulator: replays data sets as sample streams.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n", 1)[1],
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser("datasets", help="list the data sets available on this machine", description="List every data set and whether it can be replayed here.")
    ins = sub.add_parser("inspect", help="show shapes, labels and kinds of a data set's first samples", description="Print a JSON summary of the first N samples of a data set.")
    ins.add_argument("name", choices=sorted(DATASETS), help="data set name")
    ins.add_argument("-n", type=int, default=200, help="samples to look at (default 200)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "datasets":
        for name in sorted(DATASETS):
            print(f"{name}: available (embedded, generated on the fly)")
        return 0
    if args.n < 1:
        print(f"device-sim: -n must be at least 1 (got {args.n})", file=sys.stderr)
        return 2
    ds = get_dataset(args.name)
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
