"""The offline paper protocol (protocols/offline.py): scoring pieces against direct computations,
every registered admission policy through both the stream and the offline path, and a tiny run."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tests.support.streams import stream
from edge_runtime.core.config import Config, config_from_dict
from edge_runtime.learning.learner import Learner
from edge_runtime.learning.offline import (fresh_model, predict, prototype_confidence, run_protocol, score_context,
                                            select_subset, strategies, strategy_settings)
from edge_runtime.learning.policies.scoring.el2n import el2n
from edge_runtime.learning.policies.scoring.mbs import mbs
from edge_runtime.learning.policies import build_policy
from edge_runtime.learning.policies.admission.mbs import select as mbs_select
from edge_runtime.learning.policies.registry import names


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
    assert {"base", "random", "mbs", "el2n", "grand", "bmmal"} <= set(strategies())
    for strategy in strategies():
        keep = select_subset(strategy_settings(cfg, strategy, 0.25), model, samples, cfg, 0)
        assert len(set(keep.tolist())) == len(keep)
        if strategy == "base":
            assert len(keep) == 60
        elif strategy == "mbs":
            assert len(keep) <= 15  # floor(rho n / 2) per side
        else:
            assert len(keep) == 15  # max(1, floor(rho n))
    o, y = predict(model, samples)
    score = el2n(o.logits, y).numpy()
    keep = select_subset(strategy_settings(cfg, "el2n", 0.25), model, samples, cfg, 0)
    assert score[keep].max() <= np.sort(score)[14] + 1e-7  # the 15 smallest


@pytest.mark.parametrize("center", ["median", "one"])
def test_offline_mbs_honours_the_configured_centre(synthetic, center):
    cfg = config_from_dict({"selection": {"policy": "mbs", "center": center, "keep_ratio": 0.9}})
    model = fresh_model(cfg, 0)
    samples = stream(synthetic, range(40))
    o, y = predict(model, samples)
    pa, pv = prototype_confidence(o.z["audio"], y, 10), prototype_confidence(o.z["video"], y, 10)
    want = mbs_select(mbs(pa, pv), 0.3, center)  # Algorithm 1 over the whole set, written out
    got = select_subset(strategy_settings(cfg, "mbs", 0.3), model, samples, cfg, 0)
    assert got.tolist() == want.tolist()


@pytest.mark.parametrize("name", names("selection"))
def test_every_admission_policy_runs_through_the_stream_and_the_offline_protocol(synthetic, name):
    cfg = config_from_dict({"selection": {"policy": name}, "buffer": {"max_items": 40}})
    samples = stream(synthetic, range(64))
    learner = Learner(cfg)
    verdicts = learner.observe(samples[:32]) + learner.observe(samples[32:])
    assert all(v in ("admitted", "trained", "skipped") for v in verdicts) and learner.stats.updates == 2
    # offline: the same policy class over the whole set as one batch, nothing re-implemented
    model = fresh_model(cfg, 0)
    settings = strategy_settings(cfg, "base" if name == "all" else name, 0.5)
    assert type(settings) is type(cfg.selection)
    keep = select_subset(settings, model, samples, cfg, seed=3)
    direct = build_policy(settings, seed=3).select(score_context(model, samples, cfg)).indices
    assert keep.tolist() == sorted(direct.tolist())
    want = 64 if name == "all" else (2 * math.floor(0.5 * 64 / 2) if name == "mbs" else 32)
    assert len(keep) <= want and (name == "mbs" or len(keep) == want)


def test_offline_training_uses_the_configured_optimiser(synthetic):
    from edge_runtime.learning.offline import train_epochs

    samples = stream(synthetic, range(32))
    for optimizer, cls in (("sgd", torch.optim.SGD), ("adam", torch.optim.Adam)):
        cfg = config_from_dict({"training": {"optimizer": optimizer, "lr": 0.01}})
        used = []
        orig = cls.step

        def spy(self, *a, **k):
            used.append(type(self))
            return orig(self, *a, **k)

        cls.step = spy
        try:
            train_epochs(fresh_model(cfg, 0), samples, 1, cfg, 0)
        finally:
            cls.step = orig
        assert used and set(used) == {cls}


def test_run_protocol_rows(synthetic):
    cfg = Config()
    train = stream(synthetic, range(64))
    test = stream(synthetic, range(64, 96))
    rows = run_protocol(train, test, cfg, pretrain_epochs=[1], ratios=[0.5], strategies=["mbs", "random", "base"], epochs=1)
    keys = {(r["strategy"], r["pretrain_epochs"], r["keep_ratio"]) for r in rows}
    assert keys == {("base", 0, 1.0), ("random", 0, 0.5), ("mbs", 1, 0.5)}
    for r in rows:
        assert 0.0 <= r["accuracy"] <= 1.0 and r["kept"] >= 1
    assert next(r["kept"] for r in rows if r["strategy"] == "random") == 32
    again = run_protocol(train, test, cfg, [1], [0.5], ["mbs", "random", "base"], 1,
                         skip=lambda key: key["strategy"] != "mbs")
    assert [r["strategy"] for r in again] == ["mbs"] and again[0]["accuracy"] == pytest.approx(
        next(r["accuracy"] for r in rows if r["strategy"] == "mbs"))  # deterministic by seed
