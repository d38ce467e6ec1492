"""Named modalities (2..N): the configuration section, the encoders by kind, N-modality fusion,
old checkpoints of the audio-visual model, and a model of the user's own (``model.builder``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from edge_runtime.core.config import Config, ConfigError, config_from_dict
from edge_runtime.core.modalities import modalities_of
from edge_runtime.core.sample import Sample
from edge_runtime.core.validation import model_contract
from edge_runtime.learning.learner import Learner
from edge_runtime.learning.model import ModelOutput, MultimodalNet, build_model

THREE = {"accel": {"kind": "series", "channels": 3}, "gyro": {"kind": "series", "channels": 2},
         "stats": {"kind": "vector", "channels": 5}}
SMALL = {"embed_dim": 8, "series_channels": 6, "num_classes": 4}


def _config(fusion: str = "sum", **extra) -> Config:
    return config_from_dict({"modalities": THREE, "model": {**SMALL, "fusion": fusion}, **extra})


def _inputs(b: int = 3, t: int = 6, seed: int = 0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, t + 1, (b,), generator=g)
    return (torch.randn(b, t, 3, generator=g), lengths, torch.randn(b, t, 2, generator=g), lengths.clone(),
            torch.randn(b, 5, generator=g), torch.full((b,), 5))


def _samples(n: int, seed: int = 0, label_range: int = 4) -> list[Sample]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        t = int(rng.integers(3, 9))
        out.append(Sample({"accel": rng.standard_normal((t, 3)).astype(np.float32),
                           "gyro": rng.standard_normal((t, 2)).astype(np.float32),
                           "stats": rng.standard_normal(5).astype(np.float32)},
                          label=int(rng.integers(0, label_range)), device="d", seq=i))
    return out


# --------------------------------------------------------------------------- configuration
def test_default_modalities_are_audio_then_video() -> None:
    mods = modalities_of(Config())
    assert list(mods) == ["audio", "video"]
    assert (mods["audio"].kind, mods["audio"].channels) == ("audio", 13)
    assert (mods["video"].kind, mods["video"].channels) == ("frames", 1)


def test_series_and_vector_specs_and_bounds() -> None:
    mods = modalities_of(_config())
    assert mods["accel"].spec().shape == (-1, 3)
    assert mods["stats"].spec().shape == (5,)
    contract = model_contract(_config())
    assert contract.max_shape["accel"] == (4096, None)
    assert contract.limit_keys["accel"] == ("modalities.accel.max_steps", None)
    assert contract.max_abs == {"accel": 1e4, "gyro": 1e4, "stats": 1e4, "waveform": 1e5}


@pytest.mark.parametrize("section, key", [
    ({"accel": {"kind": "series"}}, "modalities.accel"),                      # channels missing
    ({"Accel": {"kind": "series", "channels": 3}}, "modalities"),            # not a lowercase name
    ({"accel": {"kind": "radar", "channels": 3}}, "modalities.accel.kind"),  # unknown kind
    ({}, "modalities"),                                                      # none declared
])
def test_bad_modalities_name_the_key(section: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        config_from_dict({"modalities": section})


def test_max_abs_value_names_must_be_modalities() -> None:
    with pytest.raises(ConfigError, match=r"node\.max_abs_value.*\['mag'\]"):
        config_from_dict({"modalities": THREE, "node": {"max_abs_value": {"mag": 5.0}}})
    assert model_contract(_config(node={"max_abs_value": {"gyro": 7.0}})).max_abs["gyro"] == 7.0


def test_film_refuses_three_modalities_in_one_line() -> None:
    with pytest.raises(ValueError, match="film fuses exactly two modalities.*accel, gyro, stats"):
        build_model(_config("film"))


# --------------------------------------------------------------------------- the model over N modalities
@pytest.mark.parametrize("fusion", ["sum", "concat", "gated"])
def test_three_modality_outputs(fusion: str) -> None:
    torch.manual_seed(0)
    model = build_model(_config(fusion))
    assert isinstance(model, MultimodalNet) and model.modalities == ("accel", "gyro", "stats")
    out = model(*_inputs())
    assert out.logits.shape == (3, 4)
    assert list(out.unimodal) == list(out.z) == ["accel", "gyro", "stats"]
    assert all(t.shape == (3, 8) for t in out.z.values())
    F.cross_entropy(out.logits, torch.tensor([0, 1, 2])).backward()
    for name, enc in model.encoders.items():
        assert sum(float(p.grad.abs().sum()) for p in enc.parameters()) > 0, name


def test_sum_and_concat_formulas_over_three() -> None:
    torch.manual_seed(1)
    model = build_model(_config("sum"))
    out = model(*_inputs())
    heads = model.fusion.heads
    for name in model.modalities:
        torch.testing.assert_close(out.unimodal[name], out.z[name] @ heads[name].weight.T + heads[name].bias)
    torch.testing.assert_close(out.logits, sum(out.unimodal.values()))
    model = build_model(_config("concat"))
    out = model(*_inputs())
    w, b = model.fusion.fc.weight, model.fusion.fc.bias
    torch.testing.assert_close(out.logits, torch.cat(list(out.z.values()), 1) @ w.T + b)
    torch.testing.assert_close(out.unimodal["gyro"], out.z["gyro"] @ w[:, 8:16].T + b / 3)


def test_gated_over_three_is_a_softmax_mix() -> None:
    torch.manual_seed(2)
    model = build_model(_config("gated"))
    out = model(*_inputs())
    zs = list(out.z.values())
    gate = model.fusion.gate(torch.cat(zs, 1)).reshape(3, 3, 8)
    mix = sum(torch.softmax(gate, dim=1)[:, i] * zs[i] for i in range(3))
    torch.testing.assert_close(out.logits, model.fusion.head(mix))


def test_series_padding_is_never_seen() -> None:
    torch.manual_seed(3)
    model = build_model(_config()).eval()
    x = _inputs(b=1, t=4)
    alone = model(x[0], torch.tensor([4]), x[2], torch.tensor([4]), x[4], x[5])
    padded = model(torch.cat([x[0], torch.full((1, 3, 3), 9.0)], 1), torch.tensor([4]),
                   torch.cat([x[2], torch.full((1, 3, 2), -9.0)], 1), torch.tensor([4]), x[4], x[5])
    for a, b in zip(alone.tensors(), padded.tensors()):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def test_old_audio_visual_checkpoint_keys_load() -> None:
    torch.manual_seed(4)
    model = build_model(Config())
    legacy = {}
    for key, value in model.state_dict().items():
        for new, old in (("encoders.audio.", "audio."), ("encoders.video.", "visual."),
                         ("fusion.heads.audio.", "fusion.audio_head."), ("fusion.heads.video.", "fusion.video_head.")):
            if key.startswith(new):
                key = old + key[len(new):]
                break
        legacy[key] = value
    assert "visual.gru.weight_hh_l0" in legacy and "fusion.audio_head.weight" in legacy
    fresh = build_model(Config())
    fresh.load_state_dict(legacy)
    for key, value in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value), key


# --------------------------------------------------------------------------- bring your own model
class UserModel(nn.Module):
    """A user's model: per-modality linear encoders over time-averaged steps and a fused linear head."""

    def __init__(self, config: Config) -> None:
        super().__init__()
        self.modalities = tuple(config.modalities)
        self.embed_dims = {"accel": 5, "gyro": 4, "stats": 3}
        widths = {"accel": 3, "gyro": 2, "stats": 5}
        self.enc = nn.ModuleDict({m: nn.Linear(widths[m], self.embed_dims[m]) for m in self.modalities})
        self.uni = nn.ModuleDict({m: nn.Linear(self.embed_dims[m], config.model.num_classes) for m in self.modalities})
        self.head = nn.Linear(sum(self.embed_dims.values()), config.model.num_classes)

    def forward(self, *inputs: torch.Tensor) -> ModelOutput:
        z = {}
        for i, name in enumerate(self.modalities):
            x, lengths = inputs[2 * i], inputs[2 * i + 1]
            if x.dim() == 3:  # masked mean over time
                mask = (torch.arange(x.shape[1])[None, :] < lengths[:, None]).to(x.dtype)[:, :, None]
                x = (x * mask).sum(1) / mask.sum(1).clamp_min(1.0)
            z[name] = torch.tanh(self.enc[name](x))
        return ModelOutput(self.head(torch.cat(list(z.values()), 1)), {m: self.uni[m](z[m]) for m in self.modalities}, z)


def build_user_model(config: Config) -> nn.Module:
    return UserModel(config)


def not_a_model(config: Config) -> dict:
    return {"modalities": tuple(config.modalities)}


USER = "tests.learning.test_modalities:build_user_model"


def test_user_model_learns_checkpoints_and_resumes() -> None:
    config = _config(**{"prototypes": {"confidence": "prototype"}})
    config.model.builder = USER
    learner = Learner(config)
    assert isinstance(learner.model, UserModel)
    samples = _samples(48)
    verdicts = learner.observe(samples[:24]) + learner.observe(samples[24:])
    assert all(not v.startswith("invalid") for v in verdicts), verdicts
    assert learner.updates == 2
    assert learner.prototypes.modalities["accel"].prototypes.shape == (4, 5)  # the user's embed_dims
    state = learner.state_dict()
    resumed = Learner(config)
    resumed.load_state_dict(state)
    probe = _samples(8, seed=9)
    assert resumed.evaluate(probe) == learner.evaluate(probe)
    assert set(learner.evaluate(probe)["modality_accuracy"]) == {"accel", "gyro", "stats"}


@pytest.mark.parametrize("builder, message", [
    ("tests.learning.test_modalities:nowhere", "cannot load"),
    ("tests.learning.test_modalities:not_a_model", "not a torch.nn.Module"),
])
def test_bad_builder_says_what_is_wrong(builder: str, message: str) -> None:
    config = _config()
    config.model.builder = builder
    with pytest.raises(ValueError, match=f"model.builder: .*{message}"):
        build_model(config)


def test_learner_refuses_a_sample_missing_a_modality() -> None:
    learner = Learner(_config())
    sample = _samples(1)[0]
    del sample.tensors["gyro"]
    assert learner.observe([sample]) == ["invalid:schema_mismatch"]


def test_the_kd_teacher_serves_three_modalities() -> None:
    """Distillation on a 3-modality node: the teacher's logits are the snapshot model's own forward."""
    from edge_runtime.learning.distill import Teacher
    from edge_runtime.learning.model import build_model

    cfg = _config()
    torch.manual_seed(0)
    model = build_model(cfg)
    teacher = Teacher(every=None, on_new_class=True)
    teacher.snapshot(model, torch.ones(4, dtype=torch.bool), updates=1)
    inputs = _inputs()
    got = teacher.cached_logits(["a", "b", "c"], inputs)
    with torch.no_grad():
        direct = model(*inputs).logits
    torch.testing.assert_close(got, direct)
    learner = Learner(_config(training={"kd_lambda": 1.0, "teacher_every": 1, "replay_steps": 2}))
    for start in range(0, 48, 16):  # the teacher exists after the first update; later batches distil replayed rows
        verdicts = learner.observe(_samples(16, seed=start))
        assert not any(v.startswith("invalid:") for v in verdicts)
    assert learner.teacher.model is not None and learner.stats.updates == 3
