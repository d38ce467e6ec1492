"""Schema negotiation, stored-state checks and the device's frame handling keyed by modality name (no daemon)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from device_sim.client import ClientConfig, DeviceClient, schema_of, welcome_frame_sizes
from edge_runtime import wire
from edge_runtime.core.config import config_from_dict
from edge_runtime.core.features import FeatureConfig, raw_tensors, to_features
from edge_runtime.core.sample import Sample, TensorSpec
from edge_runtime.learning.buffer.sqlite import SqliteStore
from edge_runtime.node.compat import stored_state_problem
from edge_runtime.node.schema import RAW_SCHEMA, SchemaNegotiator, node_frame_size, raw_modalities, stored_frame_size

IMU = {"modalities": {"accel": {"kind": "series", "channels": 3}, "gyro": {"kind": "series", "channels": 3}}}
TWO_CAMERAS = {"modalities": {"left": {"kind": "frames"}, "right": {"kind": "frames", "channels": 3},
                              "accel": {"kind": "series", "channels": 3, "max_steps": 100}},
               "features": {"image_size": 16}}


def test_a_node_without_frames_has_no_frame_size_and_sizes_its_frames_from_its_modalities():
    config = config_from_dict(IMU)
    assert node_frame_size(config, None) is None
    node = SchemaNegotiator(config, None)
    schema = node.features_contract().schema
    assert list(schema) == ["accel", "gyro"] and tuple(schema["gyro"].shape) == (-1, 3)
    assert node.largest_frame() == 4096 * 3 * 4  # a series' default bound (4096 steps) x 3 channels x float32; no raw media
    contract, raw, problem = node.welcome({"accel": schema["accel"], "mag": schema["accel"]})
    assert contract is None and not raw
    assert "'mag' is not a modality of this node; missing: 'gyro'" in problem, problem
    assert "send raw media" not in problem  # this node cannot take raw media: not offered
    contract, raw, problem = node.welcome(dict(RAW_SCHEMA))
    assert contract is None and raw and "one audio and one frames modality" in problem, problem
    assert raw_modalities(config) is None


def test_every_frames_modality_has_the_node_frame_size():
    config = config_from_dict(TWO_CAMERAS)
    assert node_frame_size(config, None) == (16, 16)
    node = SchemaNegotiator(config, (16, 16))
    schema = node.features_contract().schema
    assert tuple(schema["left"].shape) == (-1, 1, 16, 16) and tuple(schema["right"].shape) == (-1, 3, 16, 16)
    declared = {"left": TensorSpec("float32", (-1, 1, -1, -1)), "right": TensorSpec("float32", (-1, 3, 24, 24)),
                "accel": TensorSpec("float32", (-1, 3))}
    contract, _raw, problem = node.welcome(declared)
    assert contract is None and "schema.right.shape[2] is 24 but this node takes 16" in problem, problem
    declared["right"] = TensorSpec("float32", (-1, 3, -1, -1))
    contract, _raw, problem = node.welcome(declared)
    assert problem is None and contract.schema == schema
    # the largest frame: the bigger of 8 frames of 3 x 16 x 16 and 100 steps of 3 floats
    assert node.largest_frame() == max(8 * 3 * 16 * 16 * 4, 100 * 3 * 4)
    # a sample with the wrong channel count of one modality names it and its shape
    shapes = {"left": ("float32", (2, 1, 16, 16)), "right": ("float32", (2, 1, 16, 16)), "accel": ("float32", (5, 3))}
    problem = contract.check_shapes(shapes)
    assert problem.code == "schema_mismatch" and "'right'" in problem.message and "[2, 1, 16, 16]" in problem.message


def test_raw_media_becomes_the_configured_names_of_one_audio_and_one_frames_modality():
    config = config_from_dict({"modalities": {"mic": {"kind": "audio"}, "cam": {"kind": "frames"}}, "features": {"image_size": 16}})
    assert raw_modalities(config) == ("mic", "cam")
    node = SchemaNegotiator(config, node_frame_size(config, None))
    contract, raw, problem = node.welcome(dict(RAW_SCHEMA))
    assert problem is None and raw
    fc = FeatureConfig(image_size=16)
    rng = np.random.default_rng(0)
    tensors = raw_tensors(rng.normal(size=8000).astype(np.float32) * 0.1, rng.integers(0, 255, (3, 20, 20, 3), dtype=np.uint8), fc)
    features = to_features(tensors, fc, "mic", "cam")
    assert sorted(features) == ["cam", "mic"] and features["cam"].shape[1:] == (1, 16, 16)
    shapes = {n: (t.dtype.name, t.shape) for n, t in features.items()}
    assert node.features_contract().check_shapes(shapes) is None  # what the worker hands the learner fits the model
    # a third modality: raw media cannot fill it
    three = config_from_dict({"modalities": {"mic": {"kind": "audio"}, "cam": {"kind": "frames"},
                                             "accel": {"kind": "series", "channels": 3}}})
    assert raw_modalities(three) is None


def _sample(seq: int, tensors: dict, label: int = 1) -> Sample:
    return Sample(tensors, label=label, device="d", seq=seq)


def test_stored_state_of_other_modalities_or_channels_is_refused_naming_them(tmp_path: Path):
    store = SqliteStore(tmp_path / "state.db")
    try:
        for seq in range(5):
            store.put(("d", seq), _sample(seq, {"accel": np.ones((4, 3), np.float32), "gyro": np.ones((4, 3), np.float32)}))
        store.commit()
        where = tmp_path / "state.db"
        assert stored_state_problem(config_from_dict(IMU), store, None, where) is None
        four = config_from_dict({"modalities": {"accel": {"kind": "series", "channels": 3},
                                                "gyro": {"kind": "series", "channels": 4}}})
        problem = stored_state_problem(four, store, None, where)
        assert problem and "modalities.gyro.channels is 4" in problem and "'gyro'" in problem, problem
        other = config_from_dict({"modalities": {"accel": {"kind": "series", "channels": 3},
                                                 "mag": {"kind": "series", "channels": 3}}})
        problem = stored_state_problem(other, store, None, where)
        assert problem and "['accel', 'mag']" in problem and "gyro" in problem, problem
        assert stored_frame_size(store, None) is None
    finally:
        store.close()


class _Sock:
    def __init__(self) -> None:
        self.sent: list[list] = []

    def send_multipart(self, frames, *args, **kwargs) -> None:
        self.sent.append([bytes(f) for f in frames])


def test_the_device_declares_its_samples_tensors_and_resizes_every_frames_tensor_the_welcome_fixes():
    first = _sample(0, {"left": np.ones((2, 1, 8, 8), np.float32), "right": np.ones((2, 3, 8, 8), np.float32),
                        "accel": np.ones((10, 3), np.float32), "stats": np.ones(8, np.float32),
                        "raw": np.ones((2, 8, 8, 3), np.uint8)})
    schema = schema_of(first)
    assert schema == {"left": TensorSpec("float32", (-1, 1, -1, -1)), "right": TensorSpec("float32", (-1, 3, -1, -1)),
                      "accel": TensorSpec("float32", (-1, 3)), "stats": TensorSpec("float32", (8,)),
                      "raw": TensorSpec("uint8", (-1, 8, 8, 3))}
    client = DeviceClient(ClientConfig("tcp://127.0.0.1:1", "d"), [first])
    assert client.schema == schema  # declared from its samples, without a schema given
    welcome = {"left": TensorSpec("float32", (-1, 1, 16, 16)), "right": TensorSpec("float32", (-1, 3, 16, 16)),
               "accel": TensorSpec("float32", (-1, 3)), "stats": TensorSpec("float32", (8,)),
               "raw": TensorSpec("uint8", (-1, 8, 8, 3))}
    client.frame_sizes = welcome_frame_sizes(welcome)
    assert client.frame_sizes == {"left": (16, 16), "right": (16, 16)}
    sock = _Sock()
    client._send_sample(sock, first, resend=False)
    msg = wire.decode(sock.sent[0])
    assert msg.tensors["left"].shape == (2, 1, 16, 16) and msg.tensors["right"].shape == (2, 3, 16, 16)
    assert msg.tensors["accel"].shape == (10, 3) and msg.tensors["raw"].shape == (2, 8, 8, 3)  # not frames: as they were
