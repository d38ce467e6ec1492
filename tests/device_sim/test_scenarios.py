"""Stream scenarios: each one's defining property, checked on real label arrays."""

from __future__ import annotations

import numpy as np
import pytest

from device_sim.datasets.synthetic import SyntheticConfig, SyntheticDataset
from device_sim.scenario import Corrupted, assign_devices, blurry, class_incremental, eval_mask, gradual, iid, make_order

LABELS = np.repeat(np.arange(10), 100)  # 1000 samples, 10 classes


def _is_permutation(order, n):
    return sorted(order.indices.tolist()) == list(range(n))


def test_iid_is_a_permutation_with_one_task():
    o = iid(LABELS, seed=1)
    assert _is_permutation(o, 1000) and set(o.task_of.tolist()) == {0} and o.task_classes == [list(range(10))]


def test_class_incremental_each_class_only_in_its_task():
    o = class_incremental(LABELS, 2, seed=3)
    assert _is_permutation(o, 1000) and len(o.task_classes) == 5
    stream_labels = LABELS[o.indices]
    for t, classes in enumerate(o.task_classes):
        seg = stream_labels[o.task_of == t]
        assert set(seg.tolist()) == set(classes) and len(seg) == 200
    assert np.all(np.diff(o.task_of) >= 0)  # tasks are contiguous and in order
    assert class_incremental(LABELS, 2, seed=3).task_classes == o.task_classes
    assert class_incremental(LABELS, 2, seed=4).task_classes != o.task_classes  # seeded class order


@pytest.mark.parametrize("blur", [0.0, 0.1, 0.3])
def test_blurry_overlap_within_its_bound(blur):
    o = blurry(LABELS, 2, blur, seed=0)
    assert _is_permutation(o, 1000)
    stream_labels = LABELS[o.indices]
    foreign_total = 0
    for t, classes in enumerate(o.task_classes):
        seg = stream_labels[o.task_of == t]
        foreign = int((~np.isin(seg, classes)).sum())
        assert foreign <= np.floor(blur * len(seg))
        foreign_total += foreign
    if blur == 0:
        assert foreign_total == 0
    else:
        assert foreign_total >= 0.5 * blur * 1000  # the boundaries really are blurred


def test_gradual_drift_pure_middles_and_rising_share_across_transitions():
    labels = np.repeat(np.arange(4), 2000)
    o = gradual(labels, 2, width=0.4, seed=0)
    assert _is_permutation(o, len(labels))
    task = o.task_of
    n_task = 4000
    # middle of the first task (away from the transition) is pure
    assert np.all(task[: int(0.7 * n_task)] == 0)
    # across the transition the share of task 1 rises
    window = task[int(0.75 * n_task) : int(1.25 * n_task)]
    quarters = np.array_split(window, 4)
    shares = [float(np.mean(q == 1)) for q in quarters]
    assert shares == sorted(shares) and shares[0] < 0.3 and shares[-1] > 0.7
    sharp = gradual(labels, 2, width=0.0, seed=0)
    assert np.all(np.diff(sharp.task_of) >= 0)


@pytest.mark.parametrize("skew", [0.0, 0.8, 1.0])
def test_shard_class_skew(skew):
    rng = np.random.default_rng(0)
    stream_labels = rng.integers(0, 8, size=8000)
    dev = assign_devices(stream_labels, 4, skew=skew, seed=1)
    home_share = []
    for d in range(4):
        mine = stream_labels[dev == d]
        home_share.append(float(np.mean(mine % 4 == d)))
    expected = skew + (1 - skew) / 4  # home with prob skew, else uniform over 4 devices
    for share in home_share:
        assert abs(share - expected) < 0.03, (home_share, expected)
    if skew == 1.0:
        assert all(share == 1.0 for share in home_share)


def test_eval_mask_interleaves_every_kth():
    m = eval_mask(25, 10)
    assert np.flatnonzero(m).tolist() == [9, 19]
    assert not eval_mask(5, None).any()


@pytest.mark.parametrize("kind", ["noise", "occlusion", "drop"])
def test_corruption_fraction_and_only_the_chosen_modality(kind):
    ds = SyntheticDataset(size=200, seed=0)
    cor = Corrupted(ds, fraction=0.25, kind=kind, modality="video", seed=2)
    hit = cor.corrupted()
    assert int(hit.sum()) == 50
    for i in range(200):
        a, b = ds.sample(i), cor.sample(i)
        assert a.label == b.label
        assert np.array_equal(a.tensors["audio"], b.tensors["audio"])
        same_video = np.array_equal(a.tensors["video"], b.tensors["video"])
        assert same_video == (not hit[i]), i
        if hit[i]:
            v = b.tensors["video"]
            if kind == "drop":
                assert not v.any()
            elif kind == "occlusion":
                zeros = (v == 0).mean()
                assert zeros >= 0.24  # half the side in each direction = a quarter of every frame
            assert b.meta["corrupted"] == f"{kind}:video"


def test_make_order_names_the_choices():
    with pytest.raises(ValueError, match="blurry"):
        make_order("sideways", LABELS)


def test_degrade_block_averages_then_adds_noise():
    from device_sim.scenario import DEGRADE_BLOCK, DEGRADE_STRENGTH, _block_average

    x = np.arange(2 * 4 * 4, dtype=np.float32).reshape(2, 1, 4, 4)
    got = _block_average(x, 2, (2, 3))
    want = x.copy()
    for f in range(2):
        for r in (0, 2):
            for c in (0, 2):
                want[f, 0, r : r + 2, c : c + 2] = x[f, 0, r : r + 2, c : c + 2].mean()
    np.testing.assert_allclose(got, want)
    a = np.arange(10, dtype=np.float32)[:, None].repeat(3, 1)  # 10 steps, block 4: the last block is padded by its edge
    got = _block_average(a, 4, (0,))
    np.testing.assert_allclose(got[:, 0], [1.5] * 4 + [5.5] * 4 + [(8 + 9 + 9 + 9) / 4] * 2)
    ds = SyntheticDataset(SyntheticConfig(size=20), seed=1)
    cor = Corrupted(ds, 1.0, "degrade", "video", seed=4)
    assert cor.strength == DEGRADE_STRENGTH["video"] and cor.corrupted().all()
    s, raw = cor.sample(3), ds.sample(3)
    v = raw.tensors["video"].astype(np.float32)
    rng = np.random.default_rng([4, 0xC1, 3])
    b = DEGRADE_BLOCK["video"]
    expect = _block_average(v, b, (v.ndim - 2, v.ndim - 1)) + rng.standard_normal(v.shape).astype(np.float32) * cor.strength * float(v.std())
    np.testing.assert_allclose(s.tensors["video"], expect, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(s.tensors["audio"], raw.tensors["audio"])


def test_named_streams():
    from device_sim.scenario import STREAMS, make_stream

    ds, test = SyntheticDataset(SyntheticConfig(size=40), seed=1), SyntheticDataset(SyntheticConfig(size=10), seed=2)
    assert make_stream("clean", ds, test) == (ds, test)
    for name, spec in STREAMS.items():
        if spec is None:
            continue
        tr, te = make_stream(name, ds, test, seed=3)
        fraction, kind, modality = spec
        assert (tr.fraction, tr.kind, tr.modality) == (fraction, kind, modality)
        assert tr.corrupted().sum() == round(fraction * 40)
        if name.startswith("weak-"):  # a worse sensor: the test split is degraded too, with other noise
            assert te.corrupted().all() and te.seed != tr.seed
        else:
            assert te is test  # corrupted streams are evaluated on clean data
    with pytest.raises(ValueError, match="unknown stream 'muddy'"):
        make_stream("muddy", ds)


@pytest.mark.slow
def test_device_sim_stream_option_is_exclusive_with_corrupt_fraction():
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent.parent
    r = subprocess.run([sys.executable, "-m", "device_sim.cli", "run", "--stream", "weak-video", "--corrupt-fraction", "0.2",
                        "--no-progress", "--endpoint", "tcp://127.0.0.1:9"], capture_output=True, text=True, cwd=str(root),
                       env={**os.environ, "PYTHONPATH": str(root)}, timeout=60)
    assert r.returncode == 2 and "--stream and --corrupt-fraction both corrupt the stream" in r.stderr
    r = subprocess.run([sys.executable, "-m", "device_sim.cli", "run", "--stream", "muddy"], capture_output=True, text=True,
                       cwd=str(root), env={**os.environ, "PYTHONPATH": str(root)}, timeout=60)
    assert r.returncode == 2 and "weak-audio" in r.stderr  # argparse lists the streams
