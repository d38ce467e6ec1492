"""Per-class counts a node shares count each sample once (issue 25 item 5), on a real node's learner thread code.

A device that resends seqs after the node restarted is answered from the verdict ledger (the stored
verdict, never relearned); those answers must not add to ``proto.counts`` / ``samples_since_round``,
which the ServerApp uses as FedAvg weights and prototype-merge weights.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edge_runtime.core.config import config_from_dict
from edge_runtime.node.daemon import EdgeNode
from edge_runtime.node.handoff import Item

CONFIG = {  # the small model of tests/federation/test_federation.py
    "model": {"embed_dim": 32, "audio_channels": 32, "tiny_channels": 8},
    "node": {"batch_size": 16, "bind": "tcp://127.0.0.1:*", "log_format": "text"},
    "buffer": {"max_items": 120},
    "selection": {"train_on": "all"},
    "training": {"replay_steps": 1},
    "federation": {"enabled": True},
}


def _node(state_dir: Path) -> EdgeNode:
    cfg = _merged(CONFIG, {"node": {"state_dir": str(state_dir)}})
    return EdgeNode(config_from_dict(cfg))


def _merged(a: dict, b: dict) -> dict:
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in a.items()}
    for k, v in b.items():
        out[k] = {**out.get(k, {}), **v}
    return out


def _batch(samples: list) -> list[Item]:
    return [Item(b"dev", "uav-1", s.seq, s, None, 0.0, 0) for s in samples]


def _decide(node: EdgeNode, samples: list) -> dict[int, str]:
    """One micro-batch through the learner thread's code (decide, ledger commit, then the federation count)."""
    batch = _batch(samples)
    node._worker._decide(batch)
    node._worker._after_batch(batch, None)
    return {it.seq: it.verdict for it in batch}


def _close(node: EdgeNode) -> None:
    node._worker.checkpoint()
    node._federation.stop()
    node.store.close()


def test_resends_answered_from_the_ledger_after_a_restart_are_counted_once(tmp_path):
    from device_sim.datasets.synthetic import SyntheticConfig, SyntheticDataset

    node = _node(tmp_path / "state")
    mc = node.config.model
    ds = SyntheticDataset(SyntheticConfig(num_classes=mc.num_classes, audio_features=mc.audio_features,
                                          channels=mc.visual_channels, seed=3, size=48))
    samples = []
    for seq in range(32):
        s = ds.sample(seq)
        s.device, s.seq = "uav-1", seq
        samples.append(s)
    direct = np.bincount([s.label for s in samples], minlength=mc.num_classes)  # each sample once

    first = _decide(node, samples[:16]) | _decide(node, samples[16:])
    link = node._federation
    np.testing.assert_array_equal(link.counts, direct)
    assert link.samples_total == link.samples_since_round == 32
    _close(node)

    node = _node(tmp_path / "state")  # the restart: trackers, counts and round rebuilt from disk
    link = node._federation
    np.testing.assert_array_equal(link.counts, direct)
    again = _decide(node, samples[:16]) | _decide(node, samples[16:])  # the device resends every seq
    assert again == first  # answered from the ledger with the stored verdicts
    np.testing.assert_array_equal(link.counts, direct)
    assert link.samples_total == link.samples_since_round == 32
    _close(node)


# ---------------------------------------------------------------------- a put keeps the learning after the reply
def _samples(node: EdgeNode, start: int, n: int) -> list:
    from device_sim.datasets.synthetic import SyntheticConfig, SyntheticDataset

    mc = node.config.model
    ds = SyntheticDataset(SyntheticConfig(num_classes=mc.num_classes, audio_features=mc.audio_features,
                                          channels=mc.visual_channels, seed=3, size=start + n))
    out = []
    for seq in range(start, start + n):
        s = ds.sample(seq)
        s.device, s.seq = "uav-1", seq
        out.append(s)
    return out


def _put(node: EdgeNode, rnd: int, arrays: dict) -> None:
    from edge_runtime.federation.node_link import _Request

    link = node._federation
    req = _Request("put", {"type": "put", "round": rnd}, arrays, rnd, 0.0)
    link._requests.append(req)
    link.service()  # the learner thread's service between micro-batches
    assert req.error is None, req.error


def _global_from(arrays: dict, shift: float) -> dict:
    return {k: (v + shift).astype(v.dtype) if k.startswith("model.") else v for k, v in arrays.items()}


def test_a_put_carries_the_learning_after_the_reply_and_a_rejoin_keeps_the_learning_since_the_merge(tmp_path):
    node = _node(tmp_path / "state")
    link = node._federation
    stream = _samples(node, 0, 48)
    _decide(node, stream[:16])
    _, replied = link._get({"type": "get", "round": 1})  # the ClientApp's train reply of round 1
    _decide(node, stream[16:32])  # learned while the other nodes finish the round
    _, before = link._get({"type": "get"})  # a plain get (evaluation) does not move the reference
    assert any(not np.array_equal(replied[k], before[k]) for k in replied if k.startswith("model."))
    glob = _global_from(replied, 0.01)
    _put(node, 1, glob)
    _, after = link._get({"type": "get"})
    for k in glob:
        if k.startswith("model."):  # w <- w_global + (w - w_reply), as a direct float32 computation
            np.testing.assert_allclose(after[k], glob[k] + (before[k] - replied[k]), rtol=1e-6, atol=1e-6, err_msg=k)
    assert link.round == 1 and link.samples_since_round == 16  # those 16 samples count in the next round's weight

    # the node misses round 2 (killed, restarted from its checkpoint) and learns on; rejoining it is put round 2's model
    _decide(node, stream[32:48])
    _close(node)
    node = _node(tmp_path / "state")
    link = node._federation
    _, local = link._get({"type": "get"})
    assert link.round == 1 and link.samples_since_round == 32
    glob2 = _global_from(glob, -0.02)
    _put(node, 2, glob2)
    _, rejoined = link._get({"type": "get"})
    for k in glob2:
        if k.startswith("model."):  # its learning since the merge of round 1 is kept on top of round 2's model
            np.testing.assert_allclose(rejoined[k], glob2[k] + (local[k] - glob[k]), rtol=1e-6, atol=1e-6, err_msg=k)
    assert link.round == 2 and link.samples_since_round == 32
    _close(node)


def test_a_put_with_nothing_learned_since_the_reply_leaves_exactly_the_global_model(tmp_path):
    node = _node(tmp_path / "state")
    link = node._federation
    _decide(node, _samples(node, 0, 16))
    _, replied = link._get({"type": "get", "round": 1})
    glob = _global_from(replied, 0.5)
    _put(node, 1, glob)
    _, after = link._get({"type": "get"})
    for k in glob:
        if k.startswith("model."):
            np.testing.assert_array_equal(after[k], glob[k])
    assert link.samples_since_round == 0
    _close(node)


def test_a_node_restarted_between_its_reply_and_the_merge_carries_only_what_it_learned_after_the_reply(tmp_path):
    """The reference of a round's reply is on disk (federation_ref.npz), so a restart does not count that learning twice."""
    node = _node(tmp_path / "state")
    link = node._federation
    stream = _samples(node, 0, 48)
    _decide(node, stream[:32])
    _, replied = link._get({"type": "get", "round": 1})  # the train reply of round 1: 32 samples in it
    _decide(node, stream[32:48])  # 16 more after the reply
    _close(node)
    node = _node(tmp_path / "state")  # killed and restarted before the merge of round 1
    link = node._federation
    _, local = link._get({"type": "get"})
    assert link.samples_since_round == 48
    glob = _global_from(replied, 0.01)
    _put(node, 1, glob)
    _, after = link._get({"type": "get"})
    for k in glob:
        if k.startswith("model."):  # w <- w_global + (w - w_reply): the reply's learning is in w_global already
            np.testing.assert_allclose(after[k], glob[k] + (local[k] - replied[k]), rtol=1e-6, atol=1e-6, err_msg=k)
    assert link.round == 1 and link.samples_since_round == 16
    _close(node)
