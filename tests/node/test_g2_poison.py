"""Issue 24, G2 against a real node: one device's 3e38 sample must not poison everyone's model.

Before: the sample (finite, so it passed the NaN/Inf check) was acked ``admitted``, ~104k of 105k
weights became NaN/Inf, the checkpoint held them and a restart kept them. Now it is refused with
``invalid:value_too_large`` (or, with its limit lifted, ``invalid:non_finite_update`` by the
learner's guard), the other samples are learned, and every weight in every checkpoint is finite,
after SIGTERM and after a restart.
"""

from __future__ import annotations

import hashlib
import io

import numpy as np
import pytest
import torch
import zmq

from tests.support.nodeclient import Device
from tests.support.nodeproc import NodeProcess

HEADER = 8 + 32  # magic + SHA-256 (edge_runtime.learning.checkpoint's layout)


def _checkpoint_tensors(path) -> dict[str, torch.Tensor]:
    """Every float tensor of a checkpoint file, read directly (not through the loader, which now refuses NaN/Inf)."""
    data = path.read_bytes()
    assert hashlib.sha256(data[HEADER:]).digest() == data[8:HEADER], path
    state = torch.load(io.BytesIO(data[HEADER:]), weights_only=True)
    out: dict[str, torch.Tensor] = {}

    def walk(x, name):
        if isinstance(x, torch.Tensor) and x.is_floating_point():
            out[name] = x
        elif isinstance(x, dict):
            for k, v in x.items():
                walk(v, f"{name}.{k}")
        elif isinstance(x, (list, tuple)):
            for i, v in enumerate(x):
                walk(v, f"{name}[{i}]")

    walk(state, "")
    return out


def _assert_checkpoints_finite(node: NodeProcess) -> int:
    paths = sorted((node.state_dir / "checkpoints").glob("ckpt-*.pt"))
    assert paths, "no checkpoint written"
    weights = 0
    for path in paths:
        tensors = _checkpoint_tensors(path)
        bad = {name: int((~torch.isfinite(t)).sum()) for name, t in tensors.items() if not bool(torch.isfinite(t).all())}
        assert not bad, f"{path.name}: non-finite values in {bad}"
        weights += sum(t.numel() for name, t in tensors.items() if name.startswith(".learner.model."))
    return weights


def _send(dev: Device, seqs, rng, poison: int | None = None) -> dict[int, str]:
    for seq in seqs:
        audio = rng.standard_normal((20, 13)).astype("<f4")
        if seq == poison:
            audio = np.full((20, 13), 3e38, "<f4")
        dev.sample(seq, label=seq % 10, audio=audio, video=rng.standard_normal((2, 1, 16, 16)).astype("<f4"))
    return dev.acks(set(seqs), timeout_ms=120_000)


@pytest.mark.slow
@pytest.mark.parametrize("limit, verdict", [
    (1e4, "invalid:value_too_large"),  # the default limit: refused at the contract
    (None, "invalid:non_finite_update"),  # no limit: the learner's guard rolls its update back
])
def test_g2_one_3e38_sample_is_refused_and_no_checkpoint_holds_nan_inf(tmp_path, limit, verdict):
    node = NodeProcess(tmp_path, {"node": {"frame_size": [16, 16], "batch_size": 8, "credit": 32,
                                           "max_abs_value": {"audio": limit}}}).start()
    ctx = zmq.Context()
    rng = np.random.default_rng(24)
    try:
        attacker, good = Device(ctx, node.endpoint, "g2-attacker"), Device(ctx, node.endpoint, "g2-good")
        assert attacker.hello()["type"] == "welcome" and good.hello()["type"] == "welcome"
        before = _send(good, range(16), rng)
        acks = _send(attacker, range(12), rng, poison=5)
        assert acks[5] == verdict, acks
        assert all(v in ("admitted", "trained") for s, v in acks.items() if s != 5), acks
        after = _send(good, range(16, 32), rng)  # the other device still learns
        assert set(before.values()) | set(after.values()) <= {"admitted", "trained"}, (before, after)
        attacker.close()
        good.close()
        assert node.stop() == 0, node.log()
        assert _assert_checkpoints_finite(node) > 100_000  # the whole model was in it, and all of it finite

        node.start()  # restart from the checkpoint: still finite, still learning
        again = Device(ctx, node.endpoint, "g2-good")
        assert again.hello()["type"] == "welcome"
        resumed = _send(again, range(32, 48), rng)
        assert set(resumed.values()) <= {"admitted", "trained"}, resumed
        again.close()
        assert node.stop() == 0, node.log()
        _assert_checkpoints_finite(node)
        assert "checkpoint_damaged" not in node.log() and "NaN/Inf values" not in node.log()  # no checkpoint refused
    finally:
        node.kill()
        ctx.destroy(linger=0)


RAW_HELLO = {"waveform": {"dtype": "float32", "shape": [-1]}, "frames": {"dtype": "uint8", "shape": [-1, -1, -1, 3]}}


@pytest.mark.slow
def test_g2_raw_waveform_over_its_limit_is_refused_before_features_are_computed(tmp_path):
    """Raw media is turned into features on the learner thread: its waveform limit is checked there, first."""
    node = NodeProcess(tmp_path, {"node": {"frame_size": [16, 16], "batch_size": 4, "max_abs_value": {"waveform": 10.0}},
                                  "features": {"image_size": 16}}).start()
    ctx = zmq.Context()
    rng = np.random.default_rng(2)
    try:
        dev = Device(ctx, node.endpoint, "g2-raw")
        assert dev.hello(schema=RAW_HELLO)["type"] == "welcome"
        frames = rng.integers(0, 256, (3, 24, 24, 3), dtype=np.uint8)
        for seq, peak in enumerate([0.5, 11.0, 3e38, 10.0]):  # 10.0 is at the limit: allowed
            wave = (rng.uniform(-1, 1, 8000) * peak).astype("<f4")
            wave[0] = peak
            dev.send({"v": 1, "type": "sample", "seq": seq, "ts": 0.0, "label": seq % 10, "split": "train",
                      "tensors": [{"name": "waveform", "dtype": "float32", "shape": list(wave.shape)},
                                  {"name": "frames", "dtype": "uint8", "shape": list(frames.shape)}]},
                     wave.tobytes(), frames.tobytes())
        acks = dev.acks({0, 1, 2, 3}, timeout_ms=120_000)
        assert acks[1] == acks[2] == "invalid:value_too_large", acks
        assert acks[0] in ("admitted", "trained") and acks[3] in ("admitted", "trained"), acks
        dev.close()
        assert node.stop() == 0, node.log()
    finally:
        node.kill()
        ctx.destroy(linger=0)
