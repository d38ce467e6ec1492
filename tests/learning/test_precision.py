"""Device handling: AMP resolves to float32 on CPU (exact), teacher precision, and the CUDA choices."""

from __future__ import annotations

import pytest
import torch

from tests.support.streams import stream
from edge_runtime.core.config import config_from_dict
from edge_runtime.learning.learner import Learner, resolve_amp


def test_resolve_amp_choices():
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert resolve_amp("bf16", cuda) is torch.bfloat16
    assert resolve_amp("fp16", cuda) is torch.float16
    assert resolve_amp("off", cuda) is None
    for amp in ("auto", "bf16", "fp16"):
        assert resolve_amp(amp, cpu) is None  # CPU always runs float32


def test_amp_setting_leaves_cpu_training_bit_exact(synthetic):
    samples = stream(synthetic, range(160))
    a = Learner(config_from_dict({}))
    b = Learner(config_from_dict({"training": {"amp": "fp16"}}))
    assert not b.scaler.is_enabled()
    for i in range(0, 160, 32):
        assert a.observe(samples[i : i + 32]) == b.observe(samples[i : i + 32])
    for (name, pa), pb in zip(a.model.state_dict().items(), b.model.state_dict().values()):
        assert torch.equal(pa, pb), name


@pytest.mark.slow
def test_half_precision_teacher_stays_close_to_float32(synthetic):
    labels = synthetic.labels()[:400]
    order = [i for i in range(400) if labels[i] < 5] + [i for i in range(400) if labels[i] >= 5]
    samples = stream(synthetic, order)
    learner = Learner(config_from_dict({"training": {"teacher_dtype": "bfloat16"}}))
    for i in range(0, 400, 40):  # new classes arrive halfway: the teacher is snapshot then
        learner.observe(samples[i : i + 40])
    teacher = learner.teacher
    assert teacher.model is not None
    assert all(p.dtype == torch.bfloat16 for p in teacher.model.parameters())
    from edge_runtime.learning.batch import collate

    b = collate(samples[:32])
    half = teacher.logits(*b.inputs())
    full_model = teacher.model.float()
    with torch.no_grad():
        full = full_model(*b.inputs()).logits
    assert half.dtype == torch.float32
    assert torch.allclose(half, full, atol=0.15, rtol=0.05), (half - full).abs().max()
    state = learner.state_dict()
    clone = Learner(config_from_dict({"training": {"teacher_dtype": "bfloat16"}}))
    clone.load_state_dict(state)
    assert all(p.dtype == torch.bfloat16 for p in clone.teacher.model.parameters())
