"""The embedded synthetic data set: determinism, shapes, kind mix, real per-modality informativeness."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from device_sim.datasets import registry
from device_sim.datasets.synthetic import KINDS, SyntheticConfig, SyntheticDataset


@pytest.fixture(scope="module")
def ds() -> SyntheticDataset:
    return SyntheticDataset(SyntheticConfig(size=3000, seed=0))


def same(a, b) -> bool:
    return (
        a.label == b.label
        and a.meta == b.meta
        and a.tensors.keys() == b.tensors.keys()
        and all(np.array_equal(a.tensors[k], b.tensors[k]) for k in a.tensors)
    )


def test_deterministic_by_seed_and_index(ds):
    other = SyntheticDataset(SyntheticConfig(size=3000, seed=0))
    for i in (0, 1, 17, 2999, 3500):
        assert same(ds.sample(i), other.sample(i))
        assert same(ds.sample(i), ds.sample(i))
    assert not same(ds.sample(3), ds.sample(4))
    reseeded = SyntheticDataset(SyntheticConfig(size=3000, seed=1))
    assert not np.array_equal(ds.sample(5).tensors["video"], reseeded.sample(5).tensors["video"])
    # The order samples are asked for does not matter.
    forward = [ds.sample(i) for i in range(5)]
    backward = [other.sample(i) for i in reversed(range(5))][::-1]
    assert all(same(a, b) for a, b in zip(forward, backward))


def test_shapes_and_dtypes():
    cfg = SyntheticConfig(num_classes=4, audio_features=5, audio_frames=(3, 7), video_frames=(1, 3), image_size=8, channels=3, size=200, seed=2)
    data = SyntheticDataset(cfg)
    t_a, t_v = set(), set()
    for i in range(200):
        s = data.sample(i)
        audio, video = s.tensors["audio"], s.tensors["video"]
        assert audio.dtype == video.dtype == np.float32
        assert audio.flags["C_CONTIGUOUS"] and video.flags["C_CONTIGUOUS"]
        assert audio.ndim == 2 and audio.shape[1] == 5 and 3 <= audio.shape[0] <= 7
        assert video.shape[1:] == (3, 8, 8) and 1 <= video.shape[0] <= 3
        assert 0 <= s.label < 4 and s.split == "train" and s.meta["kind"] in KINDS
        assert np.isfinite(audio).all() and np.isfinite(video).all()
        t_a.add(audio.shape[0])
        t_v.add(video.shape[0])
    assert t_a == set(range(3, 8)) and t_v == {1, 2, 3}  # lengths vary over the whole range
    assert len(data) == 200 and sum(1 for _ in data) == 200


def test_kind_fractions_and_strength_ranges(ds):
    kinds = []
    for i in range(2000):
        s = ds.sample(i)
        kind, inf = s.meta["kind"], s.meta["informativeness"]
        kinds.append(kind)
        strong = {"balanced": ("audio", "video"), "audio": ("audio",), "video": ("video",)}[kind]
        for m in ("audio", "video"):
            lo, hi = (0.7, 1.0) if m in strong else (0.05, 0.3)
            assert lo <= inf[m] <= hi, (kind, inf)
    share = {k: kinds.count(k) / len(kinds) for k in KINDS}
    assert abs(share["balanced"] - 0.6) < 0.04 and abs(share["audio"] - 0.2) < 0.03 and abs(share["video"] - 0.2) < 0.03, share
    custom = SyntheticDataset(SyntheticConfig(fractions={"balanced": 0.0, "audio": 1.0, "video": 0.0}, size=50))
    assert {custom.sample(i).meta["kind"] for i in range(50)} == {"audio"}


def test_labels_balanced_and_consistent(ds):
    labels = ds.labels()
    assert labels.shape == (3000,) and labels.dtype == np.int64
    assert np.bincount(labels, minlength=10).tolist() == [300] * 10
    assert all(ds.sample(i).label == labels[i] for i in range(0, 3000, 37))
    assert not np.array_equal(labels[:10], np.arange(10))  # shuffled, not i % num_classes


def test_test_set_is_held_out_from_the_same_distribution(ds):
    test = ds.test_set(400)
    assert len(test) == 400 and all(s.split == "eval" for s in test)
    assert {s.seq for s in test}.isdisjoint(range(len(ds)))
    assert same(test[0], ds.test_set(1)[0])
    counts = np.bincount([s.label for s in test], minlength=10)
    assert counts.min() == counts.max() == 40
    assert 0.5 < np.mean([s.meta["kind"] == "balanced" for s in test]) < 0.7


def _ncm_accuracy(train, test, modality: str) -> dict[str, float]:
    """Nearest-class-mean on the time-averaged, flattened tensor of ``modality``, per kind."""
    def feats(samples):
        return np.stack([s.tensors[modality].mean(axis=0).ravel() for s in samples])

    x, y = feats(train), np.array([s.label for s in train])
    means = np.stack([x[y == c].mean(axis=0) for c in range(10)])
    xt, yt = feats(test), np.array([s.label for s in test])
    pred = ((xt[:, None, :] - means[None]) ** 2).sum(-1).argmin(1)
    kinds = np.array([s.meta["kind"] for s in test])
    return {k: float((pred[kinds == k] == yt[kinds == k]).mean()) for k in KINDS}


def test_informativeness_is_real(ds):
    train = [ds.sample(i) for i in range(2000)]
    test = ds.test_set(2000)
    audio = _ncm_accuracy(train, test, "audio")
    video = _ncm_accuracy(train, test, "video")
    # Audio: learnable but not trivial on balanced samples, near chance (0.1) where audio is weak.
    assert 0.5 <= audio["balanced"] <= 0.85, audio
    assert audio["audio"] > audio["video"] + 0.35 and audio["video"] < 0.3, audio
    # Video: clearly better where video is the informative modality.
    assert video["video"] > video["audio"] + 0.2 and video["balanced"] > video["audio"] + 0.2, video


def test_config_is_strict():
    with pytest.raises(ValidationError):
        SyntheticConfig(unknown=1)
    with pytest.raises(ValidationError):
        SyntheticConfig(fractions={"balanced": 0.5, "audio": 0.2, "video": 0.2})
    with pytest.raises(ValidationError):
        SyntheticConfig(audio_frames=(10, 5))
    with pytest.raises(IndexError):
        SyntheticDataset(size=10).sample(-1)


def test_registry():
    assert "synthetic" in registry.names()
    data = registry.build("synthetic", samples=30, seed=4)
    assert isinstance(data, SyntheticDataset) and len(data) == 30 and data.cfg.seed == 4 and data.num_classes == 10
    assert registry.build("synthetic", seed=4, num_classes=3).num_classes == 3  # other keywords are config fields
    with pytest.raises(ValueError, match="synthetic"):
        registry.build("nope")
