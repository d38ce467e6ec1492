"""Issue 24, G2: numerically safe learning.

One sample of 3e38s (finite: it passed the NaN/Inf scan) turned ~104k of 105k weights into
NaN/Inf, and the checkpoint kept them. Now: a magnitude limit per tensor at the input contract
(``invalid:value_too_large``), a guard that rolls a non-finite update back
(``invalid:non_finite_update``), and no non-finite state is checkpointed, loaded or exported.
"""

from __future__ import annotations

import copy
import hashlib
import io

import numpy as np
import pytest
import torch

from tests.support.streams import stream
from edge_runtime.core.config import Config, config_from_dict
from edge_runtime.core.features import audio_features, frame_features
from edge_runtime.core.sample import Sample
from edge_runtime.core.validation import REASONS, check_finite, max_abs_of, model_contract, raw_contract
from edge_runtime.learning import learner as learner_module
from edge_runtime.learning.checkpoint import MAGIC, CheckpointManager
from edge_runtime.learning.guard import NonFiniteState
from edge_runtime.learning.learner import NON_FINITE, Learner

UNBOUNDED = {"node": {"max_abs_value": {"audio": None, "video": None}}}  # lets a 3e38 sample reach the learner


def _poisoned(sample: Sample, value: float = 3e38) -> Sample:
    sample.tensors = {name: np.full_like(t, value) for name, t in sample.tensors.items()}
    return sample


def _state(learner: Learner) -> dict:
    """Everything the guard must leave bitwise unchanged, copied."""
    return copy.deepcopy({"model": learner.model.state_dict(), "optimizer": learner.optimizer.state_dict(),
                          "prototypes": learner.prototypes.state_dict(), "seen": learner.seen,
                          "updates": learner.stats.updates, "metrics": learner.metrics.state_dict()})


def _assert_same(a, b, where="state") -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert set(a) == set(b), f"{where}: keys {sorted(a, key=str)} != {sorted(b, key=str)}"
        for k in a:
            _assert_same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def _all_finite(learner: Learner) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in learner.model.state_dict().values() if p.is_floating_point())


# ------------------------------------------------------------------ the magnitude limit


def _direct(tensors: dict, limits: dict) -> str | None:
    """The verdict by the definition: NaN/Inf first, then max |x| over the tensor's limit."""
    for name, t in tensors.items():
        if t.dtype.kind != "f":
            continue
        x = t.astype(np.float64)
        if not np.isfinite(x).all():
            return "nan_inf"
        if name in limits and np.abs(x).max() > limits[name]:
            return "value_too_large"
    return None


def test_g2_magnitude_check_matches_direct_computation():
    rng = np.random.default_rng(24)
    limits = {"audio": 100.0, "video": 3.0}
    seen = set()
    for case in range(400):
        dtype = rng.choice(["float32", "float64", "float16"])
        scale = 10.0 ** rng.integers(-2, 4)
        tensors = {"audio": (rng.standard_normal((rng.integers(1, 30), 13)) * scale).astype(dtype),
                   "video": (rng.standard_normal((2, 1, 4, 4)) * scale / 30).astype(dtype),
                   "other": (rng.standard_normal(5) * 1e30).astype("float64"),  # not named: unbounded
                   "frames": rng.integers(0, 256, (2, 3, 3, 3)).astype("uint8")}  # integers: bounded by the dtype
        if case % 7 == 0:
            tensors["audio"].flat[rng.integers(tensors["audio"].size)] = rng.choice([np.nan, np.inf, -np.inf])
        if case % 11 == 0:  # exactly at the limit is allowed, one ulp above is not
            edge = np.float64(limits["video"]).astype(dtype)
            tensors["video"].flat[0] = -edge if case % 2 else np.nextafter(edge, np.inf, dtype=edge.dtype)
        want = _direct(tensors, limits)
        problem = check_finite(tensors, limits)
        assert (problem.code if problem else None) == want, (case, dtype, scale)
        seen.add(want)
    assert seen == {None, "nan_inf", "value_too_large"}


def test_g2_3e38_audio_is_value_too_large_with_the_key_and_the_fix():
    config = Config()
    sample = Sample(tensors={"audio": np.full((5, 13), 3e38, np.float32), "video": np.zeros((2, 1, 32, 32), np.float32)},
                    label=1, split="train")
    problem = model_contract(config).check(sample)
    assert problem is not None and problem.verdict == "invalid:value_too_large"
    assert "node.max_abs_value.audio = 10000" in problem.message and "3e+38" in problem.message
    assert "value_too_large" in REASONS and "non_finite_update" in REASONS
    assert Learner(config).observe([sample]) == ["invalid:value_too_large"]  # the learner's contract has it too
    assert raw_contract(config).max_abs == {"audio": 1e4, "video": 1e4, "waveform": 1e5}


def test_g2_default_limits_accept_every_kind_of_real_data(synthetic):
    config = Config()
    limits = max_abs_of(config)
    fc = config.features
    rng = np.random.default_rng(0)
    # audio: a click in silence is the most extreme per-feature z-score (sqrt(frames)); the longest clip kept
    wave = np.zeros(fc.sample_rate * 4, np.float32)
    wave[fc.sample_rate] = 1.0
    extremes = [audio_features(wave, fc.sample_rate, fc), audio_features(rng.uniform(-1, 1, 48000).astype(np.float32), 48000, fc)]
    assert max(float(np.abs(a).max()) for a in extremes) < 20
    # video: all-black and all-white frames are the normalisation's extremes
    frames = np.stack([np.zeros((40, 40, 3), np.uint8), np.full((40, 40, 3), 255, np.uint8)])
    video = frame_features(frames, fc)
    assert float(np.abs(video).max()) < 3
    for audio in extremes:
        assert check_finite({"audio": audio, "video": video}, limits) is None
    # raw media: a full-scale waveform (also int16-scaled floats) and uint8 frames
    assert check_finite({"waveform": np.array([-1.0, 1.0, -32768.0], np.float32), "frames": frames}, limits) is None
    # the synthetic stream the benchmarks and tests use
    for i in range(300):
        assert check_finite(synthetic.sample(i).tensors, limits) is None


def test_g2_config_key_is_merged_validated_and_named():
    from edge_runtime.core.config import ConfigError, load_config

    assert max_abs_of(load_config(overrides=["node.max_abs_value.audio=1e6"])) == {
        "audio": 1e6, "video": 1e4, "waveform": 1e5}  # the other defaults stay
    assert max_abs_of(load_config(overrides=["node.max_abs_value.audio=null"])) == {"video": 1e4, "waveform": 1e5}
    for bad, words in [("audo=1", "unknown tensor name"), ("audio=.inf", "finite number > 0"), ("audio=0", "finite number > 0"),
                       ("audio=true", "finite number > 0")]:
        with pytest.raises(ConfigError, match="node.max_abs_value") as err:
            load_config(overrides=[f"node.max_abs_value.{bad}"])
        assert words in str(err.value)


# ------------------------------------------------------------------ the guard


def test_g2_guard_rolls_back_a_3e38_sample_and_learning_goes_on(synthetic):
    learner = Learner(config_from_dict(UNBOUNDED))
    samples = stream(synthetic, range(96))
    learner.observe(samples[:32])
    before = _state(learner)
    buffered = len(learner.buffer)
    assert learner.observe([_poisoned(samples[32])]) == [NON_FINITE]
    _assert_same(before, _state(learner))  # weights, optimiser state, prototypes, counters: bitwise
    assert len(learner.buffer) == buffered and samples[32].key not in learner.buffer
    # in a micro-batch with good samples: only the culprit is refused, the others are learned
    batch = samples[33:65]
    _poisoned(batch[5])
    verdicts = learner.observe(batch)
    assert verdicts[5] == NON_FINITE and batch[5].key not in learner.buffer
    assert all(v in ("admitted", "trained") for i, v in enumerate(verdicts) if i != 5), verdicts
    assert learner.stats.updates == before["updates"] + 1 and _all_finite(learner)
    after_batch = _state(learner)["model"]
    assert learner.observe(samples[65:96]).count(NON_FINITE) == 0
    assert any(not torch.equal(after_batch[k], v) for k, v in learner.model.state_dict().items())  # it still learns
    assert _all_finite(learner)


def test_g2_without_the_guard_the_same_sample_poisons_the_model(synthetic):
    """The fault the guard prevents, shown on the same learner (so the test above can fail)."""
    learner = Learner(config_from_dict(UNBOUNDED))
    samples = stream(synthetic, range(33))
    learner.observe(samples[:32])
    learner.numeric_guard = False
    assert learner.observe([_poisoned(samples[32])]) != [NON_FINITE]
    assert not _all_finite(learner)


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_g2_guard_on_a_nan_loss_leaves_model_and_optimiser_unchanged(synthetic, monkeypatch, optimizer):
    learner = Learner(config_from_dict({"training": {"optimizer": optimizer}}))
    samples = stream(synthetic, range(80))
    real = learner_module.total_loss
    monkeypatch.setattr(learner_module, "total_loss", lambda *a, **k: real(*a, **k) * float("nan"))
    fresh = _state(learner)
    assert learner.observe(samples[:8]) == [NON_FINITE] * 8  # each retried alone, each refused
    _assert_same(fresh, _state(learner))  # the very first step: no optimiser state is left behind either
    monkeypatch.setattr(learner_module, "total_loss", real)
    learner.observe(samples[8:40])
    before = _state(learner)
    monkeypatch.setattr(learner_module, "total_loss", lambda *a, **k: real(*a, **k) * float("inf"))
    assert learner.observe(samples[40:48]) == [NON_FINITE] * 8
    _assert_same(before, _state(learner))
    monkeypatch.setattr(learner_module, "total_loss", real)
    assert NON_FINITE not in learner.observe(samples[48:80]) and learner.stats.updates == before["updates"] + 1


def test_g2_guard_restores_after_a_step_that_made_a_weight_nan(synthetic, monkeypatch):
    """Finite loss and gradients, but the step itself overflows: the snapshot is put back."""
    learner = Learner(Config())
    samples = stream(synthetic, range(48))
    learner.observe(samples[:32])
    before = _state(learner)
    real_step = learner.optimizer.step

    def bad_step(*a, **k):
        out = real_step(*a, **k)
        with torch.no_grad():
            next(learner.model.parameters()).view(-1)[0] = float("nan")
        return out

    monkeypatch.setattr(learner.optimizer, "step", bad_step)
    assert learner.observe(samples[32:36]) == [NON_FINITE] * 4
    _assert_same(before, _state(learner))
    monkeypatch.setattr(learner.optimizer, "step", real_step)
    assert NON_FINITE not in learner.observe(samples[36:48]) and _all_finite(learner)


# ------------------------------------------------------------------ checkpoints and export


def _nan_model_state() -> dict:
    learner = Learner(Config())
    state = learner.state_dict()
    state["model"] = {k: v.clone() for k, v in state["model"].items()}
    next(iter(state["model"].values())).view(-1)[3] = float("inf")
    return {"learner": state}


def test_g2_checkpoint_save_refuses_non_finite_state(tmp_path):
    manager = CheckpointManager(tmp_path)
    good = {"learner": Learner(Config()).state_dict()}
    manager.save(good, 1)
    with pytest.raises(NonFiniteState, match=r"ckpt-000000000002\.pt refused.*1 NaN/Inf values in 1 tensor\(s\): learner\.model\."):
        manager.save(_nan_model_state(), 2)
    assert [p.name for p in manager.paths()] == ["ckpt-000000000001.pt"]  # nothing written, the old one kept


def test_g2_checkpoint_with_non_finite_weights_is_skipped_on_load(tmp_path):
    manager = CheckpointManager(tmp_path)
    manager.save({"learner": Learner(Config()).state_dict()}, 1)
    buf = io.BytesIO()  # a poisoned checkpoint as the old code wrote it: valid magic and checksum
    torch.save(_nan_model_state(), buf)
    payload = buf.getvalue()
    (tmp_path / "ckpt-000000000002.pt").write_bytes(MAGIC + hashlib.sha256(payload).digest() + payload)
    state, path = manager.load_latest()
    assert path.name == "ckpt-000000000001.pt"
    assert all(bool(torch.isfinite(v).all()) for v in state["learner"]["model"].values() if v.is_floating_point())


def test_g2_export_refuses_a_model_with_non_finite_weights():
    from edge_runtime.export.onnx import onnx_bytes

    model = Learner(Config()).model
    with torch.no_grad():
        next(model.parameters()).view(-1)[0] = float("nan")
    with pytest.raises(NonFiniteState, match="model not exported: its weights hold 1 NaN/Inf"):
        onnx_bytes(model)
