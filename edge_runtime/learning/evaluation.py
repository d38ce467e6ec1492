"""Accuracy bookkeeping of a stream, kept apart from the training loop (river's discipline:
a metric object is ``update``-d with (truth, prediction) and read with ``get``).

* :class:`Accuracy`: a running accuracy;
* :class:`StreamMetrics`: what :class:`~edge_runtime.learning.learner.Learner` records while it learns,
  prequential accuracy (train samples, predicted before learning from them), held-out (streamed
  eval) accuracy (samples streamed with split ``eval``, never learned from), and the streamed eval
  accuracy of each modality's own head, by modality name;
* :class:`TaskAccuracy`: per-task accuracy of a class-incremental stream evaluated after each
  task, with its forgetting and average incremental accuracy.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import torch


class Accuracy:
    """Share of correct predictions among the samples it was updated with."""

    def __init__(self) -> None:
        self.correct = 0
        self.total = 0

    def update(self, hits: torch.Tensor, mask: torch.Tensor) -> None:
        """Count the rows of ``mask``; ``hits`` says which predictions were right (both bool, one per row)."""
        self.correct += int((hits & mask).sum())
        self.total += int(mask.sum())

    def get(self) -> float | None:
        """The accuracy so far; None before any sample."""
        return self.correct / self.total if self.total else None


class StreamMetrics:
    """Prequential and held-out (split ``eval``) accuracy of a learner's stream, and the held-out
    accuracy of each modality's own head (``per_modality``: name -> :class:`Accuracy`, one made the
    first time ``update`` is given that name)."""

    def __init__(self) -> None:
        self.prequential = Accuracy()
        self.held_out = Accuracy()
        self.per_modality: dict[str, Accuracy] = {}

    def update(self, labels: torch.Tensor, predictions: torch.Tensor, is_eval: torch.Tensor,
               unimodal_predictions: Mapping[str, torch.Tensor] | None = None) -> None:
        """One micro-batch: ``labels`` (-1: unlabelled, not counted), the model's predictions made
        before learning, and which rows were streamed as ``eval``; ``unimodal_predictions``:
        modality name -> the predictions of that modality's own head (counted on the labelled
        ``eval`` rows only)."""
        hits = predictions == labels
        labelled = labels >= 0
        self.prequential.update(hits, labelled & ~is_eval)
        evals = labelled & is_eval
        self.held_out.update(hits, evals)
        if not unimodal_predictions:
            return
        accs = [self.per_modality.setdefault(name, Accuracy()) for name in unimodal_predictions]
        total = int(evals.sum())
        if total == 0:
            return
        correct = torch.stack([((p == labels) & evals).sum() for p in unimodal_predictions.values()]).tolist()  # one sync
        for acc, c in zip(accs, correct):
            acc.correct += int(c)
            acc.total += total

    def modality_accuracy(self) -> dict[str, float | None]:
        """Modality name -> its own head's held-out accuracy so far (None before any ``eval`` sample)."""
        return {name: acc.get() for name, acc in self.per_modality.items()}

    def state_dict(self) -> dict[str, Any]:
        return {"preq_correct": self.prequential.correct, "preq_total": self.prequential.total,
                "eval_correct": self.held_out.correct, "eval_total": self.held_out.total,
                "modality_eval": {name: [acc.correct, acc.total] for name, acc in self.per_modality.items()}}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore ``state`` exactly (a modality absent from it is dropped); a state written before the
        per-modality counts existed (no ``modality_eval``) loads with none."""
        self.prequential.correct, self.prequential.total = int(state["preq_correct"]), int(state["preq_total"])
        self.held_out.correct, self.held_out.total = int(state["eval_correct"]), int(state["eval_total"])
        self.per_modality = {}
        for name, (correct, total) in (state.get("modality_eval") or {}).items():
            acc = self.per_modality[str(name)] = Accuracy()
            acc.correct, acc.total = int(correct), int(total)


class TaskAccuracy:
    """Accuracy per task over evaluations of a class-incremental stream.

    ``update(per_class_accuracy, tasks_seen)`` records one evaluation (a class never predicted
    counts 0): task t's accuracy is the mean over its classes.  Then

    * ``average_incremental_accuracy``: the mean over evaluations of the mean accuracy of the tasks
      seen at that point;
    * ``forgetting``: the mean over all tasks but the last of (best accuracy of the task over the
      evaluations - its accuracy at the last one); 0 with fewer than two evaluations.
    """

    def __init__(self, task_classes: Sequence[Sequence[int]]) -> None:
        self.task_classes = [list(c) for c in task_classes]
        self.history: list[np.ndarray] = []
        self.seen_mean: list[float] = []

    def update(self, per_class_accuracy: Mapping[int, float], tasks_seen: int) -> np.ndarray:
        """Record one evaluation; returns its per-task accuracies."""
        per_task = np.array([float(np.mean([per_class_accuracy.get(c, 0.0) for c in cls])) for cls in self.task_classes])
        self.history.append(per_task)
        self.seen_mean.append(float(np.mean(per_task[: max(1, tasks_seen)])))
        return per_task

    @property
    def average_incremental_accuracy(self) -> float:
        return float(np.mean(self.seen_mean)) if self.seen_mean else float("nan")

    @property
    def forgetting(self) -> float:
        if len(self.history) < 2:
            return 0.0
        hist = np.array(self.history)
        return float(np.mean([hist[:, t].max() - hist[-1, t] for t in range(len(self.task_classes) - 1)]))
