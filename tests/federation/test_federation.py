"""Federation on Flower with real processes on loopback (issue 12).

One scenario, shared by the tests of this module (it is the slow part: about a minute):
1 SuperLink, 3 SuperNodes, 3 ``edge-node run`` daemons, 3 ``device-sim`` fleets streaming disjoint
classes of the synthetic data set (0-2, 3-5, 6-9). After the fleets' first pass every node's
held-out accuracy on all 10 classes is measured (isolated); then 3 Flower rounds run while the
fleets stream a second pass. During round 2 node C is killed (SIGKILL); it is restarted from its
checkpoint once round 2 is over, and rejoins in round 3.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.support.nodeproc import ROOT, NodeProcess, stop_federation

from edge_runtime.core.config import config_from_dict
from edge_runtime.federation.control import ControlClient, ControlError, read_records
from edge_runtime.federation.arrays import COUNTS, merge_prototypes, mismatch, spec_of
from edge_runtime.cli.federation_demo import Evaluator, fleet_command, held_out, node_evaluation, wait_round
from edge_runtime.federation.launch import Federation, free_port, wait_for_rounds

pytestmark = pytest.mark.slow  # real daemons (and a Flower federation) per module: minutes

pytest.importorskip("flwr", reason="the federation extra: pip install -e '.[federation]'")

SPLIT = {"a": (0, 1, 2), "b": (3, 4, 5), "c": (6, 7, 8, 9)}
SAMPLES, SEED = 720, 3
ROUNDS = 3
CONFIG = {  # small and quick to learn: measured in-process, isolated 0.29-0.37, global after 3 merges 0.73
    "model": {"embed_dim": 32, "audio_channels": 32, "tiny_channels": 8},
    "node": {"batch_size": 16, "checkpoint_every_s": 2.0},
    "buffer": {"max_items": 120},
    "selection": {"train_on": "all"},
    "training": {"replay_steps": 4, "lr": 0.003},
    "federation": {"enabled": True, "rounds": ROUNDS, "samples_per_round": 30, "round_interval_s": 10.0,
                   "min_nodes": 2, "control_timeout_s": 3.0, "round_timeout_s": 90.0},
}


def _nodes(tmp: Path) -> dict[str, NodeProcess]:
    nodes = {}
    for name in SPLIT:
        over = json.loads(json.dumps(CONFIG))
        over["node"]["bind"] = f"tcp://127.0.0.1:{free_port()}"  # fixed: fleet c reconnects after the restart
        nodes[name] = NodeProcess(tmp, over, name=name)
    return nodes


def _fleet(node: NodeProcess, name: str, prefix: str, rate: float | None = None) -> subprocess.Popen:
    return subprocess.Popen(fleet_command(node.endpoint, SPLIT[name], SAMPLES, SEED, prefix, rate=rate),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=str(ROOT))


@pytest.fixture(scope="module")
def scenario(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("federation")
    config = config_from_dict(CONFIG)
    nodes = _nodes(tmp)
    fleets: list[subprocess.Popen] = []
    fed = Federation(tmp / "flower")
    out = tmp / "rounds"
    try:
        for n in nodes.values():
            n.start(timeout=120)
        fleets = [_fleet(nodes[k], k, f"{k}-a") for k in SPLIT]
        control = {k: n.info["control_endpoint"] for k, n in nodes.items()}
        fed.start_superlink()  # while the fleets stream their first pass
        for k in SPLIT:
            fed.start_supernode(k, control[k])
        for f in fleets:
            assert f.wait(180) == 0
        evaluator = Evaluator(config, held_out(config, SAMPLES, SEED, 400))
        isolated = {k: node_evaluation(evaluator, control[k])[0] for k in SPLIT}
        fed.run({"config-file": str(nodes["a"].config_path), "out-dir": str(out)})
        wait_round(list(control.values()), 1, 120)
        fleets = [_fleet(nodes[k], k, f"{k}-b", rate=1.5) for k in SPLIT]  # second pass, slow: little drift between merges
        time.sleep(1.0)
        nodes["c"].kill()  # during round 2
        killed_at = time.time()
        deadline = time.monotonic() + 120
        while not ((out / "rounds.json").exists() and len(json.loads((out / "rounds.json").read_text())["rounds"]) >= 2):
            assert time.monotonic() < deadline, "round 2 did not complete without node c"
            time.sleep(0.2)
        nodes["c"].start(timeout=120)
        restarted_at = time.time()
        # c reaches round 2 when it rejoins in round 3; then the fleets stop, so that after the last
        # merge nothing is learned and every node holds exactly the global model
        wait_round(list(control.values()), ROUNDS - 1, 240)
        for f in fleets:
            f.terminate()
        log = wait_for_rounds(out, ROUNDS, 240, fed)
        federated = {k: node_evaluation(evaluator, control[k]) for k in SPLIT}
        got = {k: ControlClient(control[k], timeout_s=30).get() for k in SPLIT}
        arrays, headers = {k: v[1] for k, v in got.items()}, {k: v[0] for k, v in got.items()}
        yield {"arrays": arrays, "headers": headers, "global": dict(np.load(out / "global.npz")), "nodes": nodes, "isolated": isolated, "federated": federated, "log": log["rounds"], "out": out,
               "killed_at": killed_at, "restarted_at": restarted_at, "config": config}
    finally:
        stop_federation(fleets, fed, nodes)


def _unseen(result: dict, classes) -> float:
    """Mean accuracy over the classes a node's fleet never streamed."""
    return float(np.mean([result["per_class_accuracy"].get(c, 0.0) for c in range(10) if c not in classes]))


def test_federated_accuracy_far_above_isolated(scenario):
    iso = {k: v for k, v in scenario["isolated"].items()}
    fed = {k: v[0] for k, v in scenario["federated"].items()}
    print("\nheld-out accuracy on all 10 classes (on the classes the node never saw):")
    for k, classes in SPLIT.items():
        print(f"  node {k} {classes}: isolated {iso[k]['accuracy']:.3f} ({_unseen(iso[k], classes):.3f}), "
              f"federated {fed[k]['accuracy']:.3f} ({_unseen(fed[k], classes):.3f})")
    for k, classes in SPLIT.items():
        share = len(classes) / 10
        # alone, a node cannot exceed the share of classes it saw, and it is at zero on the others
        assert iso[k]["accuracy"] <= share + 0.1, f"node {k} saw {len(classes)} of 10 classes but scores {iso[k]['accuracy']:.3f}"
        assert _unseen(iso[k], classes) <= 0.05
        # federated: the classes only other boxes saw are recognised
        assert _unseen(fed[k], classes) >= 0.25, f"node {k}: {_unseen(fed[k], classes):.3f} on the classes it never saw"
        assert fed[k]["accuracy"] >= iso[k]["accuracy"] + 0.1
    assert all(h["round"] == ROUNDS for _, h in scenario["federated"].values())
    exact = [k for k in SPLIT if scenario["headers"][k]["samples_since_round"] == 0]
    assert exact, "at least one node learned nothing after its last reply"
    for k in exact:  # what was evaluated is the last round's global model, as the ServerApp wrote it (a node that
        # learned after its reply carries that learning over the merge: global + its own since-reply delta)
        for name, value in scenario["arrays"][k].items():
            if name.startswith("model."):
                np.testing.assert_array_equal(value, scenario["global"][name], err_msg=f"node {k} {name}")


def test_only_weights_prototypes_and_counters_cross(scenario):
    model_names = {f"model.{k}" for k, v in __import__("edge_runtime.learning.model", fromlist=["build_model"]).build_model(
        scenario["config"].model).state_dict().items()}
    allowed_arrays = model_names | {"proto.audio", "proto.video", COUNTS}
    allowed_keys = {"v", "type", "round", "samples_since_round", "samples_total", "proximal_mu", "arrays", "bytes", "ts", "dir",
                    "code", "msg"}
    for k, node in scenario["nodes"].items():
        records = read_records(node.state_dir / "control.jsonl")
        assert {r["type"] for r in records} == {"status", "get", "state", "put", "ok"}, k
        for r in records:
            assert set(r) <= allowed_keys, (k, r)
            assert {a["name"] for a in r["arrays"]} <= allowed_arrays, (k, r["type"])
            if r["type"] in ("state", "put"):
                assert {a["name"] for a in r["arrays"]} == allowed_arrays
    for r in scenario["log"]:  # what the SuperLink saw in the replies
        assert set(r["shared_arrays"]) == allowed_arrays
        assert set(r["metric_keys"]) == {"num-examples", "samples-since-round", "samples-total", "node-round"}


def test_killed_node_does_not_stop_the_round_and_rejoins_with_the_global_model(scenario):
    log = {r["round"]: r for r in scenario["log"]}
    assert log[1]["replies"] == 3
    assert log[2]["replies"] == 2 and log[2]["failures"] == 1 and log[2]["aggregated"]
    assert log[3]["replies"] == 3 and log[3]["merged_into"] == 3
    c = scenario["nodes"]["c"]
    assert "restored checkpoint" in c.log()
    after = [r for r in read_records(c.state_dir / "control.jsonl") if r["ts"] >= scenario["restarted_at"] - 1]
    puts = [r["round"] for r in after if r["dir"] == "in" and r["type"] == "put"]
    oks = [r["round"] for r in after if r["dir"] == "out" and r["type"] == "ok"]
    assert puts[:1] == [2] and oks[:1] == [2], "the restarted node first receives the global model of round 2"
    assert oks[-1] == 3
    assert json.loads((c.state_dir / "federation.json").read_text())["round"] == 3


def test_the_server_app_looks_for_replies_every_reply_poll_s_and_logs_each_wait(scenario):
    """Flower 1.42's grid pulls a phase's replies every 3 s; the ServerApp's PollingGrid every REPLY_POLL_S
    (docs/federation.md, "Where a round's time goes"), and rounds.json keeps what each phase waited."""
    from edge_runtime.federation.server_app import REPLY_POLL_S

    assert json.loads((scenario["out"] / "done.json").read_text())["reply_poll_s"] == REPLY_POLL_S < 3.0
    for r in scenario["log"]:
        assert 0 < r["train_wait_s"] <= r["seconds"] + 0.1, r
        assert r["merged_into"] and 0 < r["evaluate_wait_s"] <= r["seconds"] - r["train_wait_s"] + 0.1, r


# ---------------------------------------------------------------------- without Flower
def test_mismatched_put_is_refused_naming_the_array_and_changes_nothing(tmp_path):
    node = NodeProcess(tmp_path, CONFIG, name="solo").start()
    fleet = None
    try:
        client = ControlClient(node.info["control_endpoint"], timeout_s=10)
        fleet = _fleet(node, "a", "solo", rate=20.0)
        deadline = time.monotonic() + 60
        while client.status()["samples_total"] < 32:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        header, arrays = client.get()
        bad = dict(arrays)
        bad["model.fusion.heads.audio.weight"] = np.zeros((3, 3), dtype=np.float32)
        with pytest.raises(ControlError) as err:
            client.put(7, bad)
        assert err.value.code == "mismatch" and "model.fusion.heads.audio.weight" in err.value.message
        renamed = {("model.nope" if k == "proto.audio" else k): v for k, v in arrays.items()}
        with pytest.raises(ControlError, match="proto.audio"):
            client.put(7, renamed)
        wrong_dtype = {**arrays, "model.fusion.heads.video.bias": arrays["model.fusion.heads.video.bias"].astype(np.float64)}
        with pytest.raises(ControlError, match="model.fusion.heads.video.bias.*float64"):
            client.put(7, wrong_dtype)
        assert client.status()["round"] == 0  # nothing applied
        before = client.status()["samples_total"]
        while client.status()["samples_total"] <= before:  # the node keeps learning
            assert time.monotonic() < deadline
            time.sleep(0.1)
        fleet.wait(120)
        after_header, after = client.get()
        changed = [k for k in arrays if k.startswith("model.") and not np.array_equal(arrays[k], after[k])]
        assert changed, "learning went on after the refused puts"
        assert after_header["round"] == 0
        refused = [r for r in read_records(node.state_dir / "control.jsonl") if r["type"] == "error"]
        assert len(refused) == 3 and all(r["code"] == "mismatch" for r in refused)
    finally:
        if fleet is not None and fleet.poll() is None:
            fleet.terminate()
            fleet.wait(30)
        assert node.stop() == 0


def test_a_put_is_applied_between_micro_batches_and_survives_a_restart(tmp_path):
    node = NodeProcess(tmp_path, CONFIG, name="solo").start()
    client = ControlClient(node.info["control_endpoint"], timeout_s=10)
    _, arrays = client.get()
    glob = {k: (v + 0.5).astype(v.dtype) if v.dtype.kind == "f" else v for k, v in arrays.items()}
    glob[COUNTS] = np.array([5, 0, 0, 0, 0, 0, 0, 0, 0, 1], dtype=np.int64)
    assert client.put(4, glob)["round"] == 4
    header, now = client.get()
    assert header["round"] == 4 and header["samples_since_round"] == 0
    for k, v in glob.items():
        if k.startswith("model."):
            np.testing.assert_array_equal(now[k], v)
    # prototypes of classes some node has seen are the global ones; the local counts stay local
    np.testing.assert_array_equal(now["proto.audio"][[0, 9]], glob["proto.audio"][[0, 9]])
    np.testing.assert_array_equal(now[COUNTS], np.zeros(10, dtype=np.int64))
    # the operator sees the round: edge-node status shows the node's edge_federation_* series
    deadline = time.monotonic() + 20
    while True:
        out = subprocess.run([sys.executable, "-m", "edge_runtime.cli.main", "status", "--state-dir", str(node.state_dir), "--json"],
                             capture_output=True, text=True, timeout=60)
        fed = json.loads(out.stdout).get("federation") or {}
        if fed.get("round") == 4 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert fed.get("round") == 4 and fed.get("samples_since_round") == 0 and fed.get("round_timestamp_seconds", 0) > 0, fed
    assert node.stop() == 0
    node.start()
    header, again = ControlClient(node.info["control_endpoint"], timeout_s=10).get()
    assert header["round"] == 4
    for k in glob:
        if k.startswith("model."):
            np.testing.assert_array_equal(again[k], glob[k])
    assert node.stop() == 0


# ---------------------------------------------------------------------- merge arithmetic
def test_prototypes_merge_per_class_weighted_by_counts():
    p1 = {"proto.audio": np.array([[1.0, 1.0], [0.0, 0.0], [4.0, 0.0]], dtype=np.float32), COUNTS: np.array([3, 0, 1])}
    p2 = {"proto.audio": np.array([[3.0, 5.0], [2.0, 2.0], [0.0, 0.0]], dtype=np.float32), COUNTS: np.array([1, 2, 0])}
    m = merge_prototypes([p1, p2])
    np.testing.assert_allclose(m["proto.audio"][0], (3 * np.array([1, 1]) + 1 * np.array([3, 5])) / 4)
    np.testing.assert_allclose(m["proto.audio"][1], [2.0, 2.0])  # only node 2 saw class 1: its prototype, not halved
    np.testing.assert_allclose(m["proto.audio"][2], [4.0, 0.0])
    np.testing.assert_array_equal(m[COUNTS], [4, 2, 1])
    assert m["proto.audio"].dtype == np.float32


def test_mismatch_names_the_array():
    spec = spec_of({"model.w": np.zeros((2, 3), np.float32), COUNTS: np.zeros(3, np.int64)})
    assert mismatch(spec, {"model.w": np.zeros((2, 3), np.float32), COUNTS: np.zeros(3, np.int64)}) is None
    assert "'model.w'" in mismatch(spec, {"model.w": np.zeros((3, 2), np.float32), COUNTS: np.zeros(3, np.int64)})
    assert "'proto.counts'" in mismatch(spec, {"model.w": np.zeros((2, 3), np.float32)})
    assert "NaN" in mismatch(spec, {"model.w": np.full((2, 3), np.nan, np.float32), COUNTS: np.zeros(3, np.int64)})


def test_federation_config_unknown_key_is_named():
    from edge_runtime.core.config import ConfigError

    with pytest.raises(ConfigError, match="federation.round"):
        config_from_dict({"federation": {"round": 3}})
    with pytest.raises(ConfigError, match="federation.strategy"):
        config_from_dict({"federation": {"strategy": "fedsgd"}})


def test_client_app_imports_no_torch():
    code = "import sys, edge_runtime.federation.client_app; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=str(ROOT), timeout=120)
    assert out.stdout.strip() == "False", out.stderr


@pytest.mark.parametrize("name, cls, attrs", [("fedavg", "EdgeFedAvg", {}), ("fedprox", "EdgeFedProx", {"proximal_mu": 0.05}),
                                              ("fedadam", "EdgeFedAdam", {"eta": 0.2, "tau": 0.01})])
def test_strategy_is_the_stock_flwr_one_selected_by_config(name, cls, attrs):
    from flwr.serverapp import strategy as stock

    from edge_runtime.federation.server_app import make_strategy

    fc = config_from_dict({"federation": {"strategy": name, "min_nodes": 3, "proximal_mu": 0.05, "server_lr": 0.2,
                                          "server_tau": 0.01}}).federation
    s = make_strategy(fc)
    assert type(s).__name__ == cls and isinstance(s, getattr(stock, cls[4:]))
    assert (s.min_train_nodes, s.min_evaluate_nodes, s.min_available_nodes) == (3, 3, 3)
    assert s.weighted_by_key == "num-examples"
    for key, value in attrs.items():
        assert getattr(s, key) == value
