"""The Grafana dashboard asks only for series a live node exports, and its provisioning fits docker/compose.yaml.

Grafana and Prometheus are not run here (no Docker engine); a real ``edge-node run`` is scraped instead and
both its /metrics page and the dashboard's PromQL are parsed.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.support.nodeproc import ROOT, NodeProcess

GRAFANA = ROOT / "docker" / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "edge-node.json"

# PromQL words that are not metric names: keywords, and label-list clauses (removed with their lists below)
_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset", "and", "or", "unless", "inf", "nan"}
_SUFFIXES = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_count", "_sum", "_created"),
             "summary": ("_count", "_sum", "_created"), "info": ("_info",)}


def promql_metric_names(expr: str) -> set[str]:
    """Metric names an expression selects: identifiers that are not functions, keywords, labels or durations."""
    e = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # string literals
    e = re.sub(r"\{[^}]*\}", "", e)  # label matchers
    e = re.sub(r"\[[^\]]*\]", "", e)  # range and subquery durations, $__rate_interval
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", e)  # label lists
    names = set()
    for m in re.finditer(r"(?<![\w.$])[A-Za-z_:][A-Za-z0-9_:]*", e):
        if e[m.end():].lstrip().startswith("(") or m.group(0).lower() in _WORDS:
            continue  # a function or aggregation, or a keyword
        names.add(m.group(0))
    return names


def test_promql_name_extraction():
    assert promql_metric_names('sum by (verdict) (rate(edge_samples_decided_total{verdict!="eval"}[5m]))') == {"edge_samples_decided_total"}
    assert promql_metric_names("histogram_quantile(0.95, sum by (le) (rate(x_bucket[$__rate_interval])))") == {"x_bucket"}
    assert promql_metric_names("time() - edge_start_time_seconds") == {"edge_start_time_seconds"}
    assert promql_metric_names("rate(a_sum[1m]) / rate(a_count[1m]) > bool 0.5") == {"a_sum", "a_count"}
    assert promql_metric_names("1e3 * up offset 5m") == {"up"}


def dashboard_exprs() -> list[tuple[str, str]]:
    """(panel title, expr) of every query in the dashboard, rows' nested panels included."""
    data = json.loads(DASHBOARD.read_text())
    out = []

    def walk(panels):
        for p in panels:
            walk(p.get("panels", []))
            for t in p.get("targets", []):
                out.append((p["title"], t["expr"]))

    walk(data["panels"])
    return out


def exported_names(text: str) -> tuple[set[str], dict[str, set[str]]]:
    """Every sample name a /metrics page declares (families without samples yet included: HELP/TYPE lines
    are exported for labelled metrics before their first child) and the label names seen per sample name."""
    names: set[str] = set()
    labels: dict[str, set[str]] = {}
    for fam in text_string_to_metric_families(text):
        names.add(fam.name)
        names.update(fam.name + s for s in _SUFFIXES.get(fam.type, ()))
        for s in fam.samples:
            names.add(s.name)
            labels.setdefault(s.name, set()).update(s.labels)
    return names, labels


@pytest.fixture(scope="module")
def live_metrics(tmp_path_factory) -> str:
    tmp = tmp_path_factory.mktemp("grafana")
    node = NodeProcess(tmp, {"node": {"metrics_port": 0}}).start()
    try:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        sim = subprocess.run([sys.executable, "-m", "device_sim.cli", "run", "--endpoint", node.endpoint, "--devices", "2",
                              "--samples", "60", "--eval-every", "5", "--no-progress", "--summary", str(tmp / "fleet.json")],
                             capture_output=True, env=env, cwd=str(ROOT), timeout=240)
        assert sim.returncode == 0, sim.stderr.decode()
        with urllib.request.urlopen(f"http://127.0.0.1:{node.info['metrics_port']}/metrics", timeout=10) as resp:
            text = resp.read().decode()
        assert node.stop() == 0
    finally:
        node.kill()
    return text


@pytest.mark.slow
def test_every_dashboard_query_names_an_exported_metric(live_metrics):
    names, labels = exported_names(live_metrics)
    exprs = dashboard_exprs()
    assert len(exprs) >= 20
    for title, expr in exprs:
        used = promql_metric_names(expr)
        assert used, f"panel {title!r}: {expr!r} names no metric"
        missing = used - names
        assert not missing, f"panel {title!r}: {expr!r} uses {sorted(missing)}, which the node does not export"
        for clause in re.findall(r"\bby\s*\(([^)]*)\)", expr):  # grouping labels exist on the series (where it has samples)
            for metric in used:
                if labels.get(metric):
                    assert {w.strip() for w in clause.split(",")} <= labels[metric], f"panel {title!r}: {expr!r}"


def test_dashboard_covers_the_status_quantities():
    used = set().union(*(promql_metric_names(e) for _, e in dashboard_exprs()))
    for metric in ("edge_start_time_seconds", "edge_devices", "edge_devices_known", "edge_samples_received_total",
                   "edge_samples_decided_total", "edge_queue_depth", "edge_queue_bytes", "edge_credit_in_flight",
                   "edge_buffer_items", "edge_buffer_bytes", "edge_buffer_class_items", "edge_prequential_accuracy",
                   "edge_eval_accuracy", "edge_modality_eval_accuracy", "edge_updates", "edge_last_checkpoint_timestamp_seconds",
                   "edge_model_version",
                   "edge_update_seconds_bucket"):
        assert metric in used, metric


def test_provisioning_fits_compose():
    compose = yaml.safe_load((ROOT / "docker" / "compose.yaml").read_text())
    services = compose["services"]
    grafana = services["grafana"]
    mounts = {v.split(":")[1]: (ROOT / "docker" / v.split(":")[0]).resolve() for v in grafana["volumes"] if v.startswith("./")}
    assert mounts["/etc/grafana/provisioning"] == (GRAFANA / "provisioning").resolve()
    datasources = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yaml").read_text())["datasources"]
    assert len(datasources) == 1 and datasources[0]["type"] == "prometheus"
    url = urlparse(datasources[0]["url"])
    prom = services["prometheus"]
    assert url.hostname == "prometheus" and f"{url.port}:{url.port}" in prom["ports"]
    assert "prometheus" in grafana["depends_on"]
    prom_cfg = yaml.safe_load((ROOT / "docker" / "prometheus.yml").read_text())
    assert datasources[0]["jsonData"]["timeInterval"] == prom_cfg["global"]["scrape_interval"]
    provider = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "edge-runtime.yaml").read_text())["providers"][0]
    assert mounts[provider["options"]["path"]] == DASHBOARD.parent.resolve()
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert Path(home).parent.as_posix() == provider["options"]["path"] and (DASHBOARD.parent / Path(home).name).is_file()
    uid = datasources[0]["uid"]
    data = json.loads(DASHBOARD.read_text())
    for p in data["panels"]:
        if p["type"] != "row":
            assert p["datasource"]["uid"] == uid and all(t["datasource"]["uid"] == uid for t in p["targets"]), p["title"]
    ids = [p["id"] for p in data["panels"]]
    assert len(ids) == len(set(ids))


def test_status_line_in_compose_comment_parses():
    from edge_runtime.cli.main import build_parser

    text = (ROOT / "docker" / "compose.yaml").read_text()
    lines = [line for line in text.splitlines() if "exec edge-node edge-node status" in line]
    assert lines
    argv = shlex.split(lines[0][lines[0].index("edge-node status"):], comments=True)
    args = build_parser().parse_args(argv[1:])
    assert args.command == "status" and args.state_dir == "/data/edge-state"
