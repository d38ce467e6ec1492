"""The offline paper protocol (selection/offline.py): scoring pieces against direct computations, and a tiny run."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import stream
from edge_runtime.config import Config
from edge_runtime.scoring.el2n import el2n
from edge_runtime.selection.offline import STRATEGIES, fresh_model, predict, prototype_confidence, run_protocol, select_subset


def test_prototype_confidence_uses_class_means():
    z = torch.tensor([[0.0, 0.0], [2.0, 0.0], [10.0, 10.0], [12.0, 10.0]])
    y = torch.tensor([3, 3, 7, 7])  # classes 3 and 7 present among 10
    got = prototype_confidence(z, y, 10)
    c3, c7 = np.array([1.0, 0.0]), np.array([11.0, 10.0])
    for i in range(4):
        d = np.array([np.linalg.norm(z[i].numpy() - c3), np.linalg.norm(z[i].numpy() - c7)])
        p = np.exp(-d) / np.exp(-d).sum()
        want = p[0] if y[i] == 3 else p[1]
        assert got[i].item() == pytest.approx(want, rel=1e-5)


def test_select_subset_sizes_and_el2n_direction(synthetic):
    cfg = Config()
    model = fresh_model(cfg, 0)
    samples = stream(synthetic, range(60))
    for strategy in STRATEGIES:
        keep = select_subset(strategy, 0.25, model, samples, 0, cfg.model.num_classes)
        assert len(set(keep.tolist())) == len(keep)
        if strategy == "base":
            assert len(keep) == 60
        elif strategy == "mbs":
            assert len(keep) <= 15  # floor(rho n / 2) per side
        else:
            assert len(keep) == 15
    o = predict(model, samples)
    score = el2n(o.logits, o.labels).numpy()
    keep = select_subset("el2n", 0.25, model, samples, 0, cfg.model.num_classes)
    assert score[keep].max() <= np.sort(score)[14] + 1e-7  # the 15 smallest


def test_run_protocol_rows(synthetic):
    cfg = Config()
    train = stream(synthetic, range(64))
    test = stream(synthetic, range(64, 96))
    rows = run_protocol(train, test, cfg, pretrain_epochs=[1], ratios=[0.5], strategies=["mbs", "random", "base"], epochs=1)
    keys = {(r["strategy"], r["pretrain_epochs"], r["keep_ratio"]) for r in rows}
    assert keys == {("base", 0, 1.0), ("random", 0, 0.5), ("mbs", 1, 0.5)}
    for r in rows:
        assert 0.0 <= r["accuracy"] <= 1.0 and r["kept"] >= 1
    again = run_protocol(train, test, cfg, [1], [0.5], ["mbs", "random", "base"], 1,
                         skip=lambda key: key["strategy"] != "mbs")
    assert [r["strategy"] for r in again] == ["mbs"] and again[0]["accuracy"] == pytest.approx(
        next(r["accuracy"] for r in rows if r["strategy"] == "mbs"))  # deterministic by seed
