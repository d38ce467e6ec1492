"""Folder: a user's own .npz files (one per sample) load, stream, shard by recorder, and a bad folder
is refused in one line naming the file, by the data set and by ``device-sim`` (exit 2)."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import numpy as np
import pytest

from device_sim import cli
from device_sim.datasets import registry
from device_sim.datasets.folder import Folder, scan
from device_sim.fleet import shard
from device_sim.scenario import DEGRADE_BLOCK_BY_LAYOUT, Corrupted, _block_average
from tests.support.nodeproc import ROOT


def write_folder(root, n=12, seed=0, with_test=True):
    """``n`` samples: ``imu`` (T, 6) float64 of varying T, ``cam`` (2, 1, 8, 8) uint8, label, device, split, time."""
    rng = np.random.default_rng(seed)
    for i in range(n):
        sub = root / f"rec{i % 3}"
        sub.mkdir(parents=True, exist_ok=True)
        np.savez(sub / f"s{i:03d}.npz", imu=rng.standard_normal((20 + i, 6)), cam=rng.integers(0, 255, (2, 1, 8, 8), dtype=np.uint8),
                 label=i % 4, device=f"watch-{i % 3}", split="test" if with_test and i % 4 == 3 and i > 4 else "train",
                 time=float(100 - i))
    return root


def test_a_written_folder_loads_and_streams(tmp_path):
    root = write_folder(tmp_path / "data")
    (root / "README.txt").write_text("not a sample")  # other files are ignored
    train = registry.build("folder", split="train", root=str(root))
    test = registry.build("folder", split="test", root=str(root))
    assert isinstance(train, Folder) and len(train) + len(test) == 12 and len(test) == 2
    assert train.num_classes == 4 and train.eval_split == "test" and test.eval_split is None
    assert train.specs == {"imu": ("float32", (6,)), "cam": ("uint8", (1, 8, 8))}
    times = [train.sample(i).meta["time"] for i in range(len(train))]
    assert times == sorted(times)  # the data set's order is the files' time
    for i in range(len(train)):
        s = train.sample(i)
        with np.load(root / s.meta["path"]) as f:
            np.testing.assert_allclose(s.tensors["imu"], f["imu"].astype(np.float32))
            np.testing.assert_array_equal(s.tensors["cam"], f["cam"])
            assert s.label == int(f["label"]) == train.labels()[i] and s.meta["shard"] == str(f["device"])
        assert s.tensors["imu"].dtype == np.float32 and s.tensors["imu"].flags.c_contiguous and s.tensors["cam"].dtype == np.uint8
    assert str(train.schema()["imu"].shape) == "(-1, 6)"
    # device-sim's own path: natural sharding by each file's device, the ordered scenario, the test split held out for eval
    args = cli.build_parser().parse_args(["run", "--dataset", "folder", "--root", str(root), "--devices", "3", "--scenario", "ordered"])
    raw, dataset, order, owner = cli._training_data(args)
    assert order.indices.tolist() == list(range(len(train)))
    for k in range(3):
        streamed = list(shard(dataset, order, k, 3, None, owner=owner))
        assert streamed and {s.meta["shard"] for s in streamed} == {f"watch-{k}"}
    split, held, eval_order = cli.eval_data(args, raw)
    assert split == "test" and len(eval_order.indices) == 2


def test_a_folder_without_optional_fields(tmp_path):
    root = tmp_path / "plain"
    root.mkdir()
    for i in range(5):
        np.savez(root / f"{i}.npz", accel=np.ones((10, 3), np.float32) * i, label=np.int64(i % 2))
    ds = Folder(root=str(root))
    assert len(ds) == 5 and ds.shards() is None and ds.eval_split is None
    assert [int(ds.sample(i).tensors["accel"][0, 0]) for i in range(5)] == [0, 1, 2, 3, 4]  # order of the file names
    with pytest.raises(ValueError, match=r"^folder: no file of split 'test' under .* \(splits found: train\)$"):
        Folder(split="test", root=str(root))


def test_corruption_follows_the_rank_of_any_named_modality(tmp_path):
    ds = Folder(root=str(write_folder(tmp_path / "c", with_test=False)))
    frames = Corrupted(ds, 1.0, "degrade", "cam", seed=3)
    s, raw = frames.sample(0), ds.sample(0)
    v = raw.tensors["cam"].astype(np.float32)
    rng = np.random.default_rng([3, 0xC1, 0])
    want = _block_average(v, DEGRADE_BLOCK_BY_LAYOUT["spatial"], (2, 3)) + rng.standard_normal(v.shape).astype(np.float32) * float(v.std())
    np.testing.assert_allclose(s.tensors["cam"], want, rtol=1e-5, atol=1e-4)
    series = Corrupted(ds, 1.0, "degrade", "imu", strength=0.0, seed=3).sample(0)
    np.testing.assert_allclose(series.tensors["imu"], _block_average(raw.tensors["imu"], 4, (0,)), rtol=1e-6)
    np.testing.assert_array_equal(series.tensors["cam"], raw.tensors["cam"])


def _bad(root, name, **arrays):
    good = {"imu": np.zeros((5, 3), np.float32), "label": 1}
    root.mkdir(parents=True, exist_ok=True)
    np.savez(root / "a_good.npz", **good)
    np.savez(root / name, **{**good, **arrays})


def _missing_modality(root):
    root.mkdir(parents=True)
    np.savez(root / "a_good.npz", imu=np.zeros((5, 3), np.float32), gps=np.zeros((5, 2), np.float32), label=1)
    np.savez(root / "b_bad.npz", imu=np.zeros((5, 3), np.float32), label=1)


def _not_npz(root):
    _bad(root, "b_fine.npz")
    (root / "b_bad.npz").write_bytes(b"this is not a zip archive")


def _object_array(root):
    _bad(root, "b_fine.npz")
    np.savez(root / "b_bad.npz", imu=np.array([None, 1], dtype=object), label=1)


BAD = {
    "missing-modality": (_missing_modality, r"b_bad\.npz: missing modality gps \(the other files, e\.g\. a_good\.npz, hold gps, imu\)"),
    "channels": (lambda r: _bad(r, "b_bad.npz", imu=np.zeros((5, 4), np.float32)),
                 r"b_bad\.npz: modality imu has shape \(5, 4\): axes after the first must be \(3,\) as in a_good\.npz \(3 channels, not 4\)"),
    "negative-label": (lambda r: _bad(r, "b_bad.npz", label=-1), r"b_bad\.npz: label must be a non-negative integer \(got -1, int64\)"),
    "float-label": (lambda r: _bad(r, "b_bad.npz", label=2.0), r"b_bad\.npz: label must be a non-negative integer \(got 2\.0, float64\)"),
    "no-label": (lambda r: (_bad(r, "b_fine.npz"), np.savez(r / "b_bad.npz", imu=np.zeros((5, 3)))), r"b_bad\.npz: no label array"),
    "non-finite": (lambda r: _bad(r, "b_bad.npz", imu=np.array([[0, np.nan, 0]] * 5, np.float32)),
                   r"b_bad\.npz: modality imu holds 5 non-finite values \(NaN or inf\)"),
    "not-npz": (_not_npz, r"b_bad\.npz: not an npz file \(not a zip archive"),
    "pickled": (_object_array, r"b_bad\.npz: an array holds Python objects \(pickled\), which are not loaded"),
    "bad-split": (lambda r: _bad(r, "b_bad.npz", split="holdout"), r"b_bad\.npz: split 'holdout' is not one of train, val, test"),
}


@pytest.mark.parametrize("kind", sorted(BAD))
def test_each_bad_folder_is_one_line_naming_the_file(kind, tmp_path, capsys):
    make, message = BAD[kind]
    root = tmp_path / kind
    make(root)
    with pytest.raises(ValueError) as err:
        scan(root)
    text = str(err.value)
    assert "\n" not in text and text.startswith("folder: b_bad.npz: ")
    assert re.search(message, text), text
    with pytest.raises(SystemExit) as stop:  # device-sim inspect: the same line, exit 2
        cli.main(["inspect", "folder", "--root", str(root)])
    assert stop.value.code == 2 and capsys.readouterr().err.strip().splitlines() == [f"device-sim: {text}"]


def test_device_sim_run_exits_2_with_the_line_and_no_traceback(tmp_path):
    root = tmp_path / "bad"
    _bad(root, "b_bad.npz", imu=np.zeros((5, 4), np.float32))
    r = subprocess.run([sys.executable, "-m", "device_sim.cli", "run", "--dataset", "folder", "--root", str(root), "--no-progress",
                        "--endpoint", "tcp://127.0.0.1:9"], capture_output=True, text=True, cwd=str(ROOT),
                       env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.strip().splitlines() == [
        "device-sim: folder: b_bad.npz: modality imu has shape (5, 4): axes after the first must be (3,) as in a_good.npz (3 channels, not 4)"]
    r = subprocess.run([sys.executable, "-m", "device_sim.cli", "run", "--dataset", "folder", "--no-progress"], capture_output=True,
                       text=True, cwd=str(ROOT), env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        "device-sim: folder: no --root given; point it at your folder of .npz files (see docs/datasets.md, 'Your own data')"]
