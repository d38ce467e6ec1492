"""The MBS family's variants (issue 14) against direct computations on hand-made batches:
Algorithm 1 split at 1 (the paper's lines 13-16), the absolute centre with log deviation,
pooled selection, per-class selection, the confidence gap, and MBS-aware retention fed by the
pooled deviations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from edge_runtime.learning.buffer import ReplayBuffer
from edge_runtime.core.config import BufferConfig, config_from_dict
from edge_runtime.learning.policies import build_policy
from edge_runtime.learning.policies.base import StepContext
from edge_runtime.learning.policies.admission.mbs import MBSSettings, select_with_deviation
from edge_runtime.learning.policies.admission.mbs_class import MBSClassPolicy, MBSClassSettings, select_per_class
from edge_runtime.learning.policies.admission.mbs_gap import MBSGapPolicy, MBSGapSettings, select_gap
from edge_runtime.learning.policies.admission.mbs_pooled import MBSPooledPolicy, MBSPooledSettings, select_pooled
from edge_runtime.wire import Sample

T = lambda v: torch.tensor(v, dtype=torch.float64)  # noqa: E731


def _median(v):
    s = sorted(v)
    n = len(s)
    return s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2


def _dev(v, m, kind):
    return [abs(x - m) if kind == "ratio" else abs(math.log(x) - math.log(m)) for x in v]


def _smallest(rows, dev, k):
    """The k rows of smallest deviation, ties to the lower index, sorted."""
    return sorted(sorted(rows, key=lambda i: (dev[i], i))[:k])


def _ctx(pa, pv, labels):
    return StepContext(batch=None, labels=torch.tensor(labels), output=None, p={"audio": T(pa), "video": T(pv)}, model=None)


# --------------------------------------------------------------- Algorithm 1, split at 1 (paper) and centre 1 + log
def test_split_at_one_is_the_papers_lines_13_to_16():
    # median = 2.0 (6 values; middle 1.5 and 2.5); at centre m the sides are {<=2} / {>2};
    # the paper's sides are (0, 1] = {0.5, 0.9} and (1, inf) = {1.5, 2.5, 4, 8}; the 0 is on none.
    v = [0.0, 0.5, 0.9, 1.5, 2.5, 4.0, 8.0, 3.0]
    m = _median(v)
    assert m == 2.0
    dev = _dev(v, m, "ratio")
    k = math.floor(0.5 * len(v) / 2)  # 2
    left = [i for i, x in enumerate(v) if 0 < x <= 1]
    right = [i for i, x in enumerate(v) if x > 1]
    want = sorted(_smallest(left, dev, k) + _smallest(right, dev, k))
    got, got_dev = select_with_deviation(T(v), 0.5, "median", "ratio", split="one")
    assert got.tolist() == want == [1, 2, 3, 4]
    np.testing.assert_allclose(got_dev.numpy(), dev)
    # the default split at m differs on this batch: {0.0,0.5,0.9,1.5} | {2.5,3,4,8}
    centre = select_with_deviation(T(v), 0.5, "median", "ratio")[0].tolist()
    assert centre == sorted(_smallest([0, 1, 2, 3], dev, 2) + _smallest([4, 5, 6, 7], dev, 2)) == [2, 3, 4, 7]


def test_split_at_one_all_on_one_side_keeps_only_k():
    v = [1.2, 3.0, 1.1, 9.0, 2.0, 1.5]  # every MBS > 1: the left side is empty, nothing refills it
    got = select_with_deviation(T(v), 1.0, "median", "ratio", split="one")[0].tolist()
    dev = _dev(v, _median(v), "ratio")
    assert got == _smallest(range(6), dev, 3) and len(got) == 3


def test_absolute_centre_log_deviation_is_symmetric_in_the_dominant_modality():
    # centre 1, log deviation: MBS 2 and 0.5 deviate equally (log 2); 4 and 0.25 by log 4.
    v = [2.0, 0.5, 4.0, 0.25, 1.0, 1.25, 0.8, 1.0]
    got, dev = select_with_deviation(T(v), 0.5, "one", "log")
    want_dev = [abs(math.log(x)) for x in v]
    np.testing.assert_allclose(dev.numpy(), want_dev, atol=1e-12)
    left = [i for i, x in enumerate(v) if x <= 1]   # 0.5, 0.25, 1.0, 0.8, 1.0
    right = [i for i, x in enumerate(v) if x > 1]   # 2, 4, 1.25
    assert got.tolist() == sorted(_smallest(left, want_dev, 2) + _smallest(right, want_dev, 2)) == [0, 4, 5, 7]
    policy = build_policy(MBSSettings(keep_ratio=0.5, center="one", deviation="log"))
    out = policy.select(_ctx([x / 2 for x in v], [0.5] * 8, [0] * 8))
    assert out.indices.tolist() == [0, 4, 5, 7]


# --------------------------------------------------------------- pooled
@pytest.mark.parametrize("center,deviation", [("median", "ratio"), ("median", "log"), ("one", "log"), ("one", "ratio")])
def test_pooled_keeps_the_smallest_deviations_regardless_of_side(center, deviation):
    # a batch with many one-sided samples (corrupted video: MBS >> 1) and a few balanced ones
    v = [1.0, 0.9, 1.1, 30.0, 45.0, 60.0, 25.0, 80.0, 1.05, 50.0]
    m = _median(v) if center == "median" else 1.0
    dev = _dev(v, m, deviation)
    k = max(1, math.floor(0.4 * len(v)))
    got, got_dev = select_pooled(T(v), 0.4, center, deviation)
    assert got.tolist() == _smallest(range(len(v)), dev, k)
    np.testing.assert_allclose(got_dev.numpy(), dev, rtol=1e-12)
    if center == "one":  # the balanced rows, none of the one-sided ones
        assert got.tolist() == [0, 1, 2, 8]


def test_pooled_differs_from_algorithm1_where_one_side_is_far():
    v = [1.0, 0.9, 1.1, 30.0, 45.0, 60.0, 25.0, 80.0, 1.05, 50.0]
    alg1 = select_with_deviation(T(v), 0.4, "one", "log")[0].tolist()
    pooled = select_pooled(T(v), 0.4, "one", "log")[0].tolist()
    # Algorithm 1 must take floor(0.4*10/2) = 2 from the right side: 1.1 and 1.05 ... and from the
    # left 1.0 and 0.9: the same here; with keep 0.6 it has to take one-sided samples (K = 3 > 2 right-balanced).
    assert alg1 == pooled == [0, 1, 2, 8]
    alg1 = select_with_deviation(T(v), 0.6, "one", "log")[0].tolist()
    pooled = select_pooled(T(v), 0.6, "one", "log")[0].tolist()
    assert 6 in alg1 and alg1 == [0, 1, 2, 6, 8]  # left {1.0, 0.9} only has 2; right: 1.1, 1.05, then 25.0
    assert pooled == _smallest(range(10), [abs(math.log(x)) for x in v], 6) == [0, 1, 2, 3, 6, 8]


def test_pooled_ties_all_on_one_side_nan_and_keep_all():
    v = [2.0, 2.0, 2.0, 2.0]  # all equal: the first K by index
    assert select_pooled(T(v), 0.5, "one", "ratio")[0].tolist() == [0, 1]
    v = [3.0, float("nan"), 1.0, 5.0]
    got, dev = select_pooled(T(v), 1.0, "one", "ratio")
    assert got.tolist() == [0, 2, 3] and math.isnan(dev[1])
    assert select_pooled(T([]), 0.5)[0].tolist() == []
    policy = build_policy(MBSPooledSettings(keep_ratio=1.0, center="one", deviation="log"))
    assert isinstance(policy, MBSPooledPolicy)
    out = policy.select(_ctx([0.2, 0.9, 0.5], [0.4, 0.3, 0.5], [1, 2, 3]))
    assert out.indices.tolist() == [0, 1, 2]
    np.testing.assert_allclose(out.deviation.numpy(), [abs(math.log(0.5)), abs(math.log(3.0)), 0.0], atol=1e-12)


# --------------------------------------------------------------- per class
def test_per_class_uses_each_classs_median_and_share():
    labels = [0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 2]
    v = [1.0, 2.0, 3.0, 10.0, 0.1, 0.2, 0.3, 0.25, 5.0, 0.15, 7.0]
    # K = floor(0.6 * 11) = 6; quotas 0.6 * (4, 6, 1) = 2.4, 3.6, 0.6 -> floors 2, 3, 0; the one row
    # left goes to the largest fractional part (0.6: classes 1 and 2 tie, the smaller label wins)
    quota = {0: 2, 1: 4, 2: 0}
    want, want_dev = [], [0.0] * len(v)
    for c in sorted(set(labels)):
        rows = [i for i, y in enumerate(labels) if y == c]
        m = _median([v[i] for i in rows])
        for i in rows:
            want_dev[i] = abs(v[i] - m)
        want += _smallest(rows, want_dev, quota[c])
    got, dev = select_per_class(T(v), torch.tensor(labels), 0.6)
    assert got.tolist() == sorted(want) == [1, 2, 5, 6, 7, 9]
    np.testing.assert_allclose(dev.numpy(), want_dev, rtol=1e-12)
    # every class at its own median: a pooled selection over the batch keeps mostly class 1's small MBS
    assert select_pooled(T(v), 0.6)[0].tolist() != got.tolist()


def test_per_class_one_sided_class_ties_and_policy():
    labels = [3, 3, 3, 5, 5]
    v = [4.0, 4.0, 4.0, 0.5, 2.0]  # class 3 all one-sided with ties: the lowest index is kept
    # K = floor(0.5 * 5) = 2; quotas 1.5, 1.0 -> 1, 1
    got = select_per_class(T(v), torch.tensor(labels), 0.5, "one", "log")[0].tolist()
    assert got == [0, 3]  # class 5: |log 0.5| == |log 2|, tie to the lower index
    policy = build_policy(MBSClassSettings(keep_ratio=0.5, center="one", deviation="log"))
    assert isinstance(policy, MBSClassPolicy)
    pv = [0.2, 0.2, 0.2, 0.8, 0.2]
    out = policy.select(_ctx([x * p for x, p in zip(v, pv)], pv, labels))
    assert out.indices.tolist() == [0, 3]
    with pytest.raises(ValueError, match="same shape"):
        select_per_class(T(v), torch.tensor([0, 1]), 0.5)


# --------------------------------------------------------------- confidence gap |p_1 - p_2|
def test_gap_keeps_the_smallest_confidence_gaps_where_the_ratio_would_not():
    # row 0: hard but balanced (0.2 / 0.1: MBS 2, gap 0.1); row 1: one-sided (0.9 / 0.3: MBS 3, gap 0.6);
    # row 2: easy (0.9 / 0.85); row 3: one-sided the other way (0.1 / 0.8); row 4: hard (0.05 / 0.2)
    pa, pv = [0.2, 0.9, 0.9, 0.1, 0.05], [0.1, 0.3, 0.85, 0.8, 0.2]
    gap = [abs(a - b) for a, b in zip(pa, pv)]
    for keep, k in ((0.6, 3), (0.8, 4), (0.5, 2), (0.01, 1)):
        idx, dev = select_gap([T(pa), T(pv)], keep)
        assert idx.tolist() == _smallest(range(5), gap, k)
        assert np.allclose(dev.numpy(), gap)
    assert select_gap([T(pa), T(pv)], 0.6)[0].tolist() == [0, 2, 4]  # both hard rows kept, both one-sided dropped
    # the ratio's |log MBS| ranks the hard row 0 (log 2) as far as the one-sided row 3 (log 7) is not:
    log_dev = [abs(math.log(a / b)) for a, b in zip(pa, pv)]
    assert _smallest(range(5), log_dev, 3) != [0, 2, 4]


def test_gap_ties_all_on_one_side_nan_and_policy():
    # ties go to the lower index; every row with p_a > p_v (all on one side) is still ranked by its gap
    idx, _ = select_gap([T([0.5, 0.7, 0.6, 0.9]), T([0.3, 0.5, 0.4, 0.1])], 0.5)
    assert idx.tolist() == [0, 1]  # gaps 0.2, 0.2, 0.2, 0.8: the first two of the tie
    idx, dev = select_gap([T([0.5, float("nan"), 0.4]), T([0.5, 0.2, float("inf")])], 1.0)
    assert idx.tolist() == [0] and math.isnan(dev[1]) and math.isnan(dev[2])
    assert select_gap([T([]), T([])], 0.8)[0].numel() == 0
    with pytest.raises(ValueError, match="same length"):
        select_gap([T([0.1, 0.2]), T([0.1])], 0.5)
    policy = MBSGapPolicy(MBSGapSettings())
    assert policy.cfg.keep_ratio == 0.8
    pa, pv = [0.9, 0.2, 0.5, 0.6, 0.95], [0.1, 0.25, 0.5, 0.3, 0.9]
    sel = policy.select(_ctx(pa, pv, [0, 1, 0, 1, 0]))
    assert sel.indices.tolist() == _smallest(range(5), [abs(a - b) for a, b in zip(pa, pv)], 4) == [1, 2, 3, 4]
    assert torch.allclose(sel.deviation, T([abs(a - b) for a, b in zip(pa, pv)]).float())


# --------------------------------------------------------------- config and retention
def test_variants_load_from_config_and_name_their_keys():
    cfg = config_from_dict({"selection": {"policy": "mbs-pooled", "center": "one", "deviation": "log", "keep_ratio": 0.3}})
    assert isinstance(cfg.selection, MBSPooledSettings) and cfg.selection.keep_ratio == 0.3
    cfg = config_from_dict({"selection": {"policy": "mbs", "split": "one"}})
    assert cfg.selection.split == "one"
    cfg = config_from_dict({"selection": {"policy": "mbs-gap", "keep_ratio": 0.7}})
    assert isinstance(cfg.selection, MBSGapSettings) and cfg.selection.keep_ratio == 0.7
    with pytest.raises(Exception, match="selection.center is not a setting of policy mbs-gap"):
        config_from_dict({"selection": {"policy": "mbs-gap", "center": "one"}})
    with pytest.raises(Exception, match="selection.split is not a setting of policy mbs-pooled"):
        config_from_dict({"selection": {"policy": "mbs-pooled", "split": "one"}})


def _sample(seq: int, label: int) -> Sample:
    return Sample(tensors={"audio": np.zeros((2, 1), np.float32), "video": np.zeros((1, 1, 1, 1), np.float32)},
                  label=label, device="d", seq=seq)


def test_mbs_retention_fed_by_pooled_deviations_keeps_the_best_balanced_per_class():
    """``mbs-pooled`` with keep_ratio 1 + ``buffer.retention: mbs``: every sample is trained on and
    offered with its |log MBS| (centre 1); the buffer ends with, per class, the least deviating
    samples, the classes balanced (it evicts from the largest class).  With ``selection.policy:
    all`` there is no deviation (the learner offers score 0) and the rule has nothing to rank."""
    rng = np.random.default_rng(3)
    policy = build_policy(MBSPooledSettings(keep_ratio=1.0, center="one", deviation="log"))
    buf = ReplayBuffer(BufferConfig(max_items=6, retention="mbs"), seed=0)
    offered: list[tuple[int, int, float]] = []
    seq = 0
    for _ in range(5):
        labels = rng.integers(0, 2, size=8).tolist()
        pa, pv = rng.uniform(0.05, 1, 8), rng.uniform(0.05, 1, 8)
        out = policy.select(_ctx(pa, pv, labels))
        assert out.indices.tolist() == list(range(8))
        for j in range(8):
            buf.offer(_sample(seq, labels[j]), float(out.deviation[j]))
            offered.append((seq, labels[j], abs(math.log(pa[j] / pv[j]))))
            seq += 1
    kept = {buf.get(k).seq for k in buf.keys()}
    counts = buf.class_counts()
    assert sum(counts.values()) == 6 and abs(counts.get(0, 0) - counts.get(1, 0)) <= 1
    for c in (0, 1):  # the best-balanced of each class, by a direct sort
        rows = sorted((d, s) for s, y, d in offered if y == c)
        assert {s for _, s in rows[: counts[c]]} == {s for s in kept if any(o[0] == s and o[1] == c for o in offered)}


def test_mbs_retention_through_the_learner_with_all_and_with_pooled():
    """Through ``Learner.observe``: with ``selection.policy: all`` the buffer's ``mbs`` retention
    gets score 0 for every sample (nothing to rank); with ``mbs-pooled`` at keep_ratio 1 every stored
    score is that sample's |log MBS| from the same step, and the classes stay balanced."""
    from tests.support.streams import stream
    from device_sim.datasets.synthetic import SyntheticConfig, SyntheticDataset
    from edge_runtime.learning.learner import Learner

    samples = stream(SyntheticDataset(SyntheticConfig(size=128, seed=0)), range(128))
    for selection, ranked in (({"policy": "all"}, False), ({"policy": "mbs-pooled", "keep_ratio": 1.0, "center": "one", "deviation": "log"}, True)):
        learner = Learner(config_from_dict({"selection": selection, "buffer": {"max_items": 20, "retention": "mbs"}}))
        for i in range(0, 128, 32):
            learner.observe(samples[i : i + 32])
        buf = learner.buffer
        scores = [buf.score(k) for k in buf.keys()]
        counts = buf.class_counts()
        assert len(buf) == 20 and max(counts.values()) - min(counts.values()) <= 1
        if ranked:
            assert all(s >= 0 for s in scores) and len(set(scores)) > 15  # real, distinct deviations
        else:
            assert scores == [0.0] * 20
