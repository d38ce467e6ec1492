"""Replay buffer: bounds at every step, retention rules (reservoir, CBRS, MBS), sampling, state."""

from __future__ import annotations

import io
from collections import Counter

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_runtime.learning.buffer import RETENTION, MemoryStore, OfferResult, ReplayBuffer
from edge_runtime.core.config import BufferConfig
from edge_runtime.core.sample import Sample


def make(seq: int, label: int, floats: int = 4, device: str = "d") -> Sample:
    """A tiny sample whose payload is ``floats`` float32 values (4 bytes each)."""
    audio = np.full((max(floats - 1, 1), 1), float(seq), dtype=np.float32)
    video = np.full((1, 1, 1, 1), float(label), dtype=np.float32)
    if floats == 1:
        audio = np.zeros((0, 1), dtype=np.float32)
    return Sample(tensors={"audio": audio, "video": video}, label=label, device=device, seq=seq, meta={"i": seq})


def buffer(policy: str, items: int = 10, nbytes: int = 10**9, seed: int = 0) -> ReplayBuffer:
    return ReplayBuffer(BufferConfig(max_items=items, max_bytes=nbytes, retention=policy), seed=seed)


def check_invariants(buf: ReplayBuffer) -> None:
    keys = buf.keys()
    assert len(keys) == len(set(keys)) == len(buf) == len(buf.store)
    assert sum(buf.get(k).nbytes for k in keys) == buf.nbytes
    assert sum(buf.class_counts().values()) == len(buf)
    for c, n in buf.class_counts().items():
        assert n == sum(1 for k in keys if buf.get(k).label == c)


@pytest.mark.parametrize("policy", sorted(RETENTION))
def test_never_over_items_or_bytes(policy):
    rng = np.random.default_rng(7)
    buf = buffer(policy, items=25, nbytes=25 * 4 * 6)  # both bounds bite: sizes average ~10 floats
    admitted = 0
    for seq in range(3000):
        label = int(rng.choice(5, p=[0.5, 0.2, 0.15, 0.1, 0.05]))
        s = make(seq, label, floats=int(rng.integers(1, 20)))
        before = set(buf.keys())
        res = buf.offer(s, score=float(rng.random()))
        assert isinstance(res, OfferResult)
        assert len(buf) <= 25 and buf.nbytes <= 25 * 4 * 6
        assert res.admitted == (s.key in buf)
        assert set(res.evicted) <= before and not (set(res.evicted) & set(buf.keys()))
        if res.admitted:
            admitted += 1
            assert set(buf.keys()) == (before - set(res.evicted)) | {s.key}
        else:
            assert res.evicted == [] and set(buf.keys()) == before
        if seq % 97 == 0:
            check_invariants(buf)
    check_invariants(buf)
    assert admitted > 25


@pytest.mark.slow
def test_reservoir_gives_every_offer_equal_inclusion_probability():
    runs, offers, cap = 1500, 50, 10
    hits = np.zeros(offers)
    for seed in range(runs):
        buf = buffer("reservoir", items=cap, seed=seed)
        for seq in range(offers):
            buf.offer(make(seq, seq % 3))
        assert len(buf) == cap
        for _, seq in buf.keys():
            hits[seq] += 1
    freq = hits / runs  # expected cap / offers = 0.2 for every position; sd about 0.01
    assert np.all(np.abs(freq - 0.2) < 0.05), freq
    assert abs(freq[:25].mean() - freq[25:].mean()) < 0.02


def test_reservoir_rejects_and_replaces_by_slot():
    buf = buffer("reservoir", items=3)
    results = [buf.offer(make(i, 0)) for i in range(200)]
    assert all(r.admitted and not r.evicted for r in results[:3])
    later = results[3:]
    assert {r.reason for r in later} == {"admitted", "rejected"}
    assert all(len(r.evicted) == (1 if r.admitted else 0) for r in later)
    assert buf.offered == 200 and len(buf) == 3


def test_class_balanced_follows_cbrs_and_ends_balanced():
    rng = np.random.default_rng(3)
    probs = np.array([0.45, 0.25, 0.12, 0.08, 0.05, 0.05])  # imbalanced; every class >= ~150 offers
    buf = buffer("class_balanced", items=30, seed=1)
    label_of: dict = {}
    from_largest = own_class = rejections = 0
    for seq in range(3000):
        label = int(rng.choice(6, p=probs))
        s = make(seq, label)
        label_of[s.key] = label
        counts_before = buf.class_counts()
        full = len(buf) == 30
        res = buf.offer(s)
        if not full:
            assert res.admitted and not res.evicted
            continue
        top = max(counts_before.values())
        if counts_before.get(label, 0) < top:
            # Not among the largest classes: always admitted; a largest class loses an item.
            assert res.admitted and len(res.evicted) == 1
            assert counts_before[label_of[res.evicted[0]]] == top
            from_largest += 1
        elif res.admitted:
            # Among the largest: reservoir sampling within its own class.
            assert len(res.evicted) == 1 and label_of[res.evicted[0]] == label
            own_class += 1
        else:
            assert res.reason == "rejected" and res.evicted == []
            rejections += 1
    counts = buf.class_counts()
    assert len(buf) == 30 and len(counts) == 6
    assert max(counts.values()) - min(counts.values()) <= 1, counts
    assert from_largest > 0 and own_class > 0 and rejections > 0


def test_class_balanced_admission_probability_is_m_over_n():
    # One class only: CBRS reduces to reservoir sampling within the class (admit w.p. m_c / n_c).
    admitted = 0
    trials = 2000
    for seed in range(trials):
        buf = buffer("class_balanced", items=4, seed=seed)
        for seq in range(4):
            buf.offer(make(seq, 0))
        admitted += buf.offer(make(99, 0)).admitted  # m_c = 4, n_c = 5
    assert abs(admitted / trials - 0.8) < 0.04


def test_mbs_evicts_largest_deviation_of_largest_class():
    buf = buffer("mbs", items=5)
    scores = {0: 0.1, 1: 0.9, 2: 0.5, 3: 5.0, 4: 0.2}
    labels = {0: 0, 1: 0, 2: 0, 3: 1, 4: 1}  # class 0 is the largest (3 items); class 1 holds 5.0
    for seq in range(5):
        assert buf.offer(make(seq, labels[seq]), scores[seq]).admitted
    res = buf.offer(make(5, 1), 0.3)  # class 1 now has 3 with the incoming: classes 0 and 1 tie
    assert res.admitted and res.evicted == [("d", 3)]  # 5.0 is the largest deviation among them
    res = buf.offer(make(6, 2), 0.0)  # class 2 is small: evict from the largest class (0 now)
    assert res.admitted and res.evicted == [("d", 1)]  # 0.9 > 0.5 > 0.1
    res = buf.offer(make(7, 0), 10.0)  # incoming has the largest deviation of the largest class
    assert not res.admitted and res.reason == "rejected" and res.evicted == []
    assert sorted(buf.keys()) == [("d", 0), ("d", 2), ("d", 4), ("d", 5), ("d", 6)]


def test_mbs_byte_overflow_rejects_without_evicting():
    # 3 items of 4 floats = 48 bytes; max 60 bytes.  A 10-float sample (40 bytes) needs two
    # evictions; the second victim would be the incoming itself, so it is rejected and nothing moves.
    buf = buffer("mbs", items=10, nbytes=60)
    for seq, score in enumerate([1.0, 2.0, 3.0]):
        assert buf.offer(make(seq, 0), score).admitted
    res = buf.offer(make(3, 0, floats=10), 2.5)
    assert not res.admitted and res.evicted == [] and len(buf) == 3 and buf.nbytes == 48
    res = buf.offer(make(4, 0, floats=10), 0.5)
    assert res.admitted and res.evicted == [("d", 2), ("d", 1)] and buf.nbytes == 16 + 40


def test_byte_bound_evicts_until_it_fits():
    buf = buffer("reservoir", items=100, nbytes=40)
    for seq in range(10):
        assert buf.offer(make(seq, 0, floats=1)).admitted  # 10 x 4 bytes: full by bytes
    res = buf.offer(make(10, 1, floats=3))  # 12 bytes: three 4-byte items must go
    assert res.admitted and len(res.evicted) == 3 and buf.nbytes == 40 and len(buf) == 8


def test_sample_returns_distinct_stored_items():
    buf = buffer("reservoir", items=50)
    for seq in range(80):
        buf.offer(make(seq, seq % 4))
    for n in (0, 1, 7, 50, 200):
        got = buf.sample(n)
        keys = [s.key for s in got]
        assert len(keys) == min(n, 50) and len(set(keys)) == len(keys)
        assert all(k in buf for k in keys)
    assert {s.key for s in buf.sample(50)} == set(buf.keys())
    assert ReplayBuffer(BufferConfig()).sample(5) == []


def test_sample_is_uniform():
    buf = buffer("reservoir", items=20)
    for seq in range(20):
        buf.offer(make(seq, 0))
    counts = Counter(s.seq for _ in range(3000) for s in buf.sample(5))
    freq = np.array([counts[i] for i in range(20)]) / 3000  # expected 5 / 20 = 0.25
    assert np.all(np.abs(freq - 0.25) < 0.04), freq


def test_reasons_too_large_duplicate_and_unlabelled():
    buf = buffer("class_balanced", items=10, nbytes=32)
    assert buf.offer(make(0, 0, floats=9)).reason == "too_large"
    first = buf.offer(make(1, 0))
    assert first.admitted and first.reason == "admitted"
    dup = buf.offer(make(1, 0))
    assert (dup.admitted, dup.reason, dup.evicted) == (False, "duplicate", [])
    assert buf.offered == 1 and len(buf) == 1
    assert buf.offer(make(1, 0, device="other")).admitted  # same seq, other device: another key
    unlabelled = make(2, 0)
    unlabelled.label = None
    with pytest.raises(ValueError):
        buf.offer(unlabelled)


def test_memory_store_interface():
    store = MemoryStore()
    s = make(1, 2)
    store.put(s.key, s)
    assert len(store) == 1 and store.get(("d", 1)) is s and store.keys() == [("d", 1)]
    store.delete(("d", 1))
    assert len(store) == 0
    with pytest.raises(KeyError):
        store.get(("d", 1))


def test_uses_given_store():
    store = MemoryStore()
    buf = ReplayBuffer(BufferConfig(max_items=3, retention="reservoir"), store=store)
    for seq in range(10):
        buf.offer(make(seq, 0))
    assert sorted(store.keys()) == sorted(buf.keys())


@pytest.mark.parametrize("policy", sorted(RETENTION))
def test_state_dict_round_trip_gives_identical_behaviour(policy):
    rng = np.random.default_rng(11)
    stream = [make(seq, int(rng.integers(4)), floats=int(rng.integers(2, 9))) for seq in range(600)]
    scores = rng.random(600).tolist()
    a = buffer(policy, items=30, nbytes=30 * 4 * 5, seed=5)
    for s, sc in zip(stream[:300], scores[:300]):
        a.offer(s, sc)
    a.sample(7)
    blob = io.BytesIO()
    torch.save(a.state_dict(), blob)
    blob.seek(0)
    b = buffer(policy, items=30, nbytes=30 * 4 * 5, seed=999)
    b.load_state_dict(torch.load(blob, weights_only=False))
    assert b.keys() == a.keys() and b.nbytes == a.nbytes and b.class_counts() == a.class_counts()
    restored = b.get(a.keys()[0])
    original = a.get(a.keys()[0])
    assert restored.meta == original.meta and restored.key == original.key
    assert all(np.array_equal(restored.tensors[k], original.tensors[k]) for k in original.tensors)
    for s, sc in zip(stream[300:], scores[300:]):
        ra, rb = a.offer(s, sc), b.offer(s, sc)
        assert ra == rb
        assert [x.key for x in a.sample(5)] == [x.key for x in b.sample(5)]
    assert a.keys() == b.keys() and a.state_dict()["rng"] == b.state_dict()["rng"]


def test_state_dict_is_a_snapshot_and_checks_bounds():
    a = buffer("reservoir", items=5)
    for seq in range(5):
        a.offer(make(seq, 0))
    state = a.state_dict()
    a.get(("d", 0)).tensors["audio"][0, 0] = -1.0
    assert state["samples"][0]["tensors"]["audio"][0, 0] == 0.0
    with pytest.raises(ValueError, match="bounds"):
        buffer("reservoir", items=4).load_state_dict(state)
    with pytest.raises(ValueError, match="version"):
        buffer("reservoir", items=5).load_state_dict({**state, "version": 7})


@settings(max_examples=60, deadline=None)
@given(
    policy=st.sampled_from(sorted(RETENTION)),
    items=st.integers(1, 8),
    nbytes=st.integers(4, 120),
    offers=st.lists(st.tuples(st.integers(0, 3), st.integers(1, 12), st.floats(0, 5), st.integers(0, 40)), max_size=60),
)
def test_bounds_hold_for_any_stream(policy, items, nbytes, offers):
    buf = buffer(policy, items=items, nbytes=nbytes)
    for label, floats, score, seq in offers:
        s = make(seq, label, floats=floats)
        res = buf.offer(s, score)
        assert len(buf) <= items and buf.nbytes <= nbytes
        if s.nbytes > nbytes:
            assert res.reason in ("too_large", "duplicate")
        assert res.admitted == (res.reason == "admitted")
    check_invariants(buf)
    clone = buffer(policy, items=items, nbytes=nbytes, seed=1)
    clone.load_state_dict(buf.state_dict())
    assert clone.keys() == buf.keys() and clone.nbytes == buf.nbytes
