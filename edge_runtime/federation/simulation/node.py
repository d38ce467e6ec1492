"""One simulated edge box: the daemon's ``Learner`` and round bookkeeping, kept in a state folder.

A ClientApp on the Simulation Engine is short-lived and may run in any Ray worker, so a node's state
lives on disk between messages (``<sim dir>/nodes/node-<k>/``): the learner's checkpoint (model,
optimiser, replay buffer, prototypes, KD teacher, counters) and the federation files of
:class:`~edge_runtime.federation.node_link.FederationLink` (``federation.json``, the reference
weights). Gets and puts go through that same ``FederationLink`` (its in-process :meth:`reply` and
:meth:`merge`): the carry-over of local learning across a merge, the per-class counts, the FedAvg
weight and the all-or-nothing put are the deployed node's code, not a copy of it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from edge_runtime.core.config import Config
from edge_runtime.core.sample import Sample
from edge_runtime.federation.node_link import FederationLink
from edge_runtime.learning.checkpoint import CheckpointManager
from edge_runtime.learning.learner import Learner


class SimNode:
    """A learner restored from (and saved to) ``state_dir``, with the deployed node's round bookkeeping."""

    def __init__(self, config: Config, state_dir: Path, name: str) -> None:
        self.config = config
        self.name = name
        self.state_dir = Path(state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.learner = Learner(config)
        self.checkpoints = CheckpointManager(self.state_dir / "checkpoints", keep=1)
        loaded = self.checkpoints.load_latest()
        if loaded is not None:
            self.learner.load_state_dict(loaded[0])
        self.link = FederationLink(self.learner, self.state_dir, config.federation, wake=lambda: None,
                                   checkpoint=self.save_learner, lr=config.training.lr)

    @property
    def round(self) -> int:
        """The last round whose global model this node applied (0: none)."""
        return self.link.round

    def learn(self, samples: Sequence[Sample]) -> int:
        """Stream ``samples`` through the learner in the node's micro-batches; returns how many were learned."""
        size = max(1, self.config.node.batch_size)
        learned = 0
        for i in range(0, len(samples), size):
            chunk = list(samples[i : i + size])
            verdicts = self.learner.observe(chunk)
            labels = [s.label for s, v in zip(chunk, verdicts) if not v.startswith("invalid:") and s.label is not None]
            self.link.after_batch(labels)
            learned += len(labels)
        return learned

    def evaluate(self, samples: Sequence[Sample], own: Sequence[int]) -> dict[str, float]:
        """Held-out accuracy on all classes, on this node's own classes and on the others."""
        result = self.learner.evaluate(samples)
        per_class = result["per_class_accuracy"]
        totals = np.bincount([s.label for s in samples], minlength=self.learner.num_classes)
        own_set = set(own)

        def share(classes: list[int]) -> float:
            n = sum(int(totals[c]) for c in classes)
            return sum(per_class.get(c, 0.0) * int(totals[c]) for c in classes) / n if n else float("nan")

        classes = list(range(self.learner.num_classes))
        return {"accuracy": float(result["accuracy"]), "accuracy-own": share([c for c in classes if c in own_set]),
                "accuracy-unseen": share([c for c in classes if c not in own_set])}

    def save_learner(self) -> None:
        """Checkpoint the learner (atomic, verified; the previous one is removed)."""
        self.checkpoints.save(self.learner.state_dict(), step=self.learner.stats.updates)

    def save(self) -> None:
        """Everything this node keeps between messages."""
        self.save_learner()
        self.link.save()

    def disk_bytes(self) -> int:
        """Bytes of this node's state folder."""
        return sum(p.stat().st_size for p in self.state_dir.rglob("*") if p.is_file())
