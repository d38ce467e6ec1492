"""Three modalities end to end (the any-sensor issue): audio, video and an ``imu`` series, declared in
the configuration, through two real ``edge-node run`` daemons, ``device-sim`` fleets (the synthetic
data set with ``--imu-channels 3``), a Flower round and ``edge-node export``."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from tests.support.nodeproc import ROOT, NodeProcess

from edge_runtime.cli.federation_demo import fleet_command
from edge_runtime.federation.launch import Federation, free_port, wait_for_rounds

pytestmark = pytest.mark.slow  # two daemons, two fleets and a Flower round: about a minute

pytest.importorskip("flwr", reason="the federation extra: pip install -e '.[federation]'")

MODALITIES = {"audio": {"kind": "audio"}, "video": {"kind": "frames"}, "imu": {"kind": "series", "channels": 3}}
CONFIG = {
    "modalities": MODALITIES,
    "model": {"embed_dim": 16, "audio_channels": 16, "tiny_channels": 8, "series_channels": 8},
    "node": {"batch_size": 16, "checkpoint_every_s": 2.0, "frame_size": [16, 16]},
    "federation": {"enabled": True, "rounds": 1, "samples_per_round": 20, "round_interval_s": 5.0,
                   "min_nodes": 2, "control_timeout_s": 5.0, "round_timeout_s": 120.0},
}
SPLIT = {"a": (0, 1, 2, 3, 4), "b": (5, 6, 7, 8, 9)}
SAMPLES = 160


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("three")
    nodes = {}
    for name in SPLIT:
        over = json.loads(json.dumps(CONFIG))
        over["node"]["bind"] = f"tcp://127.0.0.1:{free_port()}"
        nodes[name] = NodeProcess(tmp, over, name=name)
    fed = Federation(tmp / "flower")
    out = tmp / "rounds"
    try:
        for n in nodes.values():
            n.start(timeout=120)
        fleets = {k: subprocess.run(fleet_command(nodes[k].endpoint, SPLIT[k], SAMPLES, 1, k, summary=tmp / f"fleet-{k}.json")
                                    + ["--imu-channels", "3"], capture_output=True, text=True, cwd=str(ROOT), timeout=300)
                  for k in SPLIT}
        sent = {k: json.loads((tmp / f"fleet-{k}.json").read_text()) for k in SPLIT}
        fed.start_superlink()
        for k, n in nodes.items():
            fed.start_supernode(k, n.info["control_endpoint"])
        fed.run({"config-file": str(nodes["a"].config_path), "out-dir": str(out)})
        rounds = wait_for_rounds(out, 1, 300, fed)
        exported = tmp / "model.onnx"
        export = subprocess.run([sys.executable, "-m", "edge_runtime.cli.main", "export", "--state-dir", str(nodes["a"].state_dir),
                                 "--config", str(nodes["a"].config_path), "--out", str(exported)],
                                capture_output=True, text=True, cwd=str(ROOT), timeout=300)
        codes = {k: n.stop() for k, n in nodes.items()}
        yield {"nodes": nodes, "fleets": fleets, "sent": sent, "rounds": rounds, "global": dict(np.load(out / "global.npz")),
               "export": export, "onnx": exported, "codes": codes}
    finally:
        fed.close()
        for n in nodes.values():
            if n.proc is not None and n.proc.poll() is None:
                n.kill()


def test_every_sample_of_three_modalities_is_decided_and_none_is_invalid(run):
    for k, fleet in run["fleets"].items():
        assert fleet.returncode == 0, fleet.stdout[-2000:] + fleet.stderr[-2000:]
    for k, node in run["nodes"].items():
        assert run["codes"][k] == 0, node.log()[-3000:]
        fleet = run["sent"][k]["totals"]
        assert fleet["samples"] > 0 and fleet["acked"] == fleet["samples"], fleet
        assert not [v for v in fleet["verdicts"] if v.startswith("invalid")], fleet["verdicts"]
        verdicts = node.summary()["verdicts"]
        assert sum(verdicts.values()) == fleet["samples"], verdicts  # every sample decided, each once
        assert not [v for v in verdicts if v.startswith("invalid")], verdicts


def test_a_federated_round_shares_each_modality_by_name(run):
    assert len(run["rounds"]["rounds"]) == 1
    names = set(run["global"])
    for modality in MODALITIES:
        assert f"proto.{modality}" in names
        assert any(n.startswith(f"model.encoders.{modality}.") for n in names), modality
    assert run["global"]["proto.imu"].shape == (10, 16)


def test_export_has_one_named_input_per_modality_and_runs_on_device(run):
    assert run["export"].returncode == 0, run["export"].stdout[-2000:] + run["export"].stderr[-2000:]
    import onnxruntime as ort

    from device_sim.datasets.synthetic import SyntheticDataset

    session = ort.InferenceSession(str(run["onnx"]), providers=["CPUExecutionProvider"])
    import yaml

    # the node's order is its configuration file's (NodeProcess writes the YAML with sorted keys)
    order = list(yaml.safe_load(run["nodes"]["a"].config_path.read_text())["modalities"])
    assert sorted(order) == sorted(MODALITIES)
    inputs = [i.name for i in session.get_inputs()]
    assert inputs == [n for name in order for n in (name, f"{name}_lengths")]
    assert [o.name for o in session.get_outputs()] == ["logits", *(f"{name}_logits" for name in order)]
    sample = SyntheticDataset(seed=1, size=4, imu_channels=3)[0]
    feed = {}
    for name, x in sample.tensors.items():
        feed[name] = x[None]
        feed[f"{name}_lengths"] = np.array([x.shape[0]], dtype=np.int64)
    logits = session.run(["logits"], feed)[0]
    assert logits.shape == (1, 10) and np.isfinite(logits).all()
