"""MultimodalNet: shapes, padding invariance, fusion identities, gradients, length-1 inputs."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from edge_runtime.core.config import ModelConfig
from edge_runtime.learning.model import ModelOutput, MultimodalNet, build_model
from edge_runtime.core.modalities import Modality
from edge_runtime.learning.model.encoders.audio import AudioEncoder
from edge_runtime.learning.model.fusion import REGISTRY
from edge_runtime.learning.model.encoders.frames import FramesEncoder

FUSIONS = sorted(REGISTRY)
def _audio(cfg: ModelConfig) -> Modality:
    return Modality("audio", "audio", cfg.audio_features, 300, None)


def _video(cfg: ModelConfig) -> Modality:
    return Modality("video", "frames", cfg.visual_channels, 8, None)


SMALL = dict(audio_channels=16, embed_dim=16, tiny_channels=8)  # keeps the tests fast


def _inputs(cfg: ModelConfig, b: int = 3, ta: int = 7, tv: int = 4, size: int = 8, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    audio = torch.randn(b, ta, cfg.audio_features, generator=g)
    video = torch.randn(b, tv, cfg.visual_channels, size, size, generator=g)
    al = torch.randint(1, ta + 1, (b,), generator=g)
    vl = torch.randint(1, tv + 1, (b,), generator=g)
    al[0], vl[0] = ta, tv  # at least one full-length sample
    return audio, al, video, vl


def _pad(x: torch.Tensor, length: int, fill: float) -> torch.Tensor:
    """``x`` (T, ...) extended along time to ``length`` with the constant ``fill``."""
    out = torch.full((length, *x.shape[1:]), fill)
    out[: x.shape[0]] = x
    return out


@pytest.mark.parametrize("fusion", FUSIONS)
def test_output_shapes_tiny(fusion: str) -> None:
    cfg = ModelConfig(num_classes=5, fusion=fusion, **SMALL)
    model = build_model(cfg)
    assert isinstance(model, MultimodalNet)
    assert (model.num_classes, model.embed_dim) == (5, 16)
    out = model(*_inputs(cfg, b=3))
    assert isinstance(out, ModelOutput)
    for name, t in [("logits", out.logits), *out.unimodal.items()]:
        assert t.shape == (3, 5), name
    assert out.z["audio"].shape == (3, 16)
    assert out.z["video"].shape == (3, 16)
    assert all(torch.isfinite(t).all() for t in out.tensors())


@pytest.mark.parametrize("fusion", FUSIONS)
@pytest.mark.parametrize("channels", [3, 1])
def test_output_shapes_mobilenet(fusion: str, channels: int) -> None:
    cfg = ModelConfig(num_classes=4, fusion=fusion, visual_backbone="mobilenet_v2", mobilenet_width=0.25, visual_channels=channels, **SMALL)
    model = build_model(cfg)
    out = model(*_inputs(cfg, b=2, tv=2, size=32))
    assert out.logits.shape == out.unimodal["audio"].shape == out.unimodal["video"].shape == (2, 4)
    assert out.z["video"].shape == (2, 16)
    assert torch.isfinite(out.logits).all()


def test_mobilenet_first_conv_takes_configured_channels() -> None:
    mc = ModelConfig(visual_backbone="mobilenet_v2", mobilenet_width=0.25, visual_channels=2, embed_dim=8)
    enc = FramesEncoder(_video(mc), mc)
    assert enc.cnn.features[0][0].in_channels == 2
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in enc.modules())


@pytest.mark.parametrize("train", [True, False])
def test_audio_padding_invariance(train: bool) -> None:
    cfg = ModelConfig(**SMALL)
    torch.manual_seed(1)
    enc = AudioEncoder(_audio(cfg), cfg).train(train)
    x = torch.randn(5, cfg.audio_features)
    alone = enc(x[None], torch.tensor([5]))
    # Inside a batch with a longer sample; the padding is garbage, not zeros, to prove it is masked.
    other = torch.randn(12, cfg.audio_features)
    batch = torch.stack([other, _pad(x, 12, 7.0)])
    both = enc(batch, torch.tensor([12, 5]))
    torch.testing.assert_close(both[1:], alone, atol=1e-5, rtol=0)
    # Zero padding (as collate makes) must give the same too, and the longer sample is unaffected.
    both_zero = enc(torch.stack([other, _pad(x, 12, 0.0)]), torch.tensor([12, 5]))
    torch.testing.assert_close(both_zero[1:], alone, atol=1e-5, rtol=0)
    torch.testing.assert_close(both[:1], enc(other[None], torch.tensor([12])), atol=1e-5, rtol=0)


def test_audio_length_changes_output() -> None:
    """The invariance test is not vacuous: the same sample with 2 more *valid* frames changes z_a."""
    cfg = ModelConfig(**SMALL)
    torch.manual_seed(1)
    enc = AudioEncoder(_audio(cfg), cfg)
    x = torch.randn(5, cfg.audio_features)
    padded = _pad(x, 7, 7.0)
    assert not torch.allclose(enc(padded[None], torch.tensor([5])), enc(padded[None], torch.tensor([7])), atol=1e-5)


@pytest.mark.parametrize("backbone", ["tiny", "mobilenet_v2"])
def test_video_padding_invariance(backbone: str) -> None:
    size = 8 if backbone == "tiny" else 32
    cfg = ModelConfig(visual_backbone=backbone, mobilenet_width=0.25, **SMALL)
    torch.manual_seed(2)
    enc = FramesEncoder(_video(cfg), cfg).train()  # GroupNorm only: train mode must be invariant too
    x = torch.randn(2, 1, size, size)
    alone = enc(x[None], torch.tensor([2]))
    other = torch.randn(5, 1, size, size)
    batch = torch.stack([other, _pad(x, 5, 3.0)])
    both = enc(batch, torch.tensor([5, 2]))
    torch.testing.assert_close(both[1:], alone, atol=1e-5, rtol=0)
    torch.testing.assert_close(both[:1], enc(other[None], torch.tensor([5])), atol=1e-5, rtol=0)


def test_video_padding_is_never_encoded() -> None:
    """NaN in padded frames would poison any computation that touched them."""
    cfg = ModelConfig(**SMALL)
    enc = FramesEncoder(_video(cfg), cfg)
    video = torch.randn(2, 3, 1, 8, 8)
    video[1, 1:] = float("nan")
    z = enc(video, torch.tensor([3, 1]))
    assert torch.isfinite(z).all()
    z.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in enc.parameters() if p.grad is not None)


def test_model_padding_invariance_all_outputs() -> None:
    cfg = ModelConfig(fusion="gated", **SMALL)
    torch.manual_seed(3)
    model = build_model(cfg).eval()
    a, v = torch.randn(4, cfg.audio_features), torch.randn(2, 1, 8, 8)
    alone = model(a[None], torch.tensor([4]), v[None], torch.tensor([2]))
    a_long, v_long = torch.randn(9, cfg.audio_features), torch.randn(5, 1, 8, 8)
    batch = model(
        torch.stack([a_long, _pad(a, 9, 0.0)]), torch.tensor([9, 4]),
        torch.stack([v_long, _pad(v, 5, 0.0)]), torch.tensor([5, 2]),
    )
    for i, (x, y) in enumerate(zip(batch.tensors(), alone.tensors())):
        torch.testing.assert_close(x[1:], y, atol=1e-5, rtol=0, msg=f"output {i}")


def test_sum_fusion_identity() -> None:
    cfg = ModelConfig(fusion="sum", **SMALL)
    torch.manual_seed(4)
    model = build_model(cfg)
    out = model(*_inputs(cfg, b=4))
    torch.testing.assert_close(out.logits, out.unimodal["audio"] + out.unimodal["video"])
    f = model.fusion
    torch.testing.assert_close(out.unimodal["audio"], F.linear(out.z["audio"], f.heads["audio"].weight, f.heads["audio"].bias))
    torch.testing.assert_close(out.unimodal["video"], F.linear(out.z["video"], f.heads["video"].weight, f.heads["video"].bias))


def test_concat_fusion_identity_and_weight_slices() -> None:
    cfg = ModelConfig(fusion="concat", **SMALL)
    torch.manual_seed(5)
    model = build_model(cfg)
    with torch.no_grad():
        model.fusion.fc.bias.uniform_(-1.0, 1.0)  # a bias far from zero, so b/2 matters
    out = model(*_inputs(cfg, b=4))
    d = cfg.embed_dim
    w, b = model.fusion.fc.weight, model.fusion.fc.bias
    torch.testing.assert_close(out.logits, out.unimodal["audio"] + out.unimodal["video"])
    torch.testing.assert_close(out.logits, torch.cat([out.z["audio"], out.z["video"]], 1) @ w.T + b)
    torch.testing.assert_close(out.unimodal["audio"], out.z["audio"] @ w[:, :d].T + b / 2)
    torch.testing.assert_close(out.unimodal["video"], out.z["video"] @ w[:, d:].T + b / 2)


def test_film_and_gated_formulas() -> None:
    torch.manual_seed(6)
    za, zv = torch.randn(3, 8), torch.randn(3, 8)
    film = REGISTRY["film"](("audio", "video"), 8, 4)
    logits, uni = film({"audio": za, "video": zv})
    la, lv = uni["audio"], uni["video"]
    z = (1 + film.gamma(za)) * zv + film.beta(za)
    torch.testing.assert_close(logits, film.head(z))
    torch.testing.assert_close(la, film.heads["audio"](za))
    torch.testing.assert_close(lv, film.heads["video"](zv))
    gated = REGISTRY["gated"](("audio", "video"), 8, 4)
    logits, uni = gated({"audio": za, "video": zv})
    la = uni["audio"]
    g = torch.sigmoid(gated.gate(torch.cat([za, zv], 1)))
    torch.testing.assert_close(logits, gated.head(g * za + (1 - g) * zv))
    torch.testing.assert_close(la, gated.heads["audio"](za))


@pytest.mark.parametrize("fusion", FUSIONS)
def test_gradients_reach_both_encoders(fusion: str) -> None:
    cfg = ModelConfig(fusion=fusion, **SMALL)
    torch.manual_seed(7)
    model = build_model(cfg)
    out = model(*_inputs(cfg, b=3))
    F.cross_entropy(out.logits, torch.tensor([0, 1, 2])).backward()
    for enc in model.encoders.values():
        grads = [p.grad for p in enc.parameters()]
        assert all(g is not None for g in grads), type(enc).__name__
        assert sum(float(g.abs().sum()) for g in grads) > 0, type(enc).__name__


def test_lengths_of_one() -> None:
    cfg = ModelConfig(fusion="concat", **SMALL)
    model = build_model(cfg)
    audio, _, video, _ = _inputs(cfg, b=3, ta=5, tv=3)
    ones = torch.ones(3, dtype=torch.long)
    out = model(audio, ones, video, ones)
    assert out.logits.shape == (3, cfg.num_classes)
    assert torch.isfinite(out.logits).all()
    # A single sample of a single frame per modality, trained (no batch statistics involved).
    single = model(audio[:1, :1], ones[:1], video[:1, :1], ones[:1])
    single.logits.sum().backward()
    torch.testing.assert_close(single.logits, out.logits[:1], atol=1e-5, rtol=0)


def test_mobilenet_single_frame_trains() -> None:
    cfg = ModelConfig(visual_backbone="mobilenet_v2", mobilenet_width=0.25, **SMALL)
    model = build_model(cfg).train()
    audio, video = torch.randn(1, 1, cfg.audio_features), torch.randn(1, 1, 1, 32, 32)
    one = torch.ones(1, dtype=torch.long)
    model(audio, one, video, one).logits.sum().backward()


def test_default_config_batch() -> None:
    """The default model on a stream-sized batch: (32, 30, 13) audio and (32, 4, 1, 16, 16) video."""
    cfg = ModelConfig()
    model = build_model(cfg)
    audio, al, video, vl = _inputs(cfg, b=32, ta=30, tv=4, size=16)
    out = model(audio, al, video, vl)
    assert out.logits.shape == (32, 10)
    assert out.z["audio"].shape == out.z["video"].shape == (32, 64)
    out.logits.sum().backward()
