"""Markdown tables of the committed benchmark results (docs/results.md's tables are this output).

Usage: python benchmarks/report.py [--buffer docs/results/buffer_sweep] [--ratio docs/results/ratio_sweep]
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import mean_ci  # noqa: E402


def _rows(path: Path) -> list[dict]:
    if not path.exists():
        return []
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def buffer_tables(rows: list[dict], field: str = "final_accuracy") -> str:
    out = []
    policies = list(dict.fromkeys(r["policy"] for r in rows))
    sizes = sorted({int(r["buffer_items"]) for r in rows})
    for scenario in dict.fromkeys(r["scenario"] for r in rows):
        seeds = len({r["seed"] for r in rows if r["scenario"] == scenario})
        out.append(f"**{scenario}**, {field.replace('_', ' ')} (%), mean ± 95% CI over {seeds} seeds; best mean per size in bold\n")
        out.append("| policy | " + " | ".join(str(s) for s in sizes) + " |")
        out.append("| --- | " + " | ".join("---" for _ in sizes) + " |")
        cells: dict[tuple[str, int], tuple[float, float]] = {}
        for p in policies:
            for s in sizes:
                vals = [float(r[field]) for r in rows if r["scenario"] == scenario and r["policy"] == p and int(r["buffer_items"]) == s]
                if vals:
                    cells[(p, s)] = mean_ci(vals)
        best = {s: max((cells[(p, s)][0] for p in policies if (p, s) in cells), default=np.nan) for s in sizes}
        for p in policies:
            parts = []
            for s in sizes:
                if (p, s) not in cells:
                    parts.append("")
                    continue
                m, h = cells[(p, s)]
                text = f"{100 * m:.1f} ± {100 * h:.1f}"
                parts.append(f"**{text}**" if m == best[s] else text)
            out.append(f"| {p} | " + " | ".join(parts) + " |")
        out.append("")
    return "\n".join(out)


def ratio_tables(rows: list[dict]) -> str:
    out = []
    strategies = [s for s in ("el2n", "grand", "mbs", "bmmal") if any(r["strategy"] == s for r in rows)]
    pretrain = sorted({int(r["pretrain_epochs"]) for r in rows if r["strategy"] in strategies})
    ratios = sorted({float(r["keep_ratio"]) for r in rows if r["strategy"] in strategies})
    base = [float(r["accuracy"]) for r in rows if r["strategy"] == "base"]
    seeds = len({r["seed"] for r in rows})
    if base:
        m, h = mean_ci(base)
        n = max(int(r["kept"]) for r in rows if r["strategy"] == "base")
        out.append(f"BASE (all {n:,} samples): {100 * m:.1f} ± {100 * h:.1f} %. Test accuracy (%), mean over {seeds} seeds; "
                   "columns: KEPT fraction; best per cell in bold.\n")
    out.append("| R | strategy | " + " | ".join(f"{q:g}" for q in ratios) + " |")
    out.append("| --- | --- | " + " | ".join("---" for _ in ratios) + " |")

    def mean(strategy: str, r: int | None, q: float) -> float:
        vals = [float(x["accuracy"]) for x in rows if x["strategy"] == strategy and abs(float(x["keep_ratio"]) - q) < 1e-9
                and (r is None or int(x["pretrain_epochs"]) == r)]
        return float(np.mean(vals)) if vals else np.nan

    rand = {q: mean("random", None, q) for q in ratios}
    out.append("| - | random | " + " | ".join(f"{100 * rand[q]:.1f}" for q in ratios) + " |")
    for r in pretrain:
        cell = {(s, q): mean(s, r, q) for s in strategies for q in ratios}
        for s in strategies:
            parts = []
            for q in ratios:
                v = cell[(s, q)]
                best = max(cell[(t, q)] for t in strategies)
                parts.append(f"**{100 * v:.1f}**" if v == best else f"{100 * v:.1f}")
            out.append(f"| {r} | {s} | " + " | ".join(parts) + " |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--buffer", type=Path, default=Path("docs/results/buffer_sweep"))
    ap.add_argument("--ratio", type=Path, default=Path("docs/results/ratio_sweep"))
    args = ap.parse_args(argv)
    b = _rows(args.buffer / "results.csv")
    if b:
        print(buffer_tables(b))
        print(buffer_tables(b, "visual_only_accuracy"))
    r = _rows(args.ratio / "results.csv")
    if r:
        print(ratio_tables(r))
        w = _rows(args.ratio / "wins.csv")
        if w:
            print("\n| strategy | robustness score | efficiency score | cells won |\n| --- | --- | --- | --- |")
            for x in w:
                print(f"| {x['strategy']} | {x['robustness_score']} | {x['efficiency_score']} | {x['cells_won']} / {x['cells']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
