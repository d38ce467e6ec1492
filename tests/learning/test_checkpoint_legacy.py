"""A checkpoint written before modalities were named (``audio.*``, ``visual.*``, ``fusion.audio_head.*`` keys)
still restores into the default audio + video model, through the same path a node takes: the checkpoint file,
the node's start-up check (``checkpoint_problem``) and ``Learner.load_state_dict``; a checkpoint of other
modalities is refused naming them."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from edge_runtime.core.config import Config, config_from_dict
from edge_runtime.learning.checkpoint import CheckpointManager, checkpoint_modalities, upgrade_model_state
from edge_runtime.learning.learner import Learner
from edge_runtime.node.compat import checkpoint_problem
from tests.support.streams import stream

#: today's prefix -> the one a checkpoint of the audio-visual model had before modalities were named
BACK = (("encoders.audio.", "audio."), ("encoders.video.", "visual."),
        ("fusion.heads.audio.", "fusion.audio_head."), ("fusion.heads.video.", "fusion.video_head."))


def legacy(model_state: dict) -> dict:
    out = {}
    for key, value in model_state.items():
        for new, old in BACK:
            if key.startswith(new):
                key = old + key[len(new):]
                break
        out[key] = value
    return out


def legacy_learner_state(state: dict) -> dict:
    """A learner state as an older version wrote it: its model's (and the teacher's) keys renamed back."""
    old = dict(state)
    old["model"] = legacy(state["model"])
    if isinstance(state.get("teacher"), dict) and "model" in state["teacher"]:
        old["teacher"] = {**state["teacher"], "model": legacy(state["teacher"]["model"])}
    return old


@pytest.mark.parametrize("fusion", ["sum", "gated"])
def test_an_old_checkpoint_restores_into_the_default_model(tmp_path: Path, synthetic, fusion):
    config = config_from_dict({"model": {"fusion": fusion}, "training": {"kd_lambda": 0.5}})
    samples = stream(synthetic, range(192))
    torch.manual_seed(0)
    a = Learner(config)
    for i in range(0, 128, 32):
        a.observe(samples[i : i + 32])
    state = a.state_dict()
    old = legacy_learner_state(state)
    assert any(k.startswith("visual.") for k in old["model"]) and any(k.startswith("fusion.audio_head.") for k in old["model"])
    assert not any(k.startswith("encoders.") for k in old["model"])

    path = CheckpointManager(tmp_path / "old").save({"learner": old, "node": {"decided": 128}}, step=128)
    loaded, where = CheckpointManager(tmp_path / "old").load_latest()
    assert where == path
    b = Learner(config)
    # the node's check before it loads (edge_runtime/node/daemon.py): an old checkpoint is this model's
    assert checkpoint_problem(b.model.state_dict(), loaded["learner"]["model"], where, b.model.modalities) is None
    assert checkpoint_modalities(upgrade_model_state(loaded["learner"]["model"], b.model.modalities)) == ["audio", "video"]
    b.load_state_dict(loaded["learner"])
    for key, value in a.model.state_dict().items():
        assert torch.equal(b.model.state_dict()[key], value), key

    # and it goes on exactly as the learner it was saved from (same optimizer moments, teacher, buffer)
    c = Learner(config)
    c.load_state_dict(state)
    rng = torch.get_rng_state()
    verdicts_b = b.observe(samples[128:160])
    torch.set_rng_state(rng)
    verdicts_c = c.observe(samples[128:160])
    assert verdicts_b == verdicts_c
    for key, value in c.model.state_dict().items():
        assert torch.allclose(b.model.state_dict()[key], value, atol=1e-6), key


def test_a_checkpoint_of_other_modalities_is_refused_naming_them(tmp_path: Path):
    imu = config_from_dict({"modalities": {"accel": {"kind": "series", "channels": 3},
                                           "gyro": {"kind": "series", "channels": 3}}})
    theirs = Learner(imu).model.state_dict()
    ours = Learner(Config()).model
    problem = checkpoint_problem(ours.state_dict(), theirs, tmp_path / "checkpoints" / "ckpt-1.pt", ours.modalities)
    assert problem is not None
    assert "['accel', 'gyro']" in problem and "['audio', 'video']" in problem, problem
    assert "state reset" in problem
    # an old (unnamed) checkpoint is the default modalities' only: into an accel/gyro model it is another model
    imu_model = Learner(imu).model
    old = legacy(ours.state_dict())
    problem = checkpoint_problem(imu_model.state_dict(), old, tmp_path / "checkpoints" / "ckpt-1.pt", imu_model.modalities)
    assert problem is not None and "another model" in problem, problem
