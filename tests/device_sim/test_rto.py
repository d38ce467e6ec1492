"""RtoEstimator against a direct computation of RFC 6298 ("Computing TCP's Retransmission Timer")."""

from __future__ import annotations

import random

import pytest

from device_sim.rto import RtoEstimator


def _rfc6298(rtts: list[float], lo: float, hi: float) -> list[float]:
    """RFC 6298 sections 2.2-2.4 written out: alpha 1/8, beta 1/4, K 4, G 0, RTO clamped to [lo, hi]."""
    out, srtt, rttvar = [], None, None
    for r in rtts:
        if srtt is None:
            srtt, rttvar = r, r / 2
        else:
            rttvar = 0.75 * rttvar + 0.25 * abs(srtt - r)
            srtt = 0.875 * srtt + 0.125 * r
        out.append(min(hi, max(lo, srtt + 4 * rttvar)))
    return out


def test_matches_the_rfc_formulas_on_random_round_trips():
    rng = random.Random(7)
    rtts = [rng.uniform(0.05, 20.0) for _ in range(200)]
    est = RtoEstimator(initial_s=2.0, min_s=1.0, max_s=60.0)
    assert est.get() == 2.0, "the initial RTO until the first measurement"
    got = [est.update(r) for r in rtts]
    assert got == pytest.approx(_rfc6298(rtts, 1.0, 60.0), rel=1e-12)
    assert est.get() == got[-1]


def test_first_measurement_and_bounds():
    est = RtoEstimator(initial_s=1.0, min_s=1.0, max_s=60.0)
    assert est.update(4.0) == 4.0 + 4 * 2.0 and est.srtt == 4.0 and est.rttvar == 2.0
    assert RtoEstimator().update(0.01) == 1.0, "never below the floor"
    assert RtoEstimator().update(50.0) == 60.0, "never above the ceiling"


def test_backoff_doubles_up_to_the_ceiling_and_a_measurement_ends_it():
    est = RtoEstimator(initial_s=2.0, min_s=1.0, max_s=60.0)
    assert [est.backoff() for _ in range(6)] == [4.0, 8.0, 16.0, 32.0, 60.0, 60.0]
    assert est.backoffs == 6
    assert est.update(1.0) == 3.0 and est.backoffs == 0


def test_rejects_impossible_bounds():
    with pytest.raises(ValueError):
        RtoEstimator(min_s=5.0, max_s=1.0)
    with pytest.raises(ValueError):
        RtoEstimator(initial_s=0.0)
