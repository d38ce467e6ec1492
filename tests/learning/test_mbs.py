"""MBS score, Algorithm 1 selection, running median and the random policy, against direct computations."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_runtime.learning.policies.scoring import mbs, mbs_deviation
from edge_runtime.learning.policies import build_policy
from edge_runtime.learning.policies.base import StepContext
from edge_runtime.learning.policies.admission.mbs import MBSPolicy, MBSSettings, select, select_with_deviation
from edge_runtime.learning.policies.admission.random import RandomPolicy, RandomSettings
from edge_runtime.learning.policies.running_median import RunningMedian

TINY64 = torch.finfo(torch.float64).tiny


def reference_select(values, keep_ratio, center="median", deviation="ratio"):
    """Algorithm 1 of the MBS paper in plain Python, split at the centre m (the learning step, step 4, docs/design.md)."""
    n = len(values)
    if n == 0:
        return [], []
    if center == "median":
        s = sorted(values)
        m = s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2
    elif center == "one":
        m = 1.0
    else:
        m = float(center)
    if deviation == "ratio":
        dev = [abs(x - m) for x in values]
    else:
        dev = [abs(math.log(max(x, TINY64)) - math.log(max(m, TINY64))) for x in values]
    left = [i for i in range(n) if values[i] <= m]
    right = [i for i in range(n) if values[i] > m]
    k = math.floor(keep_ratio * n / 2)
    keep = sorted(left, key=lambda i: (dev[i], i))[:k] + sorted(right, key=lambda i: (dev[i], i))[:k]
    return sorted(keep), dev


def _sel(values, keep_ratio, **kw):
    return select(torch.tensor(values, dtype=torch.float64), keep_ratio, **kw).tolist()


# ---------------------------------------------------------------------- MBS score
def test_mbs_is_the_confidence_ratio():
    pa = torch.tensor([0.5, 0.2, 0.9, 0.3])
    pv = torch.tensor([0.25, 0.4, 0.9, 0.0])
    got = mbs(pa, pv)
    assert got[:3].tolist() == pytest.approx([2.0, 0.5, 1.0])
    # p_video = 0 is clamped at the smallest positive normal float: finite, no inf/NaN
    assert math.isfinite(float(got[3]))
    assert float(got[3]) == pytest.approx(0.3 / torch.finfo(torch.float32).tiny, rel=1e-6)
    half = mbs(torch.tensor([1.0], dtype=torch.float16), torch.tensor([0.0], dtype=torch.float16))
    assert half.dtype == torch.float16 and math.isfinite(float(half))


def test_mbs_deviation_ratio_and_log():
    score = torch.tensor([0.5, 2.0, 1.0, 4.0], dtype=torch.float64)
    assert mbs_deviation(score, 2.0).tolist() == [1.5, 0.0, 1.0, 2.0]
    want = [abs(math.log(x) - math.log(2.0)) for x in (0.5, 2.0, 1.0, 4.0)]
    assert mbs_deviation(score, 2.0, "log").tolist() == pytest.approx(want)
    assert math.isfinite(float(mbs_deviation(torch.tensor([0.0]), 1.0, "log")[0]))
    with pytest.raises(ValueError, match="deviation"):
        mbs_deviation(score, 1.0, "abs")


# ---------------------------------------------------------------------- Algorithm 1 by hand
def test_algorithm1_odd_n():
    values = [0.5, 2.0, 1.0, 0.9, 4.0]
    # median m = 1.0; left (<= 1): #0 dev .5, #2 dev 0, #3 dev .1; right: #1 dev 1, #4 dev 3
    assert _sel(values, 0.8) == [1, 2, 3, 4]  # K = floor(0.8*5/2) = 2
    assert _sel(values, 0.5) == [1, 2]  # K = 1
    assert _sel(values, 1.0) == [1, 2, 3, 4]  # K = 2: left keeps 2 of its 3, no refilling
    assert _sel(values, 0.39) == []  # K = floor(0.975) = 0: empty selection


def test_algorithm1_even_n_uses_mean_of_middle_values():
    values = [3.0, 0.2, 1.5, 0.8, 2.5, 1.0]
    # m = (1.0 + 1.5) / 2 = 1.25; left: #1 1.05, #3 .45, #5 .25; right: #0 1.75, #2 .25, #4 1.25
    assert _sel(values, 0.7) == [2, 3, 4, 5]  # K = 2
    assert _sel(values, 0.4) == [2, 5]  # K = 1
    assert _sel(values, 1.0) == [0, 1, 2, 3, 4, 5]  # K = 3: everything
    idx, dev = select_with_deviation(torch.tensor(values, dtype=torch.float64), 0.7)
    assert dev.tolist() == pytest.approx([abs(v - 1.25) for v in values])


def test_algorithm1_ties_go_to_the_lower_index():
    values = [1.5, 2.5, 1.5, 2.5, 1.5, 2.5]  # m = 2.0, every deviation 0.5
    assert _sel(values, 0.67) == [0, 1, 2, 3]  # K = 2 per side: the first two of each side
    assert _sel(values, 0.34) == [0, 1]


def test_all_samples_on_one_side_of_the_centre():
    values = [0.2, 0.9, 0.5, 0.95]  # all below 1: the right side is empty and nothing refills it
    assert _sel(values, 1.0, center="one") == [1, 3]  # K = 2 from the left only
    assert _sel(values, 1.0, center=0.1) == [0, 2]  # all above 0.1: K = 2 from the right
    assert _sel([1.0, 1.0, 1.0], 1.0) == [0]  # all equal the median: left side only, K = 1


def test_log_deviation():
    values = [0.5, 2.0, 0.25, 3.0, 1.0, 1.9]
    m = 1.0
    idx, dev = select_with_deviation(torch.tensor(values, dtype=torch.float64), 1.0, center="one", deviation="log")
    assert dev.tolist() == pytest.approx([abs(math.log(v) - math.log(m)) for v in values])
    # left: #4 (0), #0 (.69), #2 (1.39); right: #5 (.64), #1 (.69), #3 (1.10); K = 3
    assert idx.tolist() == [0, 1, 2, 3, 4, 5]
    assert _sel(values, 0.67, center="one", deviation="log") == [0, 1, 4, 5]  # K = 2
    # within one side both deviations are monotone in MBS, so they keep the same samples
    assert _sel(values, 0.67, center="one", deviation="ratio") == [0, 1, 4, 5]


def test_validation():
    x = torch.tensor([0.5, 1.5])
    for bad in (0.0, -0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="keep_ratio"):
            select(x, bad)
    with pytest.raises(ValueError, match="running"):
        select(x, 0.5, center="running")
    with pytest.raises(ValueError, match=">= 0"):
        select(torch.tensor([-1.0, 1.0]), 0.5)
    assert select(torch.zeros(0), 0.5).tolist() == []
    out = select(x, 1.0)
    assert out.dtype == torch.long and out.tolist() == [0, 1]


def test_nan_rows_are_never_selected():
    values = torch.tensor([0.5, float("nan"), 2.0, 1.0], dtype=torch.float64)
    # median of the valid values {0.5, 1, 2} = 1; K = floor(1.0 * 4 / 2) = 2
    assert select(values, 1.0).tolist() == [0, 2, 3]
    assert select(torch.full((3,), float("nan")), 1.0).tolist() == []


# ---------------------------------------------------------------------- property test
@settings(max_examples=300, deadline=None)
@given(
    values=st.lists(st.floats(min_value=0.0, max_value=1e6, allow_nan=False, allow_infinity=False), min_size=0, max_size=40),
    keep_ratio=st.floats(min_value=1e-3, max_value=1.0),
    center=st.one_of(st.sampled_from(["median", "one"]), st.floats(min_value=0.0, max_value=1e3)),
)
def test_select_matches_reference_ratio(values, keep_ratio, center):
    got = _sel(values, keep_ratio, center=center)
    assert got == reference_select(values, keep_ratio, center)[0]


@pytest.mark.slow
@settings(max_examples=200, deadline=None)
@given(
    # a grid (with repeats and ties) keeps log() rounding from reordering distinct values
    values=st.lists(st.integers(min_value=0, max_value=64).map(lambda k: k / 16), min_size=0, max_size=40),
    keep_ratio=st.floats(min_value=1e-3, max_value=1.0),
    center=st.sampled_from(["median", "one", 0.75, 2.5]),
)
def test_select_matches_reference_log(values, keep_ratio, center):
    idx, dev = select_with_deviation(torch.tensor(values, dtype=torch.float64), keep_ratio, center=center, deviation="log")
    want, want_dev = reference_select(values, keep_ratio, center, "log")
    assert idx.tolist() == want
    assert dev.tolist() == pytest.approx(want_dev, rel=1e-12, abs=1e-12)


# ---------------------------------------------------------------------- running median
def test_running_median_matches_numpy_over_sliding_window():
    rng = np.random.default_rng(5)
    stream = np.round(rng.normal(size=3000), 1)  # rounding: many duplicates in the window
    for window in (1, 2, 7, 64):
        rm = RunningMedian(window)
        pos = 0
        while pos < len(stream):
            size = int(rng.integers(1, 3 * window + 2))  # chunks shorter and longer than the window
            chunk = stream[pos : pos + size]
            rm.add(torch.tensor(chunk) if size % 2 else chunk.tolist())
            pos += len(chunk)
            assert rm.median() == np.median(stream[max(0, pos - window) : pos])
            assert len(rm) == min(pos, window)


def test_running_median_state_round_trip_and_errors():
    rm = RunningMedian(5)
    with pytest.raises(ValueError, match="no values"):
        rm.median()
    rm.add([3.0, 1.0, 4.0, 1.0, 5.0, 9.0, 2.0])
    state = rm.state_dict()
    assert state["values"] == [4.0, 1.0, 5.0, 9.0, 2.0]
    other = RunningMedian(5)
    other.load_state_dict(state)
    assert other.median() == rm.median() == 4.0
    rm.add([6.0, 0.5])
    other.add([6.0, 0.5])
    assert other.median() == rm.median() == np.median([5.0, 9.0, 2.0, 6.0, 0.5])
    small = RunningMedian(2)
    small.load_state_dict(state)  # keeps the newest values that fit
    assert small.state_dict()["values"] == [9.0, 2.0]
    with pytest.raises(ValueError, match="NaN"):
        rm.add([float("nan")])
    with pytest.raises(ValueError):
        RunningMedian(0)


# ---------------------------------------------------------------------- policies
def _ctx(pa, pv):
    pa, pv = torch.as_tensor(pa, dtype=torch.float64), torch.as_tensor(pv, dtype=torch.float64)
    return StepContext(batch=None, labels=torch.zeros(len(pa), dtype=torch.long), output=None, p={"audio": pa, "video": pv}, model=None)


@pytest.mark.parametrize("center", ["median", "one"])
@pytest.mark.parametrize("deviation", ["ratio", "log"])
def test_mbs_policy_is_algorithm1_on_the_confidence_ratio(center, deviation):
    rng = np.random.default_rng(6)
    pa, pv = rng.uniform(0.01, 1, size=25), rng.uniform(0.01, 1, size=25)
    policy = build_policy(MBSSettings(keep_ratio=0.4, center=center, deviation=deviation))
    assert isinstance(policy, MBSPolicy)
    out = policy.select(_ctx(pa, pv))
    want, want_dev = reference_select((pa / pv).tolist(), 0.4, center, deviation)
    assert out.indices.tolist() == want
    assert out.deviation.shape == (25,)
    np.testing.assert_allclose(out.deviation.numpy(), want_dev, rtol=1e-12)


def test_mbs_policy_running_centre_includes_this_batch_and_survives_restart():
    rng = np.random.default_rng(7)
    cfg = MBSSettings(keep_ratio=0.5, center="running", running_window=20)
    policy = MBSPolicy(cfg)
    history: list[float] = []
    batches = [(rng.uniform(0.05, 1, size=n), rng.uniform(0.05, 1, size=n)) for n in (8, 5, 13, 30, 6)]
    for i, (pa, pv) in enumerate(batches):
        if i == 3:  # restart from the saved state
            restored = MBSPolicy(cfg)
            restored.load_state_dict(policy.state_dict())
            policy = restored
        score = (pa / pv).tolist()
        history += score
        m = float(np.median(history[-20:]))
        out = policy.select(_ctx(pa, pv))
        assert out.indices.tolist() == reference_select(score, 0.5, m)[0]
        np.testing.assert_allclose(out.deviation.numpy(), np.abs(np.array(score) - m), rtol=1e-12)


def test_random_policy_size_determinism_and_state():
    cfg = RandomSettings(keep_ratio=0.25)
    a, b = build_policy(cfg, seed=3), RandomPolicy(cfg, seed=3)
    assert isinstance(a, RandomPolicy)
    draws_a = [a.select(_ctx(np.ones(n), np.ones(n))) for n in (10, 40, 3, 7)]
    draws_b = [b.select(_ctx(np.ones(n), np.ones(n))).indices.tolist() for n in (10, 40, 3, 7)]
    assert [d.indices.tolist() for d in draws_a] == draws_b
    assert [len(d) for d in draws_b] == [2, 10, 1, 1]  # max(1, floor(0.25 n))
    assert all(d.deviation is None for d in draws_a)
    for d, n in zip(draws_b, (10, 40, 3, 7)):
        assert d == sorted(set(d)) and all(0 <= i < n for i in d)
    other_seed = RandomPolicy(cfg, seed=4)
    assert [other_seed.select(_ctx(np.ones(40), np.ones(40))).indices.tolist() for _ in range(3)] != [
        RandomPolicy(cfg, seed=3).select(_ctx(np.ones(40), np.ones(40))).indices.tolist() for _ in range(3)
    ]
    assert a.select(_ctx(np.ones(0), np.ones(0))).indices.tolist() == []
    state = a.state_dict()
    restored = RandomPolicy(cfg, seed=99)
    restored.load_state_dict(state)
    assert [restored.select(_ctx(np.ones(20), np.ones(20))).indices.tolist() for _ in range(3)] == [
        a.select(_ctx(np.ones(20), np.ones(20))).indices.tolist() for _ in range(3)
    ]
