"""ONNX export: a trained learner's model in onnxruntime (CPU) matches PyTorch; checkpoints; corrupt models."""

from __future__ import annotations

import argparse

import numpy as np
import onnx
import pytest
import torch

from edge_runtime.learning.batch import collate
from edge_runtime.learning.checkpoint import CheckpointError, CheckpointManager
from edge_runtime.core.config import config_from_dict
from edge_runtime.export.onnx import (
    INPUT_NAMES,
    OUTPUT_NAMES,
    PROVIDER_ORDER,
    export_checkpoint,
    export_onnx,
    make_session,
    onnx_bytes,
    predict,
    select_providers,
    verify_onnx,
)
from edge_runtime.cli.export import add_export_parser, run_export
from edge_runtime.export.opset import DEFAULT_OPSET
from edge_runtime.learning.learner import Learner
from tests.support.streams import stream

TOL = 1e-4


@pytest.fixture(scope="module")
def trained(synthetic):
    """A learner trained on 1024 synthetic samples (32 micro-batches of 32), with its config."""
    config = config_from_dict({"selection": {"policy": "all"}})
    learner = Learner(config)
    samples = stream(synthetic, range(1024))
    for i in range(0, len(samples), 32):
        learner.observe(samples[i : i + 32])
    assert learner.stats.updates >= 32
    return learner, config


def padded_batch(synthetic, start: int, batch: int, audio_steps: int, video_steps: int):
    """``batch`` synthetic samples padded to exactly (audio_steps, video_steps) frames.

    Each sample is cut to at most the padded length, so per-sample lengths vary and are shorter than
    the padded length for most samples (the samples have 20..40 audio and 2..6 video frames).
    """
    samples = [synthetic.sample(start + i) for i in range(batch)]
    b = collate(samples, ("audio", "video"))
    a, v = b.tensors["audio"], b.tensors["video"]
    audio = torch.zeros(batch, audio_steps, a.shape[2])
    video = torch.zeros(batch, video_steps, *v.shape[2:])
    ta = min(audio_steps, a.shape[1])
    tv = min(video_steps, v.shape[1])
    audio[:, :ta] = a[:, :ta]
    video[:, :tv] = v[:, :tv]
    return audio, b.lengths["audio"].clamp(max=audio_steps), video, b.lengths["video"].clamp(max=video_steps)


def max_diffs(model, session, inputs) -> dict[str, float]:
    model.eval()
    with torch.no_grad():
        ref = model(*inputs)
    got = predict(session, *inputs)
    refs = {"logits": ref.logits, **{f"{name}_logits": t for name, t in ref.unimodal.items()}}
    assert set(refs) == set(OUTPUT_NAMES)
    return {name: float(np.abs(got[name] - refs[name].numpy()).max()) for name in OUTPUT_NAMES}


# (batch, audio_steps, video_steps): two batch sizes x two sequence lengths
CASES = [(3, 30, 4), (3, 48, 7), (17, 30, 4), (17, 48, 7)]


@pytest.mark.slow
def test_trained_model_matches_pytorch(trained, synthetic, tmp_path):
    learner, _ = trained
    path = export_onnx(learner.model, tmp_path / "model.onnx")
    assert learner.model.training, "export must not switch the live model to eval mode"
    pools = [m for m in learner.model.modules() if isinstance(m, torch.nn.AdaptiveAvgPool2d)]
    assert pools, "export must not rewrite the live model's modules (only its copy's)"
    session = make_session(path, providers=["CPUExecutionProvider"])
    assert session.get_providers() == ["CPUExecutionProvider"]
    model = learner.model
    for batch, ta, tv in CASES:
        inputs = padded_batch(synthetic, 3000 + batch, batch, ta, tv)
        # real padding: some samples are shorter than the padded axes, and lengths differ
        assert int(inputs[1].min()) < ta and int(inputs[3].min()) < tv
        assert len(set(inputs[1].tolist())) > 1
        diffs = max_diffs(model, session, inputs)
        assert max(diffs.values()) <= TOL, (batch, ta, tv, diffs)
        got = predict(session, *inputs)
        assert got["logits"].shape == (batch, 10)
    model.train()


def test_predictions_equal_and_model_is_trained(trained, synthetic):
    """On held-out samples the exported graph predicts what PyTorch predicts, and the model has learned."""
    learner, _ = trained
    session = make_session(onnx_bytes(learner.model), providers=["CPUExecutionProvider"])
    inputs = padded_batch(synthetic, 3500, 200, 40, 6)  # not trained on (the stream was 0..1023)
    learner.model.eval()
    with torch.no_grad():
        ref = learner.model(*inputs).logits.argmax(1).numpy()
    learner.model.train()
    got = predict(session, *inputs)["logits"].argmax(1)
    assert np.array_equal(got, ref)
    labels = np.array([synthetic.sample(3500 + i).label for i in range(200)])
    assert (got == labels).mean() > 0.5  # chance is 0.1
    assert len(set(got.tolist())) >= 8  # not a constant prediction


def test_padding_does_not_change_exported_outputs(trained, synthetic):
    """A sample padded to a longer axis gives the same ONNX logits as without padding."""
    learner, _ = trained
    session = make_session(onnx_bytes(learner.model), providers=["CPUExecutionProvider"])
    short = padded_batch(synthetic, 100, 5, 40, 6)
    a, al, v, vl = short
    long_a = torch.cat([a, torch.randn(5, 25, a.shape[2])], 1)  # garbage in the padding
    long_v = torch.cat([v, torch.randn(5, 3, *v.shape[2:])], 1)
    out_short = predict(session, a, al, v, vl)
    out_long = predict(session, long_a, al, long_v, vl)
    for name in OUTPUT_NAMES:
        assert np.abs(out_short[name] - out_long[name]).max() <= TOL


def test_frame_size_is_dynamic(trained, synthetic):
    """Frames of other sizes than the traced 16x16 (the tiny CNN pools to a 4x4 grid, also from
    feature maps that 4 does not divide: 20x20 frames -> 10x10) match PyTorch."""
    learner, _ = trained
    session = make_session(onnx_bytes(learner.model), providers=["CPUExecutionProvider"])
    a, al, v, vl = padded_batch(synthetic, 1500, 6, 30, 4)
    learner.model.eval()
    for size in (8, 20, 24, 6):
        frames = torch.nn.functional.interpolate(v.flatten(0, 1), size=(size, size), mode="bilinear").unflatten(0, v.shape[:2])
        diffs = max_diffs(learner.model, session, (a, al, frames, vl))
        assert max(diffs.values()) <= TOL, (size, diffs)
    learner.model.train()


def test_other_fusion_and_opset(synthetic):
    """Gated fusion exported at the newest opset the exporter writes also matches PyTorch."""
    from edge_runtime.learning.model import build_model

    config = config_from_dict({"model": {"fusion": "gated"}})
    torch.manual_seed(1)
    model = build_model(config.model).eval()
    data = onnx_bytes(model, opset=20)
    assert max(op.version for op in onnx.load_model_from_string(data).opset_import if op.domain in ("", "ai.onnx")) == 20
    session = make_session(data, providers=["CPUExecutionProvider"])
    for batch, ta, tv in [(3, 30, 4), (17, 48, 7)]:
        diffs = max_diffs(model, session, padded_batch(synthetic, 500, batch, ta, tv))
        assert max(diffs.values()) <= TOL, diffs


@pytest.mark.slow
def test_mobilenet_backbone_matches_pytorch(synthetic):
    """The MobileNetV2 frame encoder (GroupNorm) exports too; frames of 16x16 and 24x24 (dynamic H, W)."""
    from edge_runtime.learning.model import build_model

    config = config_from_dict({"model": {"visual_backbone": "mobilenet_v2", "mobilenet_width": 0.35, "fusion": "concat"}})
    torch.manual_seed(2)
    model = build_model(config.model).eval()
    session = make_session(onnx_bytes(model), providers=["CPUExecutionProvider"])
    a, al, v, vl = padded_batch(synthetic, 900, 5, 30, 4)
    diffs = max_diffs(model, session, (a, al, v, vl))
    assert max(diffs.values()) <= TOL, diffs
    big = torch.nn.functional.interpolate(v.flatten(0, 1), size=(24, 24), mode="bilinear").unflatten(0, v.shape[:2])
    diffs = max_diffs(model, session, (a, al, big, vl))
    assert max(diffs.values()) <= TOL, diffs


def test_export_io_and_opset(trained):
    learner, _ = trained
    proto = onnx.load_model_from_string(onnx_bytes(learner.model))
    assert [i.name for i in proto.graph.input] == list(INPUT_NAMES)
    assert [o.name for o in proto.graph.output] == list(OUTPUT_NAMES)
    opsets = {op.domain: op.version for op in proto.opset_import}
    assert opsets.get("", opsets.get("ai.onnx")) == DEFAULT_OPSET == 17
    dims = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in proto.graph.input}
    assert dims["audio"] == ["batch", "audio_steps", 13]
    assert dims["audio_lengths"] == ["batch"]
    assert dims["video"] == ["batch", "video_steps", 1, "height", "width"]
    for bad in (12, 21):
        with pytest.raises(ValueError, match="opset must be in 13..20"):
            onnx_bytes(learner.model, opset=bad)


@pytest.mark.slow
def test_export_from_checkpoint_file(trained, synthetic, tmp_path):
    learner, config = trained
    path = CheckpointManager(tmp_path / "ckpts").save({"learner": learner.state_dict(), "node": {"decided": 1024}}, step=1024)
    out = export_checkpoint(path, tmp_path / "ckpt.onnx", config)
    session = make_session(out, providers=["CPUExecutionProvider"])
    inputs = padded_batch(synthetic, 2000, 17, 30, 4)
    diffs = max_diffs(learner.model, session, inputs)
    assert max(diffs.values()) <= TOL, diffs
    learner.model.train()
    # a folder: its newest valid checkpoint
    out2 = export_checkpoint(tmp_path / "ckpts", tmp_path / "dir.onnx", config)
    assert np.array_equal(predict(make_session(out2, ["CPUExecutionProvider"]), *inputs)["logits"],
                          predict(session, *inputs)["logits"])


def test_checkpoint_of_another_model_is_refused(trained, tmp_path):
    learner, _ = trained
    path = CheckpointManager(tmp_path).save({"learner": learner.state_dict()}, step=1)
    with pytest.raises(ValueError, match="does not fit the model configuration"):
        export_checkpoint(path, tmp_path / "x.onnx", config_from_dict({"model": {"embed_dim": 32}}))
    damaged = tmp_path / "ckpt-000000000002.pt"
    damaged.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match="checksum"):
        export_checkpoint(damaged, tmp_path / "x.onnx", config_from_dict({}))
    assert not (tmp_path / "x.onnx").exists()


@pytest.mark.slow
def test_cli_export(trained, synthetic, tmp_path, capsys):
    learner, _ = trained
    ckpt = CheckpointManager(tmp_path).save({"learner": learner.state_dict()}, step=7)
    config_file = tmp_path / "node.yaml"
    config_file.write_text("selection:\n  policy: all\n")
    parser = argparse.ArgumentParser(prog="edge-node")
    sub = parser.add_subparsers(dest="command", required=True)
    add_export_parser(sub)
    args = parser.parse_args(["export", "--checkpoint", str(ckpt), "--out", str(tmp_path / "m.onnx"),
                              "--config", str(config_file), "--opset", "18"])
    assert run_export(args) == 0
    assert "opset 18" in capsys.readouterr().out
    session = make_session(tmp_path / "m.onnx", ["CPUExecutionProvider"])
    diffs = max_diffs(learner.model, session, padded_batch(synthetic, 700, 3, 48, 7))
    assert max(diffs.values()) <= TOL
    learner.model.train()
    bad = parser.parse_args(["export", "--checkpoint", str(ckpt), "--out", str(tmp_path / "n.onnx"),
                             "--set", "model.embed_dim=8"])
    assert run_export(bad) == 2  # a checkpoint that does not fit the settings: a configuration error, as everywhere
    assert "does not fit" in capsys.readouterr().err
    missing = parser.parse_args(["export", "--checkpoint", str(tmp_path / "nope.pt"), "--out", str(tmp_path / "n.onnx")])
    assert run_export(missing) == 2  # a checkpoint the command was pointed at is missing: a usage error
    assert "does not exist" in capsys.readouterr().err
    assert not (tmp_path / "n.onnx").exists()


@pytest.fixture(scope="module")
def model_bytes(trained) -> bytes:
    return onnx_bytes(trained[0].model)


def test_verify_accepts_exported_model(model_bytes):
    assert verify_onnx(model_bytes) is None


@pytest.mark.parametrize("cut", [0.5, 0.9, 0.999])
def test_verify_rejects_truncated(model_bytes, cut):
    with pytest.raises(ValueError, match="corrupt ONNX model"):
        verify_onnx(model_bytes[: int(len(model_bytes) * cut)])


def test_verify_rejects_random_and_empty(model_bytes):
    rng = np.random.default_rng(0)
    for n in (16, 4096, len(model_bytes)):
        with pytest.raises(ValueError, match="corrupt ONNX model"):
            verify_onnx(rng.integers(0, 256, n, dtype=np.uint8).tobytes())
    with pytest.raises(ValueError, match="empty"):
        verify_onnx(b"")
    with pytest.raises(ValueError, match="must be bytes"):
        verify_onnx("model.onnx")


def test_verify_rejects_flipped_bytes_in_graph(model_bytes):
    """A model whose graph is damaged (a node's op type renamed) is rejected."""
    proto = onnx.load_model_from_string(model_bytes)
    proto.graph.node[0].op_type = "NoSuchOp"
    with pytest.raises(ValueError, match="corrupt ONNX model"):
        verify_onnx(proto.SerializeToString())


def test_verify_rejects_other_models():
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y])
    other = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    other.ir_version = 8
    with pytest.raises(ValueError, match="not an edge-runtime model"):
        verify_onnx(other.SerializeToString())


def test_provider_order():
    all_three = ["CPUExecutionProvider", "CUDAExecutionProvider", "TensorrtExecutionProvider", "AzureExecutionProvider"]
    assert select_providers(all_three) == [
        ("TensorrtExecutionProvider", {"trt_fp16_enable": False}),
        "CUDAExecutionProvider",
        "CPUExecutionProvider",
    ]
    assert select_providers(["CPUExecutionProvider", "CUDAExecutionProvider"]) == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert select_providers(["CPUExecutionProvider"]) == ["CPUExecutionProvider"]
    assert select_providers(all_three, trt_fp16=True, trt_cache_dir="/tmp/trt") == [
        ("TensorrtExecutionProvider", {"trt_fp16_enable": True, "trt_engine_cache_enable": True, "trt_engine_cache_path": "/tmp/trt"}),
        "CUDAExecutionProvider",
        "CPUExecutionProvider",
    ]
    # configurable order; unavailable ones are dropped
    assert select_providers(all_three, ["CPUExecutionProvider", "CUDAExecutionProvider"]) == ["CPUExecutionProvider", "CUDAExecutionProvider"]
    assert select_providers(["CPUExecutionProvider"], ["TensorrtExecutionProvider", "CPUExecutionProvider"]) == ["CPUExecutionProvider"]
    assert list(PROVIDER_ORDER) == ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    with pytest.raises(ValueError, match="none of the execution providers"):
        select_providers(["CPUExecutionProvider"], ["CUDAExecutionProvider"])


def test_make_session_uses_available_providers(model_bytes, tmp_path):
    import onnxruntime as ort

    session = make_session(model_bytes, trt_cache_dir=str(tmp_path / "trt"))
    expected = [p if isinstance(p, str) else p[0] for p in select_providers(ort.get_available_providers())]
    assert session.get_providers() == expected
    assert (tmp_path / "trt").is_dir()
