"""Watch: the real smartwatch IMU recordings of the seglearn wheel, windowed, standardised on the
training subjects, split by subject, and sharded one subject per simulated device."""

from __future__ import annotations

import importlib.metadata

import numpy as np
import pytest

from device_sim import cli
from device_sim.datasets import registry
from device_sim.datasets.watch import HOP, WINDOW, Watch, npy_path
from device_sim.fleet import shard
from device_sim.scenario import Corrupted


@pytest.fixture(scope="module")
def raw():
    """The file read here directly, not through the data set."""
    return np.load(npy_path(), allow_pickle=True).item()


@pytest.fixture(scope="module")
def train():
    return Watch("train", seed=0)


@pytest.fixture(scope="module")
def test():
    return Watch("test", seed=0)


def _run_args(*extra: str):
    return cli.build_parser().parse_args(["run", "--dataset", "watch", *extra])


def test_window_count_is_the_direct_computation(raw, train, test):
    lengths = np.array([len(x) for x in raw["X"]])
    assert len(lengths) == 140 and lengths.min() >= WINDOW == 100 and HOP == 50
    assert len(train) + len(test) == sum((t - 100) // 50 + 1 for t in lengths) == 4677
    subjects = np.asarray(raw["subject"])
    for ds in (train, test):
        mine = np.isin(subjects, ds.shards())
        assert len(ds) == sum((t - 100) // 50 + 1 for t in lengths[mine])


def test_shapes_dtypes_labels_and_values_come_from_the_file(raw, train):
    assert registry.dataset_class("watch") is Watch and train.num_classes == 7
    assert set(train.labels().tolist()) == set(range(7))
    mean, std = train.mean, train.std
    for i in (0, 1, 17, len(train) - 1):
        s = train.sample(i)
        assert set(s.tensors) == {"accel", "gyro"}
        for name in ("accel", "gyro"):
            x = s.tensors[name]
            assert x.shape == (100, 3) and x.dtype == np.float32 and x.flags.c_contiguous
        rec, start = s.meta["recording"], s.meta["start"]
        assert s.meta["subject"] == s.meta["shard"] == int(raw["subject"][rec]) and s.label == int(raw["y"][rec])
        window = (np.asarray(raw["X"][rec])[start : start + 100] - mean) / std
        np.testing.assert_allclose(s.tensors["accel"], window[:, 0:3], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(s.tensors["gyro"], window[:, 3:6], rtol=1e-5, atol=1e-5)
    assert train.sample(1).meta["start"] == train.sample(0).meta["start"] + 50  # hop 50 within a recording


def test_standardisation_uses_the_training_subjects_only(raw, train, test):
    subjects = np.asarray(raw["subject"])
    assert sorted(set(train.shards().tolist())) == train.train_subjects
    steps = np.concatenate([np.asarray(x) for x, s in zip(raw["X"], subjects) if s in train.train_subjects])
    np.testing.assert_allclose(train.mean, steps.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(train.std, steps.std(axis=0), rtol=1e-12)
    everyone = np.concatenate([np.asarray(x) for x in raw["X"]])
    assert not np.allclose(train.mean, everyone.mean(axis=0), rtol=1e-3, atol=0)  # not the stats of all subjects
    np.testing.assert_array_equal(test.mean, train.mean)  # the test split is scaled with the training numbers
    np.testing.assert_array_equal(test.std, train.std)


def test_magnitudes_stay_small(train, test):
    for ds in (train, test):
        for name in ("accel", "gyro"):
            x = np.stack([ds.sample(i).tensors[name] for i in range(0, len(ds), 7)])
            assert np.isfinite(x).all() and np.abs(x).max() < 100.0  # far below 1e4
    accel = np.stack([train.sample(i).tensors["accel"] for i in range(len(train))])
    assert np.allclose(accel.reshape(-1, 3).std(axis=0), 1.0, atol=0.1)


def test_test_subjects_are_held_out_and_chosen_by_seed():
    for seed in (0, 1, 2):
        train, test = Watch("train", seed=seed), Watch("test", seed=seed)
        tr, te = set(train.shards().tolist()), set(test.shards().tolist())
        assert len(te) == 2 and not tr & te and len(tr | te) == 10
        assert sorted(te) == train.test_subjects == Watch("test", seed=seed).test_subjects
    assert {tuple(Watch("test", seed=s).test_subjects) for s in range(6)} != {tuple(Watch("test", seed=0).test_subjects)}
    given = registry.build("watch", split="train", test_subjects="3,7")
    assert given.test_subjects == [3, 7] and not {3, 7} & set(given.shards().tolist())
    assert set(registry.build("watch", split="test", test_subjects="3,7").shards().tolist()) == {3, 7}
    with pytest.raises(ValueError, match="no subject 42"):
        Watch("train", test_subjects="3,42")
    with pytest.raises(ValueError, match="comma-separated subject ids"):
        Watch("train", test_subjects="three")


def test_missing_wheel_names_the_fix(monkeypatch):
    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", missing)
    with pytest.raises(FileNotFoundError, match=r"pip install seglearn==1\.2\.5"):
        npy_path()
    ok, why = Watch.available()
    assert not ok and "seglearn" in why


@pytest.mark.parametrize("devices", [8, 3, 10])
def test_natural_sharding_one_subject_per_device(devices, capsys):
    dataset, order, owner = cli.fleet_data(_run_args("--devices", str(devices), "--scenario", "iid"))
    subjects = dataset.shards()
    per_device = [sorted(set(subjects[order.indices[owner == k]].tolist())) for k in range(devices)]
    if devices <= 8:  # no subject is split between devices
        assert sorted(s for held in per_device for s in held) == sorted(set(subjects.tolist()))
    streamed = [s.meta["subject"] for k in range(devices) for s in shard(dataset, order, k, devices, None, owner=owner)]
    assert sorted(streamed) == sorted(subjects.tolist())  # every window once
    err = capsys.readouterr().err
    if devices == 8:
        assert all(len(held) == 1 for held in per_device) and err == ""
    elif devices == 3:  # whole subjects, dealt round-robin
        assert [len(held) for held in per_device] == [3, 3, 2] and "8 subjects over 3 devices" in err
    else:  # every device replays part of one subject; none idles
        assert all(len(held) == 1 for held in per_device) and all((owner == k).any() for k in range(devices))
        assert len({held[0] for held in per_device}) == 8 and "8 subjects over 10 devices" in err


def test_class_skew_and_dealt_sharding_still_deal_positions():
    dataset, order, owner = cli.fleet_data(_run_args("--devices", "4", "--sharding", "dealt", "--scenario", "iid"))
    assert np.array_equal(owner, np.arange(len(order.indices)) % 4)
    _, skewed_order, skewed = cli.fleet_data(_run_args("--devices", "4", "--class-skew", "1.0"))
    assert np.array_equal(skewed, dataset.labels()[skewed_order.indices] % 4)  # class c on device c mod 4, subjects mixed
    with pytest.raises(ValueError, match="needs --sharding dealt"):
        cli.fleet_data(_run_args("--sharding", "natural", "--class-skew", "0.5"))


def test_class_incremental_over_seven_classes():
    dataset, order, owner = cli.fleet_data(_run_args("--devices", "8", "--scenario", "class-incremental", "--classes-per-task", "2"))
    assert sorted(c for task in order.task_classes for c in task) == list(range(7)) and len(order.task_classes) == 4
    stream_labels = dataset.labels()[order.indices]
    for t, classes in enumerate(order.task_classes):
        assert set(stream_labels[order.task_of == t].tolist()) == set(classes)


def test_eval_split_defaults_to_the_held_out_subjects():
    args = _run_args("--devices", "8")
    raw, dataset, order, owner = cli._training_data(args)
    split, held, eval_order = cli.eval_data(args, raw)
    assert split == "test" and sorted(set(held.shards().tolist())) == raw.test_subjects
    assert sorted(eval_order.indices.tolist()) == list(range(len(held)))
    assert all(s.split == "eval" for s in shard(held, eval_order, 0, 1, None, split="eval"))
    assert cli.eval_data(_run_args("--eval-split", "none"), raw) is None
    args = _run_args("--split", "test")
    assert cli.eval_data(args, cli._training_data(args)[0]) is None  # streaming the test split: nothing left to hold out
    with pytest.raises(ValueError, match="is the split streamed for training"):
        cli.eval_data(_run_args("--eval-split", "train"), raw)
    with pytest.raises(ValueError, match="synthetic is generated and has no splits"):
        cli.eval_data(cli.build_parser().parse_args(["run", "--eval-split", "test"]), None)


def test_corrupting_a_series_modality_by_name(train):
    cor = Corrupted(train, 0.5, "occlusion", "gyro", seed=1)
    i = int(np.flatnonzero(cor.corrupted())[0])
    got, clean = cor.sample(i), train.sample(i)
    np.testing.assert_array_equal(got.tensors["accel"], clean.tensors["accel"])
    zero_rows = np.flatnonzero(~got.tensors["gyro"].any(axis=1))
    assert len(zero_rows) == 50 and np.all(np.diff(zero_rows) == 1)  # a contiguous half of the time steps
    with pytest.raises(ValueError, match="hold accel, gyro"):
        Corrupted(train, 0.5, "noise", "video")


def test_cli_reports_a_bad_option_in_one_line(capsys):
    assert cli.main(["run", "--dataset", "watch", "--test-subjects", "3,42", "--no-progress", "--endpoint", "tcp://127.0.0.1:9"]) == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines() == ["device-sim: watch: --test-subjects: no subject 42; the subjects are 1, 2, 3, 4, 5, 6, 7, 8, 9, 10"]


@pytest.mark.slow
def test_run_sends_the_held_out_subjects_as_eval_to_a_real_node(tmp_path):
    import json
    import sqlite3

    from tests.support.nodeproc import NodeProcess

    node = NodeProcess(tmp_path, {"modalities": {"accel": {"kind": "series", "channels": 3}, "gyro": {"kind": "series", "channels": 3}},
                                  "model": {"num_classes": 7}}).start()
    out = tmp_path / "fleet.json"
    try:
        rc = cli.main(["run", "--endpoint", node.endpoint, "--dataset", "watch", "--devices", "8", "--scenario", "iid",
                       "--samples", "400", "--no-progress", "--summary", str(out)])
        assert rc == 0
        assert node.stop() == 0
    finally:
        node.kill()
    result = json.loads(out.read_text())
    assert result["totals"]["complete"] and result["totals"]["decided"] == 400
    assert result["eval"]["split"] == "test" and result["eval"]["totals"]["verdicts"] == {"eval": len(Watch("test", seed=0))}
    with sqlite3.connect(node.state_dir / "state.db") as db:
        rows = db.execute("SELECT device, verdict FROM verdicts").fetchall()
    assert {v for d, v in rows if d == "uav-eval-0"} == {"eval"} and sum(d == "uav-eval-0" for d, _ in rows) == 1014
    assert {d for d, v in rows if v == "eval"} == {"uav-eval-0"}  # training devices sent no eval sample
