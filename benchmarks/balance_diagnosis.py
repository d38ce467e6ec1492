"""Why does MBS admission not beat CBRS on a corrupted stream?  Measured per policy (issue 14, item 1).

Streams one corrupted stream (default ``corrupted-video-50``: Gaussian noise on the video of half
of the AV-Digits training samples) through ``Learner.observe`` for each variant of
:data:`benchmarks.balance_sweep.VARIANTS` and records, after every micro-batch of 32:

* ``buffer.csv``: the share of corrupted samples in the replay buffer, overall and per class;
* ``batches.csv``: the batch's median MBS, how many of its samples are corrupted, how many lie
  above the median, and how many corrupted samples the policy selected;
* ``mbs.csv``: every sample's MBS (the confidence ratio the policy saw), whether it was corrupted,
  on which side of the batch median it lay, and whether it was selected.

The MBS is read from the policy's own selection context: the learner's policy is wrapped in a
recorder that computes ``p_audio / p_video`` from the context it is handed (``ctx.p``, the first
modality over the second), then delegates.
Writes ``diagnosis.png`` (buffer share over time; MBS of clean vs corrupted samples with the batch
medians; corrupted share of the selected samples) and prints a summary table.

Usage: python benchmarks/balance_diagnosis.py --out docs/results/balance_diagnosis [--variants cbrs,mbs,...] [--seeds 1]
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.balance_sweep import VARIANTS  # noqa: E402
from benchmarks.common import plt_figure, run_stream, save_figure  # noqa: E402

DEFAULT_VARIANTS = "cbrs,mbs,mbs-paper-split,mbs-pooled,mbs-pooled-abs-log,mbs-class,cbrs-mbs-evict"
BUFFER_FIELDS = ["variant", "seed", "samples", "class", "items", "corrupted", "share"]
BATCH_FIELDS = ["variant", "seed", "samples", "n", "corrupted", "above_median", "corrupted_above_median", "median_mbs",
                "selected", "corrupted_selected"]
MBS_FIELDS = ["variant", "seed", "samples", "label", "corrupted", "p_audio", "p_video", "mbs", "above_median", "selected"]


class Recorder:
    """Wraps a selection policy; remembers the MBS, median and chosen rows of the last ``select``."""

    def __init__(self, policy: Any) -> None:
        self.policy = policy
        self.loss = policy.loss
        self.last: tuple[np.ndarray, np.ndarray, np.ndarray, float, np.ndarray, np.ndarray] | None = None

    def select(self, ctx):
        from edge_runtime.learning.policies.scoring.mbs import mbs
        from edge_runtime.learning.policies.admission.mbs import batch_median

        out = self.policy.select(ctx)
        if len(ctx.p) != 2:
            raise ValueError(f"balance_diagnosis records the MBS of two modalities (audio and video); the stream has {list(ctx.p)}")
        p_1, p_2 = ctx.p.values()  # the model's order: audio, video
        score = mbs(p_1, p_2).detach().cpu().double()
        self.last = (score.numpy(), ctx.labels.cpu().numpy(), out.indices.cpu().numpy(), float(batch_median(score)),
                     p_1.detach().cpu().double().numpy(), p_2.detach().cpu().double().numpy())
        return out

    def state_dict(self) -> dict:
        return self.policy.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.policy.load_state_dict(state)


class Probe:
    """Called after each micro-batch (see :func:`benchmarks.common.run_stream`); collects the three tables."""

    def __init__(self, variant: str, seed: int) -> None:
        self.variant, self.seed = variant, seed
        self.buffer: list[dict] = []
        self.batches: list[dict] = []
        self.mbs: list[dict] = []

    def __call__(self, learner, done: int, chunk: list) -> None:
        if not isinstance(learner.policy, Recorder):
            learner.policy = Recorder(learner.policy)  # the first batch's selection is not recorded
            return
        tag = {"variant": self.variant, "seed": self.seed, "samples": done}
        per_class: dict[int, list[int]] = {}
        buf = learner.buffer
        for key in buf.keys():
            s = buf.get(key)
            per_class.setdefault(int(s.label), []).append(1 if s.meta.get("corrupted") else 0)
        flags = [f for v in per_class.values() for f in v]
        self.buffer.append({**tag, "class": "all", "items": len(flags), "corrupted": sum(flags), "share": np.mean(flags) if flags else 0.0})
        for c, v in sorted(per_class.items()):
            self.buffer.append({**tag, "class": c, "items": len(v), "corrupted": sum(v), "share": float(np.mean(v))})
        last = learner.policy.last
        labels = [s.label for s in chunk]
        if last is None or len(last[1]) != len(chunk) or last[1].tolist() != labels:
            return  # rows are not the chunk in order (eval or invalid samples): nothing to pair
        score, _, chosen, median, pa, pv = last
        bad = np.array([1 if s.meta.get("corrupted") else 0 for s in chunk])
        above = score > median
        picked = np.zeros(len(chunk), dtype=bool)
        picked[chosen] = True
        self.batches.append({**tag, "n": len(chunk), "corrupted": int(bad.sum()), "above_median": int(above.sum()),
                             "corrupted_above_median": int((bad.astype(bool) & above).sum()), "median_mbs": median,
                             "selected": int(picked.sum()), "corrupted_selected": int((bad.astype(bool) & picked).sum())})
        for j in range(len(chunk)):
            self.mbs.append({**tag, "label": labels[j], "corrupted": int(bad[j]), "p_audio": float(pa[j]), "p_video": float(pv[j]), "mbs": float(score[j]),
                             "above_median": int(above[j]), "selected": int(picked[j])})


def run_one(job: dict) -> tuple[list[dict], list[dict], list[dict], float]:
    probe = Probe(job["variant"], job["seed"])
    row, _ = run_stream({**job, "preset": VARIANTS[job["variant"]]}, probe=probe)
    return probe.buffer, probe.batches, probe.mbs, row["final_accuracy"]


def _write(path: Path, fields: list[str], rows: list[dict]) -> None:
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=fields)
        w.writeheader()
        for r in rows:
            w.writerow({k: f"{v:.6g}" if isinstance(v, float) else v for k, v in r.items()})


def summary(buffer: list[dict], batches: list[dict], mbs: list[dict], final: dict[str, list[float]]) -> list[dict]:
    """Per variant: final buffer share of corrupted samples (mean, min and max over classes), the
    corrupted share of what it selected, and of the samples above the batch median."""
    out = []
    for v in final:
        end = max(int(r["samples"]) for r in buffer if r["variant"] == v)
        last = [r for r in buffer if r["variant"] == v and int(r["samples"]) == end]
        overall = [float(r["share"]) for r in last if r["class"] == "all"]
        classes = [float(r["share"]) for r in last if r["class"] != "all"]
        b = [r for r in batches if r["variant"] == v]
        sel = sum(r["selected"] for r in b)
        out.append({"variant": v, "final_accuracy": float(np.mean(final[v])), "buffer_corrupted": float(np.mean(overall)),
                    "class_min": min(classes), "class_max": max(classes),
                    "selected_corrupted": sum(r["corrupted_selected"] for r in b) / sel if sel else float("nan"),
                    "above_median_corrupted": sum(r["corrupted_above_median"] for r in b) / max(1, sum(r["above_median"] for r in b)),
                    "stream_corrupted": sum(r["corrupted"] for r in b) / max(1, sum(r["n"] for r in b))})
    return out


def plot(buffer: list[dict], batches: list[dict], mbs: list[dict], summ: list[dict], out: Path, stream: str) -> Path:
    plt, fig, axes = plt_figure(3, width=5.0, height=4.4)
    ax = axes[0]
    for s in summ:
        v = s["variant"]
        pts = sorted({int(r["samples"]) for r in buffer if r["variant"] == v})
        ys = [100 * np.mean([float(r["share"]) for r in buffer if r["variant"] == v and r["class"] == "all" and int(r["samples"]) == x]) for x in pts]
        ax.plot(pts, ys, label=v, linewidth=2 if v == "cbrs" else 1.1)
    ax.axhline(100 * summ[0]["stream_corrupted"], color="black", linestyle=":", linewidth=1, label="share in the stream")
    ax.set_xlabel("samples seen")
    ax.set_ylabel("corrupted samples in the buffer (%)")
    ax.set_title("replay buffer composition over time", fontsize=10)
    ax.legend(fontsize=6)
    ax.grid(alpha=0.3)
    ax = axes[1]
    ref = [r for r in mbs if r["variant"] == "cbrs"] or mbs
    logs = {k: np.log10([max(float(r["mbs"]), 1e-12) for r in ref if int(r["corrupted"]) == k]) for k in (0, 1)}
    bins = np.linspace(min(np.min(x) for x in logs.values() if len(x)), max(np.max(x) for x in logs.values() if len(x)), 40)
    for k, name in ((0, "clean"), (1, "corrupted")):
        if len(logs[k]):
            ax.hist(logs[k], bins=bins, alpha=0.55, label=f"{name} ({len(logs[k])})")
    medians = np.log10([max(float(r["median_mbs"]), 1e-12) for r in batches if r["variant"] == ref[0]["variant"]])
    ax.axvspan(float(np.percentile(medians, 10)), float(np.percentile(medians, 90)), color="grey", alpha=0.25, label="batch median (10-90 %)")
    ax.axvline(0.0, color="black", linewidth=0.8, label="MBS = 1")
    ax.set_xlabel("log10 MBS = log10(p_audio / p_video)")
    ax.set_ylabel("samples")
    ax.set_title(f"MBS of clean vs corrupted samples ({ref[0]['variant']} run)", fontsize=10)
    ax.legend(fontsize=6)
    ax = axes[2]
    names = [s["variant"] for s in summ]
    ax.bar(range(len(names)), [100 * s["selected_corrupted"] for s in summ], color="tab:red", alpha=0.7, label="of the selected")
    ax.plot(range(len(names)), [100 * s["buffer_corrupted"] for s in summ], "ko", label="in the final buffer")
    ax.axhline(100 * summ[0]["stream_corrupted"], color="black", linestyle=":", linewidth=1)
    ax.set_xticks(range(len(names)), names, rotation=35, ha="right", fontsize=7)
    ax.set_ylabel("corrupted (%)")
    ax.set_title("corrupted share admitted per policy", fontsize=10)
    ax.legend(fontsize=6)
    ax.grid(alpha=0.3, axis="y")
    return save_figure(plt, fig, out / "diagnosis.png", f"Diagnosis on {stream}: who gets into the buffer")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("docs/results/balance_diagnosis"))
    ap.add_argument("--variants", default=DEFAULT_VARIANTS, help="comma-separated variants of balance_sweep.py")
    ap.add_argument("--stream", default="corrupted-video-50", help="a stream of device_sim.scenario.STREAMS (default corrupted-video-50)")
    ap.add_argument("--size", type=int, default=100, help="buffer size in items (default 100)")
    ap.add_argument("--seeds", type=int, default=1, help="seeds 0 .. N-1 (default 1)")
    ap.add_argument("--limit", type=int, default=None, help="samples streamed per run (default: all 2,400)")
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--config", default="configs/avdigits.yaml")
    ap.add_argument("--quick", action="store_true", help="cbrs and mbs, 320 samples")
    args = ap.parse_args(argv)
    variants = [v for v in args.variants.split(",") if v]
    for v in variants:
        if v not in VARIANTS:
            ap.error(f"--variants: unknown {v!r}; choose from {', '.join(VARIANTS)}")
    if args.quick:
        variants, args.limit, args.seeds = ["cbrs", "mbs"], 320, 1
    args.out.mkdir(parents=True, exist_ok=True)
    jobs = [{"stream": args.stream, "variant": v, "buffer_items": args.size, "seed": s, "limit": args.limit, "config": args.config}
            for s in range(args.seeds) for v in variants]
    buffer, batches, mbs, final = [], [], [], {v: [] for v in variants}
    for (b, bt, m, acc), job in zip(_ordered(jobs, args.jobs), jobs):
        buffer += b
        batches += bt
        mbs += m
        final[job["variant"]].append(acc)
        print(f"  {job['variant']} seed {job['seed']}: final accuracy {acc:.3f}", flush=True)
    _write(args.out / "buffer.csv", BUFFER_FIELDS, buffer)
    _write(args.out / "batches.csv", BATCH_FIELDS, batches)
    _write(args.out / "mbs.csv", MBS_FIELDS, mbs)
    summ = summary(buffer, batches, mbs, final)
    print("| variant | final acc % | corrupted in final buffer % (class min-max) | corrupted of the selected % | corrupted above the batch median % |")
    print("| --- | --- | --- | --- | --- |")
    for s in summ:
        print(f"| {s['variant']} | {100 * s['final_accuracy']:.1f} | {100 * s['buffer_corrupted']:.0f} ({100 * s['class_min']:.0f}-{100 * s['class_max']:.0f}) | "
              f"{100 * s['selected_corrupted']:.0f} | {100 * s['above_median_corrupted']:.0f} |")
    print(f"stream: {100 * summ[0]['stream_corrupted']:.0f} % corrupted")
    print(f"wrote {plot(buffer, batches, mbs, summ, args.out, args.stream)}")
    return 0


def _ordered(jobs: list[dict], workers: int):
    """``run_one`` of every job, results in job order (in ``workers`` spawned processes when > 1)."""
    if workers <= 1:
        yield from map(run_one, jobs)
        return
    import multiprocessing as mp

    with mp.get_context("spawn").Pool(workers) as pool:
        yield from pool.imap(run_one, jobs)


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.exit(main())
