"""``edge-node federation-sim``'s help example, run as written (issue 25 item 1): 5 simulated nodes on Flower's
Simulation Engine, 3 rounds, a node down and a straggler in round 1.

Real Ray workers run the ClientApp; every node's learner, buffer and prototypes live in its state
folder between messages. Checked: the round log names exactly the nodes the plan makes down or late;
every node ends holding exactly the global model; the global model improves every node on the
classes it never streamed, against the same node learning alone (the command's isolated reference).
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("ray", reason="needs Flower's simulation extra: pip install -e '.[simulation]'")

from edge_runtime.cli.federation_sim import EXAMPLES  # noqa: E402
from edge_runtime.federation.simulation.plan import DOWN, LATE, UP, SimPlan  # noqa: E402
from edge_runtime.learning.checkpoint import CheckpointManager  # noqa: E402
from tests.cli.test_help_examples import _program, _words, help_examples, readme_commands  # noqa: E402

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent


def test_the_help_example_federates_five_simulated_nodes_despite_a_dropout_and_a_straggler(tmp_path):
    (command,) = help_examples()[("edge-node", "federation-sim")]
    assert command == EXAMPLES[0].split("#")[0].strip()
    assert command in {shlex.join([_program(_words(c)), *_words(c)[1:]]) for c in readme_commands()}  # the README's too
    argv = shlex.split(command)
    proc = subprocess.run([str(BIN / argv[0]), *argv[1:]], cwd=tmp_path, capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = tmp_path / "fed-sim"
    result = json.loads((out / "simulation.json").read_text())
    plan = SimPlan(**result["plan"])
    assert (plan.nodes, plan.rounds, plan.samples_per_round) == (5, 3, 48)
    first = [plan.availability(1, k) for k in range(5)]
    assert DOWN in first and LATE in first and all(plan.availability(r, k) == UP for r in (2, 3) for k in range(5))

    rounds = json.loads((out / "rounds.json").read_text())["rounds"]
    printed = [line for line in proc.stdout.splitlines() if line.startswith("round ")]
    assert [r["round"] for r in rounds] == [1, 2, 3] and len(printed) == 3
    down = [k for k in range(5) if first[k] == DOWN]
    late = [k for k in range(5) if first[k] == LATE]
    assert rounds[0]["replies"] == 5 - len(down) - len(late) and rounds[0]["failures"] == len(down) + len(late)
    assert sorted(rounds[0]["errors"]) == sorted([f"node-{k} down in round 1 (simulated dropout)" for k in down]
                                                 + [f"node-{k} late in round 1 (simulated straggler)" for k in late])
    assert rounds[0]["merged_into"] == 5 - len(down)  # a down node neither replies nor is merged
    assert [(r["replies"], r["merged_into"]) for r in rounds[1:]] == [(5, 5), (5, 5)]
    # per-class counts: every node learns its slice every round, so a reply of round r holds r * 48 samples
    assert [r["samples"] for r in rounds] == [48 * rounds[0]["replies"], 2 * 48 * 5, 3 * 48 * 5]

    # nothing is learned after the last merge: every node holds exactly the global model
    with np.load(out / "global.npz") as glob:
        for k in range(5):
            state, _ = CheckpointManager(out / "nodes" / f"node-{k}" / "checkpoints").load_latest()
            for name, tensor in state["model"].items():
                if tensor.dtype.is_floating_point:
                    torch.testing.assert_close(tensor, torch.from_numpy(glob[f"model.{name}"]), rtol=0, atol=0)

    # every node, merged, is better on the classes it never streamed than the same node alone
    fed_unseen = {int(m["node"]): float(m["accuracy-unseen"]) for m in rounds[-1]["node_metrics"]}
    alone = {int(k): float(v[-1]) for k, v in result["references"]["isolated"]["unseen"].items()}
    assert sorted(fed_unseen) == sorted(alone) == list(range(5))
    for k in range(5):
        assert fed_unseen[k] > alone[k] + 0.05, f"node-{k}: federated {fed_unseen[k]:.3f} on unseen classes, alone {alone[k]:.3f}"
    assert "one node saw everything" in proc.stdout and "isolated (5 nodes)" in proc.stdout
