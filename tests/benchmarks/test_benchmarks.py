"""Each benchmark's --quick run: exits 0, writes the CSV columns it documents, and real non-empty PNGs."""

from __future__ import annotations

import pytest

import csv
import json
import statistics
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent.parent
SCRIPT_ENV = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
"""Scripts run as the README runs them, ``python benchmarks/NAME.py`` from the root with no PYTHONPATH."""


def _run(script: str, out: Path, *extra: str) -> str:
    r = subprocess.run([sys.executable, f"benchmarks/{script}", "--quick", "--out", str(out), *extra],
                       capture_output=True, text=True, env=SCRIPT_ENV, cwd=str(ROOT), timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stdout


def _png_ok(path: Path) -> None:
    assert path.stat().st_size > 1000, path
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size[0] > 200 and im.size[1] > 200
        assert len(np.unique(np.asarray(im.convert("L")))) > 10  # not a blank canvas


def _columns(path: Path) -> tuple[list[str], list[dict]]:
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        return list(reader.fieldnames or []), list(reader)


@pytest.mark.slow
def test_buffer_sweep_quick_and_resume(tmp_path):
    out = tmp_path / "bs"
    _run("buffer_sweep.py", out)
    cols, rows = _columns(out / "results.csv")
    for c in ("dataset", "scenario", "policy", "buffer_items", "buffer_bytes", "seed", "final_accuracy",
              "average_incremental_accuracy", "forgetting", "audio_only_accuracy", "visual_only_accuracy",
              "prequential_accuracy", "samples_seen", "updates", "seconds"):
        assert c in cols
    assert len(rows) == 8 and {r["policy"] for r in rows} == {"reservoir", "mbs"}
    for r in rows:
        assert 0 <= float(r["final_accuracy"]) <= 1 and int(r["samples_seen"]) == 960
        assert int(r["buffer_bytes"]) > 0
    for name in ("accuracy_vs_buffer.png", "unimodal_vs_buffer.png", "accuracy_vs_samples.png"):
        _png_ok(out / name)
    again = _run("buffer_sweep.py", out)
    assert "8 already in" in again and "0 to do" in again  # resumable: nothing is run twice
    assert len(_columns(out / "results.csv")[1]) == 8


@pytest.mark.slow
def test_ratio_sweep_quick(tmp_path):
    out = tmp_path / "rs"
    stdout = _run("ratio_sweep.py", out)
    cols, rows = _columns(out / "results.csv")
    assert cols == ["seed", "pretrain_epochs", "strategy", "keep_ratio", "kept", "accuracy", "audio_accuracy", "video_accuracy"]
    assert {r["strategy"] for r in rows} == {"el2n", "grand", "mbs", "random", "base"}
    assert len(rows) == 1 + 2 + 3 * 2 * 2
    wcols, wins = _columns(out / "wins.csv")
    assert wcols[:3] == ["strategy", "robustness_score", "efficiency_score"]
    assert sum(int(w["cells_won"]) for w in wins) >= 4  # every (R, ratio) cell has a winner (ties count for each)
    _png_ok(out / "accuracy_vs_ratio.png")
    assert "robustness" in stdout


@pytest.mark.slow
def test_throughput_quick(tmp_path):
    out = tmp_path / "tp"
    _run("throughput.py", out)
    cols, rows = _columns(out / "throughput.csv")
    assert cols == ["metric", "value", "unit"]
    metrics = {r["metric"]: float(r["value"]) for r in rows}
    assert metrics["ingest ratio node/raw"] > 0 and metrics["learner ratio observe/plain"] > 0
    assert any(m.startswith("policy mbs") for m in metrics)
    _png_ok(out / "throughput.png")


@pytest.mark.slow
def test_learner_step_quick_writes_every_printed_figure(tmp_path):
    out = tmp_path / "ls"
    stdout = _run("learner_step.py", out)
    r = json.loads((out / "learner_step.json").read_text())
    assert r["samples"] == 320 and r["repeats"] == 2 and len(r["ratios"]) == 2
    assert r["ratio"] == statistics.median(r["ratios"]) and r["ratio_min"] == min(r["ratios"])
    assert abs(sum(r["shares"].values()) - 1.0) < 1e-9
    assert f"median {r['ratio']:.3f}" in stdout


@pytest.mark.slow
def test_fleet_scale_quick(tmp_path):
    out = tmp_path / "fs"
    stdout = _run("fleet_scale.py", out)
    cols, rows = _columns(out / "fleet_scale.csv")
    assert cols == ["devices", "repeat", "total_rate", "seconds", "samples_acked", "node_cpu_s", "cpu_ms_per_sample",
                    "node_rss_mib", "rss_base_mib", "rss_kib_per_device", "p50_ms", "p99_ms", "device_side_cpu_pct", "unanswered"]
    assert [int(r["devices"]) for r in rows] == [2, 5]
    for r in rows:
        acked, cpu = int(r["samples_acked"]), float(r["node_cpu_s"])
        assert acked > 0 and cpu > 0
        assert abs(float(r["cpu_ms_per_sample"]) - 1000 * cpu / acked) <= 1e-4 * float(r["cpu_ms_per_sample"]) + 1e-6
        per_device = 1024 * (float(r["node_rss_mib"]) - float(r["rss_base_mib"])) / int(r["devices"])
        assert abs(float(r["rss_kib_per_device"]) - per_device) <= 1e-3 * abs(per_device) + 0.01
        assert 0 < float(r["p50_ms"]) <= float(r["p99_ms"])
        assert int(r["unanswered"]) == 0
    assert "| devices |" in stdout
    _png_ok(out / "fleet_scale.png")


@pytest.mark.slow
def test_federation_quick(tmp_path):
    out = tmp_path / "fed"
    _run("federation.py", out)
    cols, rows = _columns(out / "federation.csv")
    assert cols == ["split", "arm", "round", "node", "classes", "samples", "accuracy", "bytes_round", "seconds_round"]
    assert {(r["split"], r["arm"]) for r in rows} == {(s, a) for s in ("class", "iid") for a in ("isolated", "federated", "single")}
    fed = [r for r in rows if r["arm"] == "federated"]
    # after a merge every node holds the same global model: one accuracy per round and split
    for split in ("class", "iid"):
        for rnd in ("1", "2"):
            assert len({r["accuracy"] for r in fed if r["split"] == split and r["round"] == rnd}) == 1
    # a round moves each node's arrays up and the global arrays down: 6 copies of the same arrays
    assert len({r["bytes_round"] for r in fed}) == 1 and int(fed[0]["bytes_round"]) % 6 == 0
    # class split: each node streams its digits only, shared digits split between two nodes
    assert [r["classes"] for r in rows if r["split"] == "class" and r["arm"] == "isolated" and r["round"] == "1"] == ["0123", "3456", "6789"]
    _png_ok(out / "federation.png")


@pytest.mark.slow
def test_ingest_quick_interleaves_and_reports_median(tmp_path):
    out = tmp_path / "ing"
    stdout = _run("ingest.py", out)
    assert stdout.count("pair ") == 2 and "median" in stdout
    cols, rows = _columns(out / "ingest.csv")
    assert cols == ["measure", "samples", "value"]
    by = {}
    for r in rows:
        by.setdefault(r["measure"], []).append(float(r["value"]))
    assert len(by["raw_samples_per_s"]) == len(by["node_samples_per_s"]) == len(by["ratio_node_raw"]) == 2
    for raw, node, ratio in zip(by["raw_samples_per_s"], by["node_samples_per_s"], by["ratio_node_raw"]):
        assert abs(ratio - node / raw) < 1e-3
    _png_ok(out / "ingest.png")


@pytest.mark.slow
def test_soak_quick_ledger_stays_within_retention(tmp_path):
    out = tmp_path / "soak"
    stdout = _run("soak.py", out)
    assert "state.db" in stdout
    cols, rows = _columns(out / "soak.csv")
    assert cols == ["decided", "state_db_mib", "verdict_rows", "rss_mib", "samples_per_s"]
    assert int(rows[-1]["decided"]) == 12_000
    # --quick: 2 devices, node.ledger_retention 1000 each; a batch (256) may not be compacted yet
    assert all(int(r["verdict_rows"]) <= 2 * (1000 + 256) for r in rows)


@pytest.mark.slow
def test_sweeps_quick_on_cremad_and_ave_fixtures(tmp_path):
    """``--dataset cremad|ave --root DIR``: the sweeps read the user's folder through device-sim's
    loaders (train split streamed, test held out, class count from the data set)."""
    from tests.support.media_fixtures import build_ave_raw, build_cremad_preprocessed

    cremad, ave = build_cremad_preprocessed(tmp_path / "cremad"), build_ave_raw(tmp_path / "ave")
    out = tmp_path / "bs"
    _run("buffer_sweep.py", out, "--dataset", "cremad", "--root", str(cremad))
    _, rows = _columns(out / "results.csv")
    assert len(rows) == 8 and {r["dataset"] for r in rows} == {"cremad"}
    assert {int(r["samples_seen"]) for r in rows} == {5}  # the fixture's train split (5 clips), not AV-Digits
    _png_ok(out / "accuracy_vs_buffer.png")
    out = tmp_path / "rs"
    _run("ratio_sweep.py", out, "--dataset", "ave", "--root", str(ave))
    _, rows = _columns(out / "results.csv")
    assert {r["strategy"] for r in rows} == {"el2n", "grand", "mbs", "random", "base"}
    assert max(int(r["kept"]) for r in rows) == 3  # BASE keeps the whole AVE fixture train split
    r = subprocess.run([sys.executable, "benchmarks/buffer_sweep.py", "--quick", "--out", str(tmp_path / "x"), "--dataset", "ave"],
                       capture_output=True, text=True, env=SCRIPT_ENV, cwd=str(ROOT), timeout=120)
    assert r.returncode == 2 and "--dataset ave needs --root DIR" in r.stderr


def test_balance_sweep_paired_differences_by_hand():
    """Seeds are matched, the interval is the Student-t one, and only an interval that excludes 0 decides."""
    import math

    from scipy import stats

    from benchmarks.balance_sweep import paired, tables

    def row(variant, seed, acc, stream="clean"):
        return {"dataset": "avdigits", "stream": stream, "variant": variant, "buffer_items": "100", "seed": str(seed), "final_accuracy": str(acc)}

    ref = [0.90, 0.92, 0.88, 0.91]
    rows = [row("cbrs", s, a) for s, a in enumerate(ref)]
    rows += [row("mbs", s, a + d) for s, (a, d) in enumerate(zip(ref, [0.02, 0.03, 0.01, 0.025]))]       # always better
    rows += [row("mbs-pooled", s, a + d) for s, (a, d) in enumerate(zip(ref, [0.05, -0.04, 0.01, -0.03]))]  # noisy
    rows += [row("random", s, a - 0.02 - 0.001 * s) for s, a in enumerate(ref[:3])]  # worse, only 3 seeds
    rows += [row("mbs-class", 9, 0.99)]  # a seed cbrs does not have: nothing to pair
    out = {p["variant"]: p for p in paired(rows)}
    assert set(out) == {"mbs", "mbs-pooled", "random"}
    for name, diffs in (("mbs", [0.02, 0.03, 0.01, 0.025]), ("mbs-pooled", [0.05, -0.04, 0.01, -0.03]), ("random", [-0.02, -0.021, -0.022])):
        d = np.array(diffs)
        half = stats.t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / math.sqrt(len(d))
        p = out[name]
        assert p["seeds"] == len(d)
        assert abs(p["mean_diff"] - d.mean()) < 1e-12
        assert abs(p["ci_low"] - (d.mean() - half)) < 1e-9 and abs(p["ci_high"] - (d.mean() + half)) < 1e-9
    assert (out["mbs"]["verdict"], out["mbs-pooled"]["verdict"], out["random"]["verdict"]) == ("win", "tie", "loss")
    text = tables(list(out.values()))
    assert f"| cbrs (accuracy %) | {100 * np.mean(ref):.1f} |" in text and "**+2.1 [" in text and "_-2.1 [" in text


@pytest.mark.slow
def test_balance_sweep_quick_and_resume(tmp_path):
    out = tmp_path / "bal"
    stdout = _run("balance_sweep.py", out, "--jobs", "2")
    cols, rows = _columns(out / "results.csv")
    assert cols[:5] == ["dataset", "stream", "variant", "buffer_items", "seed"] and "final_accuracy" in cols
    assert len(rows) == 8 and {r["variant"] for r in rows} == {"cbrs", "mbs-pooled"} and {r["stream"] for r in rows} == {"clean", "weak-video"}
    assert {int(r["samples_seen"]) for r in rows} == {256}
    _, pairs = _columns(out / "paired.csv")
    assert len(pairs) == 2
    for p in pairs:  # the mean paired difference, recomputed from the rows
        acc = {(r["variant"], r["seed"]): float(r["final_accuracy"]) for r in rows if r["stream"] == p["stream"]}
        d = [acc[("mbs-pooled", s)] - acc[("cbrs", s)] for s in ("0", "1")]
        assert abs(float(p["mean_diff"]) - np.mean(d)) < 1e-5 and int(p["seeds"]) == 2
        assert p["verdict"] in ("win", "loss", "tie")
    assert "| variant | 50 |" in stdout
    for name in ("paired_vs_buffer.png", "accuracy_vs_buffer.png"):
        _png_ok(out / name)
    again = _run("balance_sweep.py", out)
    assert "8 already in" in again and "0 to do" in again


@pytest.mark.slow
def test_balance_diagnosis_quick(tmp_path):
    out = tmp_path / "diag"
    stdout = _run("balance_diagnosis.py", out)
    _, buffer = _columns(out / "buffer.csv")
    _, batches = _columns(out / "batches.csv")
    cols, mbs = _columns(out / "mbs.csv")
    assert cols == ["variant", "seed", "samples", "label", "corrupted", "p_audio", "p_video", "mbs", "above_median", "selected"]
    assert {r["variant"] for r in buffer} == {"cbrs", "mbs"}
    for r in buffer:
        assert abs(float(r["share"]) - int(r["corrupted"]) / max(1, int(r["items"]))) < 1e-5
    for b in batches:  # the per-sample table adds up to the per-batch one, and the median splits the batch
        rows = [m for m in mbs if m["variant"] == b["variant"] and m["samples"] == b["samples"]]
        assert len(rows) == int(b["n"]) == 32
        assert sum(int(m["selected"]) for m in rows) == int(b["selected"])
        assert sum(int(m["corrupted"]) * int(m["selected"]) for m in rows) == int(b["corrupted_selected"])
        assert all((float(m["mbs"]) > float(b["median_mbs"]) * (1 + 1e-5)) <= bool(int(m["above_median"])) for m in rows)
        assert all(abs(float(m["mbs"]) - float(m["p_audio"]) / float(m["p_video"])) <= 1e-4 * float(m["mbs"]) for m in rows)
        if b["variant"] == "cbrs":
            assert int(b["selected"]) == 32  # selection all
        else:
            assert int(b["selected"]) <= 16  # Algorithm 1: floor(0.5 * 32 / 2) per side
    assert "| cbrs |" in stdout and "| mbs |" in stdout
    _png_ok(out / "diagnosis.png")


def test_balance_sweep_winners_and_goal_check():
    """Who wins where lists only intervals above zero; the goal needs wins on all four corrupted cells
    and no loss on clean, else the closest variant is the one whose worst corrupted cell is least bad."""
    from benchmarks.balance_sweep import GOAL_NO_LOSS, GOAL_WIN, winners

    def pair(variant, stream, size, m, lo, hi):
        verdict = "win" if lo > 0 else "loss" if hi < 0 else "tie"
        return {"dataset": "avdigits", "stream": stream, "buffer_items": size, "variant": variant, "seeds": 10,
                "mean_diff": m, "ci_low": lo, "ci_high": hi, "verdict": verdict}

    good = [pair("mbs-trim", st, z, 0.02, 0.01, 0.03) for st, z in GOAL_WIN] + [pair("mbs-trim", st, z, -0.01, -0.02, 0.005) for st, z in GOAL_NO_LOSS]
    # mbs wins three corrupted cells; its worst is -3 points
    bad = [pair("mbs", st, z, 0.01, 0.004, 0.02) for st, z in GOAL_WIN[:3]] + [pair("mbs", *GOAL_WIN[3], -0.03, -0.05, -0.01)]
    bad += [pair("mbs", st, z, 0.0, -0.01, 0.01) for st, z in GOAL_NO_LOSS]
    # mbs-pooled never loses more than 2 points but wins nothing
    pooled = [pair("mbs-pooled", st, z, -0.02, -0.03, -0.01) for st, z in GOAL_WIN] + [pair("mbs-pooled", st, z, 0.0, -0.01, 0.01) for st, z in GOAL_NO_LOSS]
    text = winners(good + bad)
    assert "Goal check: **met** by mbs-trim." in text
    row = next(line for line in text.splitlines() if line.startswith("| corrupted-video-50 |"))
    assert "**mbs-trim** +2.0 [+1.0, +3.0]; **mbs** +1.0 [+0.4, +2.0]" in row  # every win, best first
    clean = next(line for line in text.splitlines() if line.startswith("| clean |"))
    assert "_none_ (best mbs +0.0 [-1.0, +1.0])" in clean
    text = winners(bad + pooled)
    assert "**not met**" in text and "Closest: mbs-pooled" in text and "-2.0 [-3.0, -1.0]" in text and "(0 of 4 corrupted cells won)" in text
    assert "has not run the goal cells" in winners(bad[:2])


def test_plot_grid_wraps_panels_and_puts_the_legend_in_a_spare_cell():
    """Seven stream panels wrap four to a row; the eighth cell holds the one legend, the panels none."""
    from benchmarks.balance_sweep import _legend
    from benchmarks.common import plt_figure

    plt, fig, axes = plt_figure(7, width=2, height=2, wrap=4, sharey=True)
    try:
        assert len(axes) == 8 and fig.get_size_inches().tolist() == [8.0, 4.0]
        for ax in axes[:7]:
            ax.plot([0, 1], [0, 1], label="cbrs")
        _legend(axes, 7)
        assert [ax.get_legend() is not None for ax in axes] == [False] * 7 + [True]
        assert not axes[7].axison and all(ax.axison for ax in axes[:7])
        assert [t.get_text() for t in axes[7].get_legend().get_texts()] == ["cbrs"]
    finally:
        plt.close(fig)
    plt, fig, axes = plt_figure(3)  # without wrap: one row, as every other benchmark draws
    assert len(axes) == 3 and fig.get_size_inches().tolist() == [6.4 * 3, 4.2]
    plt.close(fig)


@pytest.mark.slow
def test_every_benchmark_command_in_the_docs_starts_as_written(tmp_path):
    """Each ``python benchmarks/NAME.py ...`` command of the README and docs/*.md names a script that runs
    from the root with no PYTHONPATH and accepts every option the command uses (``--help``: the imports and
    the argument parser, nothing measured). The checker is the docs test's (tests/test_docs.py)."""
    from tests.test_docs import check_commands, doc_commands

    commands = [c for c in doc_commands() if c.is_benchmark]
    assert len({c.script for c in commands}) >= 10, sorted({c.script for c in commands})
    problems = check_commands(commands, tmp_path)
    assert not problems, "\n".join(problems)
