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
