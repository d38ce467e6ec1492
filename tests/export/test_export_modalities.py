"""ONNX export of a model of named modalities (accel + gyro series, a ``stats`` vector) and of a model of
``model.builder``: one input pair per modality by name, per-modality logits, onnxruntime equal to PyTorch, and
the device's inference (``device_sim.infer``) runs on it."""

from __future__ import annotations

import time

import numpy as np
import onnx
import pytest
import torch
import zmq
from torch import nn

from device_sim.infer import ModelFollower, predict_sample
from edge_runtime.core.config import Config, config_from_dict
from edge_runtime.core.sample import Sample
from edge_runtime.export.onnx import (
    difference_to_torch,
    export_checkpoint,
    export_onnx,
    make_session,
    onnx_bytes,
    predict,
    verify_onnx,
)
from edge_runtime.learning.checkpoint import CheckpointManager
from edge_runtime.learning.learner import Learner
from edge_runtime.learning.model import ModelOutput, build_model
from edge_runtime.node.publish import model_message

TOL = 1e-4
THREE = {"modalities": {"accel": {"kind": "series", "channels": 3}, "gyro": {"kind": "series", "channels": 3},
                        "stats": {"kind": "vector", "channels": 8}},
         "model": {"num_classes": 5}, "selection": {"policy": "all"}}
NAMES = ["accel", "accel_lengths", "gyro", "gyro_lengths", "stats", "stats_lengths"]
OUTPUTS = ["logits", "accel_logits", "gyro_logits", "stats_logits"]


def imu_sample(i: int, steps: int) -> Sample:
    rng = np.random.default_rng(i)
    label = i % 5
    accel = rng.normal(size=(steps, 3)).astype(np.float32) + label * 1.0
    gyro = rng.normal(size=(steps, 3)).astype(np.float32) - label * 0.25
    stats = rng.normal(size=8).astype(np.float32) + 3 * np.eye(8, dtype=np.float32)[label]
    return Sample({"accel": accel, "gyro": gyro, "stats": stats}, label=label, device="imu", seq=i)


def padded(batch: int, steps: int, seed: int) -> dict[str, torch.Tensor]:
    """A padded batch by input name: time axes of ``steps`` with shorter samples in it."""
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([max(1, steps - 3 * i) for i in range(batch)], dtype=torch.long)
    accel, gyro = torch.randn(batch, steps, 3, generator=gen), torch.randn(batch, steps, 3, generator=gen)
    for row, n in enumerate(lengths.tolist()):  # garbage past each length: padding must not leak
        accel[row, n:] = 99.0
        gyro[row, n:] = -99.0
    return {"accel": accel, "accel_lengths": lengths, "gyro": gyro, "gyro_lengths": lengths.flip(0),
            "stats": torch.randn(batch, 8, generator=gen), "stats_lengths": torch.full((batch,), 8)}


def diffs(model: nn.Module, session, feeds: dict[str, torch.Tensor]) -> dict[str, float]:
    model.eval()
    with torch.no_grad():
        ref = model(*(feeds[n] for n in NAMES))
    got = predict(session, feeds)
    refs = {"logits": ref.logits, **{f"{k}_logits": v for k, v in ref.unimodal.items()}}
    assert sorted(got) == sorted(OUTPUTS)
    return {name: float(np.abs(got[name] - refs[name].numpy()).max()) for name in OUTPUTS}


@pytest.fixture(scope="module")
def trained():
    config = config_from_dict(THREE)
    torch.manual_seed(0)
    learner = Learner(config)
    samples = [imu_sample(i, 20 + i % 15) for i in range(256)]
    for i in range(0, len(samples), 32):
        learner.observe(samples[i : i + 32])
    assert learner.stats.updates > 0
    return learner, config


def test_three_modalities_export_with_their_names_and_match_pytorch(trained, tmp_path):
    learner, config = trained
    path = export_onnx(learner.model, tmp_path / "imu.onnx", config=config)
    assert learner.model.training, "export must not switch the live model to eval mode"
    proto = onnx.load(str(path))
    assert [i.name for i in proto.graph.input] == NAMES
    assert [o.name for o in proto.graph.output] == OUTPUTS
    dims = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in proto.graph.input}
    assert dims["accel"] == ["batch", "accel_steps", 3] and dims["gyro"] == ["batch", "gyro_steps", 3]
    assert dims["stats"] == ["batch", 8] and dims["stats_lengths"] == ["batch"]
    verify_onnx(path.read_bytes(), ["accel", "gyro", "stats"])
    with pytest.raises(ValueError, match="not an edge-runtime model"):
        verify_onnx(path.read_bytes(), ["audio", "video"])
    session = make_session(path, providers=["CPUExecutionProvider"])
    for batch, steps in [(1, 5), (3, 30), (9, 47)]:  # other sizes than the traced ones
        d = diffs(learner.model, session, padded(batch, steps, seed=batch))
        assert max(d.values()) <= TOL, (batch, steps, d)
    learner.model.train()
    # the model-only path reads the same modalities from the built-in model's encoders
    assert difference_to_torch(learner.model.eval(), path) <= TOL
    assert difference_to_torch(learner.model, path, config) <= TOL
    learner.model.train()


def test_checkpoint_export_and_on_device_inference(trained, tmp_path):
    learner, config = trained
    ckpt = CheckpointManager(tmp_path / "ckpts").save({"learner": learner.state_dict()}, step=256)
    out = export_checkpoint(ckpt, tmp_path / "ckpt.onnx", config)
    session = make_session(out, providers=["CPUExecutionProvider"])
    assert max(diffs(learner.model, session, padded(4, 25, seed=7)).values()) <= TOL
    learner.model.train()

    # device_sim.infer: the model's inputs are read from the ONNX model, fed from the sample's tensors by name
    learner.model.eval()
    hits = 0
    for i in range(300, 340):
        sample = imu_sample(i, 18 + i % 9)
        got = predict_sample(session, sample)
        with torch.no_grad():
            ref = learner.model(*(t for name in ("accel", "gyro", "stats") for t in (
                torch.from_numpy(sample.tensors[name])[None], torch.tensor([sample.tensors[name].shape[0]]))))
        assert np.abs(got["logits"] - ref.logits.numpy()).max() <= TOL
        hits += int(got["logits"][0].argmax() == sample.label)
    learner.model.train()
    assert hits >= 16, f"{hits} of 40 right: the model did not learn (chance 8)"
    assert predict_sample(session, Sample({"accel": np.zeros((4, 3), np.float32)}, label=0)) is None  # lacks gyro, stats

    # ... and a ModelFollower loads the model from a publisher and predicts with it
    ctx = zmq.Context()
    pub = ctx.socket(zmq.PUB)
    port = pub.bind_to_random_port("tcp://127.0.0.1")
    follower = ModelFollower(f"tcp://127.0.0.1:{port}", ctx=ctx, providers=["CPUExecutionProvider"])
    try:
        data = out.read_bytes()
        deadline = time.monotonic() + 30
        while follower.version is None and time.monotonic() < deadline:
            pub.send_multipart(model_message(1, 256, data, 17))
            time.sleep(0.1)
        assert follower.version == 1, follower.summary()
        for i in range(400, 410):
            follower.observe(imu_sample(i, 20))
        stats = follower.summary()["per_version"]["1"]
        assert stats["samples"] == 10 and stats["accuracy"] is not None, stats
    finally:
        follower.close()
        pub.close(0)
        ctx.destroy(linger=0)


def test_node_publisher_bytes_of_three_modalities(trained):
    learner, config = trained
    data = onnx_bytes(learner.model, config=config)  # what the node publishes (ModelPublisher passes its config)
    verify_onnx(data)
    assert [i.name for i in onnx.load_model_from_string(data).graph.input] == NAMES


class TinyUserModel(nn.Module):
    """A model of one's own (``model.builder``): a mean over time per series, the vector as it is, linear heads."""

    def __init__(self, config: Config) -> None:
        super().__init__()
        self.modalities = tuple(config.modalities)
        widths = {name: int(m.channels) for name, m in config.modalities.items()}
        k = config.model.num_classes
        self.embed_dims = {name: 6 for name in self.modalities}
        self.proj = nn.ModuleDict({name: nn.Linear(widths[name], 6) for name in self.modalities})
        self.heads = nn.ModuleDict({name: nn.Linear(6, k) for name in self.modalities})
        self.fused = nn.Linear(6 * len(self.modalities), k)

    def forward(self, *inputs: torch.Tensor) -> ModelOutput:
        z = {}
        for i, name in enumerate(self.modalities):
            x, lengths = inputs[2 * i], inputs[2 * i + 1]
            if x.dim() == 3:  # (B, T, C): a masked mean over the valid steps
                mask = (torch.arange(x.shape[1])[None, :] < lengths[:, None]).to(x.dtype)
                x = (x * mask[..., None]).sum(1) / lengths.clamp(min=1)[:, None].to(x.dtype)
            z[name] = torch.tanh(self.proj[name](x))
        unimodal = {name: self.heads[name](z[name]) for name in self.modalities}
        return ModelOutput(self.fused(torch.cat([z[n] for n in self.modalities], 1)), unimodal, z)


def tiny_user_model(config: Config) -> nn.Module:
    return TinyUserModel(config)


def test_a_model_of_model_builder_exports_the_same_way(tmp_path):
    config = config_from_dict({**THREE, "model": {"num_classes": 5, "builder": f"{__name__}:tiny_user_model"}})
    torch.manual_seed(3)
    model = build_model(config).eval()
    assert isinstance(model, TinyUserModel)
    with pytest.raises(TypeError, match="give the configuration"):
        onnx_bytes(model)  # a user model's input shapes come from the configuration
    path = export_onnx(model, tmp_path / "user.onnx", config=config)
    proto = onnx.load(str(path))
    assert [i.name for i in proto.graph.input] == NAMES  # stats_lengths too, though the model ignores it
    assert [o.name for o in proto.graph.output] == OUTPUTS
    session = make_session(path, providers=["CPUExecutionProvider"])
    assert max(diffs(model, session, padded(6, 33, seed=2)).values()) <= TOL
    assert difference_to_torch(model, path, config) <= TOL
    got = predict_sample(session, imu_sample(5, 12))
    assert got is not None and got["logits"].shape == (1, 5)


def test_a_config_whose_modalities_differ_from_the_model_is_refused():
    model = build_model(Config().model)  # audio + video
    with pytest.raises(ValueError, match=r"the model takes the modalities \['audio', 'video'\]"):
        onnx_bytes(model, config=config_from_dict(THREE))
