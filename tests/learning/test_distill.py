"""KD loss value against a direct computation, and the teacher snapshot policy."""

import numpy as np
import torch
from torch import nn

from edge_runtime.learning.distill import Teacher, kd_loss


def _direct_kd(student: np.ndarray, teacher: np.ndarray, classes: np.ndarray, t: float) -> float:
    total = 0.0
    for s_row, q_row in zip(student[:, classes], teacher[:, classes]):
        p = np.exp(q_row / t) / np.exp(q_row / t).sum()
        q = np.exp(s_row / t) / np.exp(s_row / t).sum()
        total += float(np.sum(p * np.log(p / q)))
    return t * t * total / student.shape[0]


def test_kd_loss_matches_direct_computation():
    rng = np.random.default_rng(0)
    student = rng.normal(size=(7, 6)) * 3
    teacher = rng.normal(size=(7, 6)) * 3
    classes = np.array([True, False, True, True, False, True])
    for t in (1.0, 2.0, 4.0):
        got = kd_loss(torch.tensor(student), torch.tensor(teacher), torch.tensor(classes), t)
        assert abs(float(got) - _direct_kd(student, teacher, classes, t)) < 1e-6


def test_kd_loss_is_zero_for_identical_logits_and_ignores_unseen_classes():
    logits = torch.randn(5, 4)
    classes = torch.tensor([True, True, False, False])
    assert float(kd_loss(logits, logits.clone(), classes, 2.0)) < 1e-7
    other = logits.clone()
    other[:, 2:] += 100.0  # unseen-class logits differ wildly: no effect
    assert float(kd_loss(other, logits, classes, 2.0)) < 1e-7
    assert float(kd_loss(logits, logits, torch.zeros(4, dtype=torch.bool), 2.0)) == 0.0


def test_teacher_policy_and_snapshot_is_frozen():
    teacher = Teacher(every=3, on_new_class=True)
    assert not teacher.due(0, new_class=True)  # nothing learned yet
    assert teacher.due(1, new_class=True)
    assert not teacher.due(2, new_class=False)
    assert teacher.due(3, new_class=False)
    model = nn.Linear(3, 2)
    teacher.snapshot(model, torch.tensor([True, False]), updates=3)
    assert not teacher.due(5, new_class=False) and teacher.due(6, new_class=False)
    with torch.no_grad():
        model.weight.add_(1.0)
    assert not torch.equal(teacher.model.weight, model.weight)
    assert all(not p.requires_grad for p in teacher.model.parameters())
    never = Teacher(every=None, on_new_class=False)
    assert not never.due(1000, new_class=True)


def test_teacher_logit_cache_matches_a_fresh_forward_and_resets_on_snapshot(synthetic):
    from tests.support.streams import stream
    from edge_runtime.learning.batch import collate
    from edge_runtime.core.config import Config
    from edge_runtime.learning.distill import Teacher
    from edge_runtime.learning.model import build_model

    torch.manual_seed(0)
    model = build_model(Config().model)
    teacher = Teacher(every=None, on_new_class=True)
    teacher.snapshot(model, torch.ones(10, dtype=torch.bool), updates=1)
    samples = stream(synthetic, range(12))
    b = collate(samples)
    keys = [s.key for s in samples]
    first = teacher.cached_logits(keys[:8], collate(samples[:8]).inputs())
    both = teacher.cached_logits(keys, b.inputs())  # rows 0-7 from the cache, 8-11 computed now
    direct = teacher.logits(*b.inputs())
    assert torch.allclose(both, direct, atol=1e-5)
    assert torch.equal(both[:8], first)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1)
    teacher.snapshot(model, torch.ones(10, dtype=torch.bool), updates=2)  # a new teacher: the cache is gone
    again = teacher.cached_logits(keys, b.inputs())
    assert torch.allclose(again, teacher.logits(*b.inputs()), atol=1e-5)
    assert not torch.allclose(again, both, atol=1e-3)
    state = teacher.state_dict()
    clone = Teacher(every=None, on_new_class=True)
    clone.load_state_dict(state, build_model(Config().model))
    assert torch.equal(clone.cached_logits(keys, b.inputs()), again)  # restored from the checkpointed cache
