"""Stream metrics (prequential / held-out accuracy) and per-task accuracy, forgetting, average
incremental accuracy, against direct computations; and the learner's use of the metrics it is given."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.support.streams import stream
from edge_runtime.core.config import config_from_dict
from edge_runtime.learning.evaluation import StreamMetrics, TaskAccuracy
from edge_runtime.learning.learner import Learner


def test_stream_metrics_split_prequential_and_held_out():
    m = StreamMetrics()
    assert m.prequential.get() is None and m.held_out.get() is None
    labels = torch.tensor([0, 1, 2, -1, 1, 0])
    preds = torch.tensor([0, 2, 2, 1, 1, 1])
    is_eval = torch.tensor([False, False, False, False, True, True])
    m.update(labels, preds, is_eval)
    assert (m.prequential.correct, m.prequential.total) == (2, 3)  # rows 0-2; the unlabelled row 3 is not counted
    assert (m.held_out.correct, m.held_out.total) == (1, 2)
    restored = StreamMetrics()
    restored.load_state_dict(m.state_dict())
    assert restored.prequential.get() == pytest.approx(2 / 3) and restored.held_out.get() == 0.5


def test_task_accuracy_forgetting_and_average_incremental_accuracy():
    tasks = TaskAccuracy([[0, 1], [2, 3], [4]])
    evals = [({0: 1.0, 1: 0.8}, 1), ({0: 0.6, 1: 0.4, 2: 0.9, 3: 1.0}, 2), ({0: 0.5, 1: 0.5, 2: 0.7, 3: 0.5, 4: 1.0}, 3)]
    for per_class, seen in evals:
        tasks.update(per_class, seen)
    per_task = [[0.9, 0.0, 0.0], [0.5, 0.95, 0.0], [0.5, 0.6, 1.0]]  # missing classes count 0
    assert np.allclose(np.array(tasks.history), per_task)
    aia = np.mean([0.9, np.mean([0.5, 0.95]), np.mean([0.5, 0.6, 1.0])])
    assert tasks.average_incremental_accuracy == pytest.approx(aia)
    forgetting = np.mean([0.9 - 0.5, 0.95 - 0.6])  # every task but the last: best - final
    assert tasks.forgetting == pytest.approx(forgetting)
    one = TaskAccuracy([[0], [1]])
    one.update({0: 1.0}, 1)
    assert one.forgetting == 0.0


def test_learner_records_into_the_metrics_object_it_is_given(synthetic):
    samples = stream(synthetic, range(64))
    for s in samples[40:]:
        s.split = "eval"
    metrics = StreamMetrics()
    learner = Learner(config_from_dict({}), metrics=metrics)
    before = learner.evaluate([])  # no samples: nothing to count
    assert before["n"] == 0
    learner.observe(samples[:32])
    learner.observe(samples[32:])
    assert learner.metrics is metrics
    assert metrics.prequential.total == 40 and metrics.held_out.total == 24
    summary = learner.summary()
    assert summary["prequential_accuracy"] == metrics.prequential.get()
    assert summary["eval_accuracy"] == metrics.held_out.get()


def test_stream_metrics_count_each_modality_head_on_the_labelled_eval_rows():
    gen = torch.Generator().manual_seed(0)
    m = StreamMetrics()
    assert m.modality_accuracy() == {}
    expected = {"accel": [0, 0], "gyro": [0, 0]}
    for _ in range(5):
        labels = torch.randint(-1, 4, (16,), generator=gen)  # -1: unlabelled
        is_eval = torch.rand(16, generator=gen) < 0.5
        heads = {name: torch.randint(0, 4, (16,), generator=gen) for name in expected}
        m.update(labels, torch.randint(0, 4, (16,), generator=gen), is_eval, heads)
        for name, pred in heads.items():  # direct count, row by row
            for y, e, p in zip(labels.tolist(), is_eval.tolist(), pred.tolist()):
                if e and y >= 0:
                    expected[name][0] += int(p == y)
                    expected[name][1] += 1
    assert list(m.per_modality) == ["accel", "gyro"]  # the order given
    for name, (correct, total) in expected.items():
        assert (m.per_modality[name].correct, m.per_modality[name].total) == (correct, total) and total > 0
    assert m.modality_accuracy() == {name: c / t for name, (c, t) in expected.items()}
    assert m.modality_accuracy()["accel"] != m.modality_accuracy()["gyro"]  # each head counted on its own predictions


def test_stream_metrics_modality_heads_without_eval_rows_and_without_predictions():
    m = StreamMetrics()
    labels, preds = torch.tensor([0, 1]), torch.tensor([0, 0])
    m.update(labels, preds, torch.tensor([False, False]))  # no unimodal predictions given: nothing per modality
    assert m.per_modality == {}
    m.update(labels, preds, torch.tensor([False, False]), {"accel": torch.tensor([0, 1])})  # train rows only
    assert m.modality_accuracy() == {"accel": None} and m.per_modality["accel"].total == 0
    assert m.prequential.total == 4 and m.held_out.total == 0


def test_stream_metrics_state_round_trip_with_modalities_and_an_older_state():
    m = StreamMetrics()
    labels = torch.tensor([0, 1, 2, 1])
    is_eval = torch.tensor([True, True, True, False])
    m.update(labels, torch.tensor([0, 1, 0, 1]), is_eval, {"accel": torch.tensor([0, 0, 2, 1]), "gyro": torch.tensor([1, 1, 1, 1])})
    state = m.state_dict()
    restored = StreamMetrics()
    restored.load_state_dict(state)
    assert restored.modality_accuracy() == m.modality_accuracy() == {"accel": 2 / 3, "gyro": 1 / 3}
    assert restored.held_out.get() == m.held_out.get() == 2 / 3
    older = {k: v for k, v in state.items() if k != "modality_eval"}  # a checkpoint written before the per-modality counts
    old = StreamMetrics()
    old.load_state_dict(older)
    assert old.modality_accuracy() == {} and old.held_out.get() == 2 / 3 and old.prequential.get() == 1.0
    restored.load_state_dict(older)  # loading replaces: a modality absent from the state is dropped (the learner's rollback)
    assert restored.per_modality == {}


def test_learner_summary_has_each_modality_heads_streamed_eval_accuracy(synthetic):
    samples = stream(synthetic, range(48))
    for s in samples[24:]:
        s.split = "eval"
    learner = Learner(config_from_dict({}))
    learner.observe(samples[:24])
    assert learner.summary()["modality_eval_accuracy"] == {"audio": None, "video": None}  # no eval sample yet
    rng = torch.get_rng_state()  # the heads' predictions of the eval rows, made as the learner will make them
    learner.model.train()
    with torch.no_grad():
        out = learner.model(*learner._to_device(learner._collate(samples[24:])).inputs())
    heads = {n: out.unimodal[n].argmax(1).cpu() for n in learner.modalities}
    torch.set_rng_state(rng)
    labels = torch.tensor([s.label for s in samples[24:]])
    learner.observe(samples[24:])
    summary = learner.summary()
    assert list(summary["modality_eval_accuracy"]) == ["audio", "video"]
    for name in learner.modalities:
        assert summary["modality_eval_accuracy"][name] == pytest.approx(float((heads[name] == labels).float().mean()))
    state = learner.state_dict()
    assert state["stats"]["modality_eval"] == {n: [learner.metrics.per_modality[n].correct, 24] for n in learner.modalities}
    del state["stats"]["modality_eval"]  # a checkpoint of an older edge-runtime
    again = Learner(config_from_dict({}))
    again.load_state_dict(state)
    assert again.summary()["modality_eval_accuracy"] == {"audio": None, "video": None}
    assert again.summary()["eval_accuracy"] == summary["eval_accuracy"]
