"""``edge-node demo``'s own arithmetic, without processes: what was streamed (against a direct count),
the sentence naming a cut, the command line's default (the whole stream), and the page it writes."""

from __future__ import annotations

import argparse
import html
import pytest

from edge_runtime.cli.demo import (DEFAULT_SECONDS, add_demo_parser, check_demo_args, class_ranges, completeness,
                                   config_rows, stream_plan, streamed_per_class)
from edge_runtime.core.config import ConfigError, load_config


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command")
    add_demo_parser(sub, lambda p: p.add_argument("--set", action="append", default=[]))
    return parser


def test_the_demo_streams_the_whole_data_set_unless_told_otherwise():
    args = _parser().parse_args(["demo"])
    assert args.seconds is None is DEFAULT_SECONDS and args.samples == 6000
    check_demo_args(args)
    with pytest.raises(ConfigError, match="--seconds must be > 0"):
        check_demo_args(_parser().parse_args(["demo", "--seconds", "0"]))


def test_class_ranges():
    assert class_ranges([0, 1, 2, 5, 7, 8]) == "0-2, 5, 7-8"
    assert class_ranges([9, 6, 7, 8]) == "6-9" and class_ranges([]) == ""


def test_streamed_classes_match_a_direct_count_of_what_each_device_sent():
    config = load_config(None)
    plan = stream_plan(config, samples=600, seed=3, devices=4)
    sent = {0: 150, 1: 40, 2: 0, 3: 149}
    direct: dict[int, int] = {}
    for k, n in sent.items():  # device k replays stream positions k, k+4, k+8, ... (no class skew)
        for label in plan["labels"][k::4][:n]:
            direct[int(label)] = direct.get(int(label), 0) + 1
    assert streamed_per_class(plan["labels"], plan["owner"], sent) == dict(sorted(direct.items()))
    assert sum(streamed_per_class(plan["labels"], plan["owner"], {k: 150 for k in range(4)}).values()) == 600
    assert [sorted(t) for t in plan["tasks"]] == plan["tasks"] and len(plan["tasks"]) == 5


def _fleet(sent: list[int], total: int, complete: bool) -> dict:
    devices = [{"device": f"uav-{k}", "sent": n} for k, n in enumerate(sent)]
    return {"devices": devices, "totals": {"samples": total, "sent": sum(sent), "complete": complete, "failed": 0,
                                           "unanswered": 0}}


def test_a_time_cut_is_named_with_the_samples_and_the_classes_never_streamed():
    config = load_config(None)
    plan = stream_plan(config, samples=1000, seed=0, devices=2)
    cut = completeness(plan, _fleet([100, 100], 1000, False), 60.0, learned=[4, 6])
    first_task = plan["tasks"][0]
    assert cut["classes_streamed"] == first_task, "the first 200 samples are all of the first task"
    never = [c for c in range(10) if c not in first_task]
    assert cut["classes_never_streamed"] == never and not cut["complete"]
    assert cut["cut"] == (f"stopped at the 60 s limit (--seconds) after 200 of 1,000 samples; "
                          f"classes {class_ranges(never)} never streamed")
    whole = completeness(plan, _fleet([500, 500], 1000, True), None, learned=list(range(10)))
    assert whole["complete"] and whole["cut"] is None and whole["classes_never_streamed"] == []


def test_config_table_names_policy_buffer_model_and_limit():
    rows = config_rows(load_config(None, ["buffer.max_items=77"]), 4, 6000, 10, 1000, 0, None)
    assert rows["buffer size"].startswith("77 items") and rows["time limit"] == "none (the whole stream)"
    assert rows["admission policy"].startswith("all") and "visual tiny" in rows["model"]
    assert html.escape(rows["held-out test"]) == "1,000 samples, all classes, never streamed"
