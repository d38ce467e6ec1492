"""The pre-warmed ClientApp launcher with real processes on loopback (issue 25 item 3).

One scenario: 2 ``edge-node run`` daemons with ``device-sim`` fleets, 1 SuperLink, 2 SuperNodes the way
``edge-node federate`` starts them by default (``--isolation process`` beside our launcher, packed
arrays, the SuperNode's shorter idle poll), 2 rounds. Every ``train`` waits ``round_interval_s``
(the nodes never reach ``samples_per_round``), so in round 2 a forked ClientApp child is alive long
enough to be killed (SIGKILL): Flower's SuperNode replies for it with its ``ClientApp crashed`` error
once the task's token expires (two missed 30 s heartbeats), or the round's timeout passes first on a
loaded machine, and the round goes on with the other node.
No wall-clock assertions; the timeouts are generous.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from tests.support.nodeproc import ROOT, NodeProcess, stop_federation

from edge_runtime.cli.federation_demo import fleet_command
from edge_runtime.federation.launch import Federation, free_port, wait_for_rounds

pytestmark = pytest.mark.slow  # real daemons and a Flower federation: a few minutes

pytest.importorskip("flwr", reason="the federation extra: pip install -e '.[federation]'")

SPLIT = {"a": (0, 1, 2, 3, 4), "b": (5, 6, 7, 8, 9)}
CONFIG = {
    "model": {"embed_dim": 32, "audio_channels": 32, "tiny_channels": 8},
    "node": {"batch_size": 16, "checkpoint_every_s": 2.0},
    "buffer": {"max_items": 120},
    "selection": {"train_on": "all"},
    "training": {"replay_steps": 4, "lr": 0.003},
    "federation": {"enabled": True, "rounds": 2, "samples_per_round": 1000000, "round_interval_s": 20.0,
                   "min_nodes": 1, "control_timeout_s": 5.0, "round_timeout_s": 240.0},
}


def _children(pid: int) -> dict[int, str]:
    """pid -> state letter (R, S, Z, ...) of the processes whose parent is ``pid`` (from /proc)."""
    out = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        if int(fields[1]) == pid:
            out[int(entry.name)] = fields[0]
    return out


def _rounds(out: Path) -> list[dict]:
    try:
        return json.loads((out / "rounds.json").read_text())["rounds"]
    except (OSError, ValueError, KeyError):
        return []


@pytest.fixture(scope="module")
def scenario(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("launcher")
    nodes = {k: NodeProcess(tmp, {**CONFIG, "node": {**CONFIG["node"], "bind": f"tcp://127.0.0.1:{free_port()}"}}, name=k)
             for k in SPLIT}
    fleets: list[subprocess.Popen] = []
    fed = Federation(tmp / "flower")
    out = tmp / "rounds"
    try:
        for n in nodes.values():
            n.start(timeout=120)
        fleets = [subprocess.Popen(fleet_command(nodes[k].endpoint, SPLIT[k], 4000, 3, k, rate=2.0), stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL, cwd=str(ROOT)) for k in SPLIT]
        fed.start_superlink()
        for k in SPLIT:
            fed.start_supernode(k, nodes[k].info["control_endpoint"])
        launchers = {k: fed.procs[f"clientapps-{k}"] for k in SPLIT}
        fed.run({"config-file": str(nodes["a"].config_path), "out-dir": str(out)})
        # round 2's train: a child of launcher "b" that is alive once round 1 is logged
        deadline = time.monotonic() + 300
        killed = None
        while killed is None:
            assert time.monotonic() < deadline, "no ClientApp child of round 2 to kill"
            if len(_rounds(out)) >= 1:
                alive = [pid for pid, state in _children(launchers["b"].pid).items() if state != "Z"]
                if alive:
                    killed = alive[0]
                    os.kill(killed, signal.SIGKILL)
            time.sleep(0.2)
        # round 2 is bounded by its two phases' round_timeout_s, whether or not Flower reports the crash first
        log = wait_for_rounds(out, 2, 2 * CONFIG["federation"]["round_timeout_s"] + 120, fed)
        deadline = time.monotonic() + 30  # a child that just exited is reaped at the launcher's next poll
        while any(state == "Z" for k in SPLIT for state in _children(launchers[k].pid).values()) and time.monotonic() < deadline:
            time.sleep(0.2)
        zombies = {k: [p for p, s in _children(launchers[k].pid).items() if s == "Z"] for k in SPLIT}
        yield {"log": log["rounds"], "out": out, "fed": fed, "launchers": launchers, "killed": killed, "zombies": zombies,
               "workdir": fed.workdir}
    finally:
        stop_federation(fleets, fed, nodes)


def test_federate_runs_its_clientapps_from_the_warm_launcher_by_default(scenario):
    fed = scenario["fed"]
    assert fed.clientapp == "warm" and fed.supernode_poll_s == 0.5
    workdir = scenario["workdir"]
    for k in SPLIT:
        launcher_log = (workdir / f"clientapps-{k}.log").read_text()
        assert "ready: polling" in launcher_log
        assert launcher_log.count("ClientApp task") >= 3, launcher_log[-2000:]  # train + evaluate of round 1, train of 2
        assert "SuperNode waits: 0.50 s when idle" in (workdir / f"supernode-{k}.log").read_text()


def test_round_1_is_whole_and_packing_is_invisible_to_the_strategy(scenario):
    r1 = scenario["log"][0]
    assert r1["replies"] == 2 and r1["failures"] == 0 and r1["merged_into"] == 2
    names = set(np.load(scenario["out"] / "global.npz").files)
    assert any(n.startswith("model.") for n in names) and {"proto.audio", "proto.video", "proto.counts"} <= names
    assert set(r1["shared_arrays"]) == names  # the named arrays, not packed.float32


def test_a_killed_clientapp_child_is_a_failed_reply_and_the_round_goes_on(scenario):
    r2 = scenario["log"][1]
    # Flower's SuperNode reports the crash once the task's token expires; on a loaded machine that can come
    # after round_timeout_s (seen in CI), and then the round goes on without the reply instead of with its error
    assert r2["replies"] == 1 and r2["failures"] in (0, 1), r2
    assert r2["aggregated"] and r2["merged_into"] >= 1
    launcher_log = (scenario["workdir"] / "clientapps-b.log").read_text()
    assert f"(pid {scenario['killed']}): killed by signal {int(signal.SIGKILL)}" in launcher_log


def test_children_are_reaped_and_the_launchers_stop_with_the_federation(scenario):
    assert scenario["zombies"] == {k: [] for k in SPLIT}
    scenario["fed"].close()
    for k, proc in scenario["launchers"].items():
        assert proc.wait(30) is not None, k
        assert _children(proc.pid) == {}, k
