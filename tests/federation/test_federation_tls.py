"""Federation without ``--insecure`` (issue 25 item 4, "Across a real network"), real processes on 127.0.0.1.

Keys from ``edge-node federation-keys`` (nodes a, b and a stranger); a SuperLink with TLS and
``--enable-supernode-auth``; a and b registered (``flwr supernode register``) and started with their keys
beside two ``edge-node run`` daemons; the stranger's SuperNode starts with its key unregistered and must
be refused. Then one round over a and b, and one more with ``edge-node federate --keys`` over the same nodes.
"""

from __future__ import annotations

import json
import socket
import ssl
import subprocess
import sys

import pytest

from tests.support.nodeproc import ROOT, NodeProcess

from edge_runtime.cli.federation_demo import fleet_command
from edge_runtime.federation.control import read_records
from edge_runtime.federation.keys import DeploymentKeys
from edge_runtime.federation.launch import BIN_DIR, Federation, SecureLink, free_port, wait_for_rounds

pytestmark = pytest.mark.slow  # two daemons, two fleets, a TLS federation round and an `edge-node federate` round: minutes

pytest.importorskip("flwr", reason="the federation extra: pip install -e '.[federation]'")

CONFIG = {
    "model": {"embed_dim": 16, "audio_channels": 16, "tiny_channels": 8},
    "node": {"batch_size": 16, "checkpoint_every_s": 2.0},
    "federation": {"enabled": True, "rounds": 1, "samples_per_round": 20, "round_interval_s": 5.0,
                   "min_nodes": 2, "control_timeout_s": 5.0, "round_timeout_s": 120.0},
}
SPLIT = {"a": (0, 1, 2, 3, 4), "b": (5, 6, 7, 8, 9)}
SAMPLES = 120
#: What Flower 1.42 writes when the SuperLink refuses an unregistered key (flwr/supernode/fleet_http_connection.py,
#: flwr/superlink/servicer/fleet/fleet_handlers.py: activate_node).
SUPERNODE_REFUSED = "Failed to activate SuperNode"
SUPERLINK_REFUSED = "No SuperNode found with the given public key"


def _flwr_nodes(fed: Federation) -> list[dict]:
    out = subprocess.run([str(BIN_DIR / "flwr"), "supernode", "list", "edge", "--format", "json"], env=fed.env,
                         cwd=str(fed.workdir), capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    return json.loads(out.stdout)["nodes"]


def _control_log(node: NodeProcess) -> list[tuple[str, str]]:
    """(direction, type) of every control-channel message the node's daemon recorded."""
    return [(r["dir"], r["type"]) for r in read_records(node.state_dir / "control.jsonl")]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tls")
    made = subprocess.run([sys.executable, "-m", "edge_runtime.cli.main", "federation-keys", "--out", str(tmp / "keys"),
                           "--nodes", "a,b,stranger"], capture_output=True, text=True, cwd=str(ROOT), timeout=120)
    assert made.returncode == 0, made.stdout + made.stderr
    keys = DeploymentKeys(tmp / "keys")
    nodes = {}
    for name in SPLIT:
        over = json.loads(json.dumps(CONFIG))
        over["node"]["bind"] = f"tcp://127.0.0.1:{free_port()}"
        nodes[name] = NodeProcess(tmp, over, name=name)
    fed = Federation(tmp / "flower", secure=SecureLink.from_keys(keys.root))
    out = tmp / "rounds"
    try:
        for n in nodes.values():
            n.start(timeout=120)
        for k in SPLIT:
            fleet = subprocess.run(fleet_command(nodes[k].endpoint, SPLIT[k], SAMPLES, 1, k), capture_output=True, text=True,
                                   cwd=str(ROOT), timeout=300)
            assert fleet.returncode == 0, fleet.stdout[-2000:] + fleet.stderr[-2000:]
        port = fed.start_superlink(timeout=120)
        registered = {k: fed.register_supernode(keys.registered_key(k), k) for k in SPLIT}
        for k, n in nodes.items():
            fed.start_supernode(k, n.info["control_endpoint"], timeout=120, private_key=keys.node(k).private_key)
        # signed with a key the SuperLink does not know; were it admitted, its ClientApp would fail (no node
        # serves this endpoint) and the round would count a failure or a third reply
        stranger = fed.start_supernode("stranger", f"ipc://{tmp / 'nobody.ipc'}", private_key=keys.node("stranger").private_key,
                                       wait=False)
        stranger_rc = stranger.wait(180)
        listed = _flwr_nodes(fed)
        fed.run({"config-file": str(nodes["a"].config_path), "out-dir": str(out)})
        rounds = wait_for_rounds(out, 1, 400, fed)
        yield {"tmp": tmp, "keys": keys, "nodes": nodes, "fed": fed, "port": port, "registered": registered,
               "stranger_rc": stranger_rc, "listed": listed, "rounds": rounds["rounds"],
               "control": {k: _control_log(n) for k, n in nodes.items()}}
    finally:
        fed.close()
        for n in nodes.values():
            if n.proc is not None and n.proc.poll() is None:
                n.stop()


def test_the_superlink_serves_tls_only_with_the_deployments_ca(run):
    log = (run["fed"].workdir / "superlink.log").read_text(errors="replace")
    assert f"Uvicorn running on https://127.0.0.1:{run['port']}" in log
    config = (run["fed"].home / "config.toml").read_text()
    assert "insecure" not in config and "root-certificates" in config
    ctx = ssl.create_default_context(cafile=str(run["keys"].node("a").ca_cert))
    with socket.create_connection(("127.0.0.1", run["port"]), timeout=30) as raw, ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
        assert tls.version() in ("TLSv1.2", "TLSv1.3")
    with pytest.raises(ssl.SSLCertVerificationError):  # a client that trusts only the system's CAs refuses it
        with socket.create_connection(("127.0.0.1", run["port"]), timeout=30) as raw:
            ssl.create_default_context().wrap_socket(raw, server_hostname="127.0.0.1")
    for name in SPLIT:
        assert "--insecure" not in (run["fed"].workdir / f"supernode-{name}.log").read_text(errors="replace")


def test_a_supernode_with_an_unregistered_key_is_refused(run):
    stranger_log = (run["fed"].workdir / "supernode-stranger.log").read_text(errors="replace")
    superlink_log = (run["fed"].workdir / "superlink.log").read_text(errors="replace")
    assert run["stranger_rc"] != 0, stranger_log[-3000:]
    assert SUPERNODE_REFUSED in stranger_log, stranger_log[-3000:]
    assert SUPERLINK_REFUSED in superlink_log, superlink_log[-3000:]
    # the SuperLink knows exactly the two registered nodes, both online; the stranger never became a node
    assert {int(n["node-id"]) for n in run["listed"]} == set(run["registered"].values())
    assert {n["status"] for n in run["listed"]} == {"online"}


def test_the_round_goes_on_with_the_registered_nodes_only(run):
    assert len(run["rounds"]) == 1
    r = run["rounds"][0]
    assert (r["replies"], r["failures"], r["merged_into"]) == (2, 0, 2), r
    assert r["aggregated"] is True
    for name in SPLIT:  # each registered node's daemon served the round: a get (train) and a put it took (the merge)
        log = run["control"][name]
        assert ("in", "get") in log and ("in", "put") in log and ("out", "ok") in log, log


def test_edge_node_federate_runs_the_same_deployment_with_keys(run):
    """``edge-node federate --keys``: registers each named node's key, starts TLS + authentication, one round."""
    out = run["tmp"] / "federate-out"
    controls = [f"--control={k}={n.info['control_endpoint']}" for k, n in run["nodes"].items()]
    done = subprocess.run([str(BIN_DIR / "edge-node"), "federate", "--keys", str(run["keys"].root), *controls,
                           "--config", str(run["nodes"]["a"].config_path), "--out", str(out)],
                          capture_output=True, text=True, cwd=str(ROOT), timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "TLS, SuperNode authentication" in done.stdout
    rounds = json.loads((out / "rounds.json").read_text())["rounds"]
    assert [(r["replies"], r["failures"]) for r in rounds] == [(2, 0)]
    assert "https://" in (out / "flower" / "superlink.log").read_text(errors="replace")


def test_federate_names_the_missing_key(run, tmp_path):
    done = subprocess.run([str(BIN_DIR / "edge-node"), "federate", "--keys", str(run["keys"].root),
                           f"--control=c={run['nodes']['a'].info['control_endpoint']}", "--out", str(tmp_path / "o")],
                          capture_output=True, text=True, cwd=str(ROOT), timeout=120)
    assert done.returncode == 2
    assert "--keys" in done.stderr and "'c'" in done.stderr and "a, b, stranger" in done.stderr
