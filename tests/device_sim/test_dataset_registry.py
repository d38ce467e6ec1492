"""A data set defined in this file, registered at run time, streams through the registry and through
``device-sim``'s own code path (parser, fleet data, a real node): adding a data set needs no edit
anywhere else."""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import sys
from typing import ClassVar

import numpy as np
import pytest

from device_sim import cli
from device_sim.datasets import registry
from device_sim.datasets.base import Dataset, Option
from device_sim.fleet import shard
from edge_runtime.core.sample import Sample, TensorSpec
from tests.support.nodeproc import ROOT, NodeProcess


class ToyDataset(Dataset):
    """``size`` samples whose tensors are filled with their label; ``audio[0, 0]`` holds the index."""

    name = "toy"
    title = "toy"
    splits: ClassVar[tuple[str, ...]] = ("train", "test")
    cli_options: ClassVar[tuple[Option, ...]] = (Option("--toy-classes", "classes of the toy data set", default=3, type=int, metavar="K"),)

    def __init__(self, split: str = "train", seed: int = 0, toy_classes: int = 3, size: int = 24) -> None:
        if split not in self.splits:
            raise ValueError(f"toy: no split {split!r}")
        self.split, self.seed, self.num_classes = split, seed, toy_classes
        self._labels = np.random.default_rng([seed, 0 if split == "train" else 1]).permutation(np.arange(size) % toy_classes)

    def __len__(self) -> int:
        return len(self._labels)

    def labels(self) -> np.ndarray:
        return self._labels.copy()

    def sample(self, index: int, split: str = "train") -> Sample:
        if not 0 <= index < len(self):
            raise IndexError(f"toy: index {index} out of range")
        label = int(self._labels[index])
        audio = np.full((3 + index % 4, 13), float(label), dtype=np.float32)
        audio[0, 0] = index
        video = np.full((2, 1, 16, 16), float(label), dtype=np.float32)
        return Sample({"audio": audio, "video": video}, label, split=split, device=self.name, seq=index, meta={"index": index})


class NeedsFolder(ToyDataset):
    """A toy data set that cannot be built without ``--toy-root``."""

    cli_options: ClassVar[tuple[Option, ...]] = (Option("--toy-root", "folder of the toy copy", required=True, missing="make one"),)

    def __init__(self, split: str = "train", seed: int = 0, toy_root: str = "") -> None:
        super().__init__(split, seed)
        self.toy_root = toy_root


def test_registry_builds_and_streams_a_registered_data_set():
    assert "toy" not in registry.names()
    with registry.registered("toy", ToyDataset):
        assert registry.names()[-1] == "toy" and registry.names()[0] == "synthetic"
        ds = registry.build("toy", split="test", seed=2, toy_classes=4)
        assert isinstance(ds, ToyDataset) and ds.split == "test" and ds.num_classes == 4 and len(ds) == 24
        streamed = list(ds)
        assert [s.label for s in streamed] == ds.labels().tolist()
        assert [s.meta["index"] for s in streamed] == [int(s.tensors["audio"][0, 0]) for s in streamed] == list(range(24))
        assert ds[-1].meta["index"] == 23
        assert ds.schema() == {"audio": TensorSpec("float32", (-1, 13)), "video": TensorSpec("float32", (-1, 1, 16, 16))}
        # From a bag of command-line values, only the common options and its own are passed on.
        built = registry.build_from("toy", {"split": "train", "seed": 1, "samples": 5, "toy_classes": 2, "root": "/x", "send": "raw"})
        assert built.num_classes == 2 and built.seed == 1 and len(built) == 24
        assert "toy" in registry.availability() and registry.availability()["toy"][0]
        with pytest.raises(ValueError, match=r"unknown data set 'toys'; choose one of .*\btoy\b"):
            registry.build("toys")
    assert "toy" not in registry.names()


def test_cli_parser_and_fleet_data_take_a_registered_data_set(capsys):
    with registry.registered("toy", ToyDataset):
        with pytest.raises(SystemExit):
            cli.build_parser().parse_args(["run", "--help"])
        help_text = capsys.readouterr().out
        choices = set(re.search(r"--dataset \{([^}]*)\}", help_text).group(1).split(","))
        assert choices == {"synthetic", "avdigits", "cremad", "ave", "watch", "folder", "toy"}
        assert "--toy-classes K" in help_text and "toy: classes of the toy data set" in re.sub(r"\s+", " ", help_text)

        args = cli.build_parser().parse_args(["run", "--dataset", "toy", "--toy-classes", "4", "--split", "test", "--seed", "3",
                                              "--samples", "10", "--devices", "3", "--scenario", "class-incremental"])
        dataset, order, owner = cli.fleet_data(args)
        assert isinstance(dataset, ToyDataset) and (dataset.num_classes, dataset.split, dataset.seed) == (4, "test", 3)
        assert len(order.indices) == 10  # --samples cuts the stream of a data set that ignores it
        streamed = [s for k in range(3) for s in shard(dataset, order, k, 3, None, owner=owner)]
        assert sorted(s.meta["index"] for s in streamed) == sorted(order.indices.tolist())
        assert all(s.label == dataset.labels()[s.meta["index"]] for s in streamed)

        assert cli.main(["inspect", "toy", "-n", "6", "--toy-classes", "2"]) == 0
        shown = json.loads(capsys.readouterr().out)
        assert shown["dataset"] == "toy" and shown["size"] == 24 and set(shown["labels"]) == {"0", "1"}
        assert shown["tensors"]["video"] == {"dtype": "float32", "shape": [2, 1, 16, 16]}


@pytest.mark.slow
def test_cli_run_streams_a_registered_data_set_to_a_real_node(tmp_path):
    node = NodeProcess(tmp_path).start()
    out = tmp_path / "fleet.json"
    try:
        with registry.registered("toy", ToyDataset):
            rc = cli.main(["run", "--endpoint", node.endpoint, "--dataset", "toy", "--devices", "2", "--scenario", "iid",
                           "--no-progress", "--summary", str(out)])
        assert rc == 0
        assert node.stop() == 0
    finally:
        node.kill()
    totals = json.loads(out.read_text())["totals"]
    assert totals["complete"] and totals["samples"] == totals["decided"] == 24
    with sqlite3.connect(node.state_dir / "state.db") as db:
        rows = db.execute("SELECT device, seq, verdict FROM verdicts").fetchall()
    assert len(rows) == 24 and {d for d, _, _ in rows} == {"uav-0", "uav-1"}
    assert not any(v.startswith("invalid") for _, _, v in rows)


def test_declared_options_required_conflicting_and_wrong_classes(capsys):
    with registry.registered("toy", NeedsFolder):
        with pytest.raises(ValueError, match="^toy: no --toy-root given; make one$"):
            registry.build("toy")
        assert registry.build("toy", toy_root="/data/toy").toy_root == "/data/toy"
        with pytest.raises(SystemExit) as stop:
            cli.main(["inspect", "toy"])
        assert stop.value.code == 2 and "device-sim: toy: no --toy-root given; make one" in capsys.readouterr().err

    class OtherRoot(ToyDataset):
        cli_options: ClassVar[tuple[Option, ...]] = (Option("--root", "a root that is a switch", switch=True),)

    with registry.registered("other", OtherRoot):
        with pytest.raises(ValueError, match="data sets cremad and other declare --root differently"):
            registry.options()
    with registry.registered("plain", dict):
        with pytest.raises(TypeError, match="not a subclass of device_sim.datasets.base.Dataset"):
            registry.build("plain")
    with pytest.raises(ValueError, match="starts with '--'"):
        Option("-r", "short flags are not options")


def test_listing_names_and_building_the_parser_import_no_heavy_module():
    code = (
        "import sys\n"
        "from device_sim.datasets import registry\n"
        "registry.names()\n"
        "loaded = [m for m in sys.modules if m.startswith('device_sim.datasets.') and m != 'device_sim.datasets.registry']\n"
        "assert not loaded, loaded\n"
        "import device_sim.cli\n"
        "device_sim.cli.build_parser()\n"
        "heavy = [m for m in ('torch', 'sklearn', 'av', 'PIL', 'torchaudio') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=str(ROOT), timeout=120)
    assert r.returncode == 0, r.stderr
