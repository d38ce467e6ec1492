"""The simulated fleet's plan (issue 25 item 1): classes per node, disjoint streams, slices, availability."""

from __future__ import annotations

import numpy as np
import pytest

from edge_runtime.federation.simulation.plan import DOWN, LATE, UP, SimPlan, round_slice, shares


def _labels(plan: SimPlan) -> np.ndarray:
    """Labels in shuffled blocks of one per class, as the synthetic data set deals them."""
    rng = np.random.default_rng(7)
    blocks = plan.stream_size() // plan.num_classes
    return np.concatenate([rng.permutation(plan.num_classes) for _ in range(blocks)])


@pytest.mark.parametrize("nodes,per_node", [(1, 3), (5, 2), (30, 2), (100, 2), (7, 4)])
def test_every_node_streams_only_its_classes_and_no_sample_twice(nodes, per_node):
    plan = SimPlan(nodes=nodes, rounds=3, samples_per_round=12, classes_per_node=per_node)
    labels = _labels(plan)
    streams = shares(plan, labels)
    assert len(streams) == nodes
    seen: set[int] = set()
    for k, stream in enumerate(streams):
        own = {(k * per_node + i) % 10 for i in range(per_node)}
        assert set(plan.classes(k)) == own
        assert len(stream) == 3 * 12
        assert set(labels[stream].tolist()) <= own
        assert not seen & set(stream.tolist()), f"node {k} streams a sample another node streams"
        seen |= set(stream.tolist())


def test_each_round_slice_holds_every_class_of_the_node():
    plan = SimPlan(nodes=4, rounds=5, samples_per_round=8, classes_per_node=2)
    labels = _labels(plan)
    for k, stream in enumerate(shares(plan, labels)):
        slices = [round_slice(plan, stream, r) for r in range(1, 6)]
        assert np.array_equal(np.concatenate(slices), stream)
        for part in slices:
            assert len(part) == 8 and set(labels[part].tolist()) == set(plan.classes(k))
    with pytest.raises(ValueError, match="round 6 is outside 1..5"):
        round_slice(plan, stream, 6)


def test_availability_is_seeded_and_close_to_the_configured_rates():
    plan = SimPlan(nodes=100, rounds=50, dropout=0.2, stragglers=0.1, seed=3)
    states = [plan.availability(r, k) for r in range(1, 51) for k in range(100)]
    assert states == [SimPlan(nodes=100, rounds=50, dropout=0.2, stragglers=0.1, seed=3).availability(r, k)
                      for r in range(1, 51) for k in range(100)]
    n = len(states)
    # 5,000 draws: the shares are within 4 standard deviations of the rates
    for state, p in ((DOWN, 0.2), (LATE, 0.1), (UP, 0.7)):
        assert abs(states.count(state) / n - p) < 4 * (p * (1 - p) / n) ** 0.5, state
    assert all(SimPlan(nodes=3, rounds=2).availability(r, k) == UP for r in (1, 2) for k in range(3))


@pytest.mark.parametrize("field,value", [("nodes", 0), ("dropout", 1.0), ("stragglers", -0.1), ("classes_per_node", 11)])
def test_a_bad_plan_names_the_field(field, value):
    kwargs = {"nodes": 3, "rounds": 2, field: value}
    with pytest.raises(ValueError, match=field):
        SimPlan(**kwargs)


def test_a_plan_round_trips_through_json():
    plan = SimPlan(nodes=7, rounds=4, samples_per_round=9, classes_per_node=3, seed=5, dropout=0.1, stragglers=0.05)
    assert SimPlan.from_json(plan.to_json()) == plan
