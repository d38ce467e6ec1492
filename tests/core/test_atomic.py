"""atomic_write and friends on a real file system: replacement, failures that leave the old file, temp placement."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path
from typing import BinaryIO

import pytest

from edge_runtime.core.atomic import atomic_write, atomic_write_bytes, atomic_write_json, atomic_write_text, fsync_dir


class WriterFailed(Exception):
    """Raised by a write callback half way through its output."""


def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_existing_file_is_replaced_and_nothing_else_is_left(tmp_path):
    target = tmp_path / "state.bin"
    target.write_bytes(b"old content, longer than the new one")
    assert atomic_write_bytes(target, b"new") == target
    assert target.read_bytes() == b"new"
    assert _names(tmp_path) == ["state.bin"]


def test_a_missing_file_is_created(tmp_path):
    target = tmp_path / "fresh.txt"
    atomic_write_text(target, "caf\u00e9\n")
    assert target.read_bytes() == "caf\u00e9\n".encode("utf-8")
    assert _names(tmp_path) == ["fresh.txt"]


def test_json_is_written_as_json_dumps_writes_it(tmp_path):
    obj = {"round": 3, "counts": [1, 2], "name": "n\u00f6de", "none": None}
    atomic_write_json(tmp_path / "a.json", obj)
    atomic_write_json(tmp_path / "b.json", obj, indent=None)
    assert (tmp_path / "a.json").read_text(encoding="utf-8") == json.dumps(obj, indent=1)
    assert (tmp_path / "b.json").read_text(encoding="utf-8") == json.dumps(obj)
    assert json.loads((tmp_path / "b.json").read_text(encoding="utf-8")) == obj


def test_writer_raising_mid_write_leaves_the_old_file_and_no_temp_file(tmp_path):
    target = tmp_path / "ckpt.pt"
    target.write_bytes(b"the good old checkpoint")

    def half(f: BinaryIO) -> None:
        f.write(b"half of a new ")
        f.flush()
        raise WriterFailed("disk pulled")

    with pytest.raises(WriterFailed, match="disk pulled"):
        atomic_write(target, half)
    assert target.read_bytes() == b"the good old checkpoint"
    assert _names(tmp_path) == ["ckpt.pt"]


def test_interrupt_during_the_write_also_cleans_up(tmp_path):
    """A KeyboardInterrupt (not an Exception) in the writer still removes the temp file."""
    target = tmp_path / "status.json"

    def interrupted(f: BinaryIO) -> None:
        f.write(b"{")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, interrupted)
    assert _names(tmp_path) == []


def test_a_full_disk_leaves_the_old_file_and_no_temp_file(tmp_path):
    """/dev/full answers writes with ENOSPC: the temp name is made a link to it, so the write really fails."""
    if not Path("/dev/full").exists():
        pytest.fail("this test needs /dev/full (Linux)")
    target = tmp_path / "federation.json"
    target.write_text('{"round": 1}')
    tmp = tmp_path / f".{target.name}.{os.getpid()}.tmp"  # the temp name atomic_write uses
    os.symlink("/dev/full", tmp)
    with pytest.raises(OSError) as info:
        atomic_write_bytes(target, b"x" * 65536)
    assert info.value.errno == errno.ENOSPC
    assert target.read_text() == '{"round": 1}'
    assert not os.path.lexists(tmp)
    assert _names(tmp_path) == ["federation.json"]


def test_the_temp_file_is_hidden_in_the_targets_folder_and_the_target_is_untouched_meanwhile(tmp_path):
    folder = tmp_path / "deep" / "er"
    folder.mkdir(parents=True)
    target = folder / "model.onnx"
    target.write_bytes(b"v1")
    seen: dict[str, object] = {}

    def spy(f: BinaryIO) -> None:
        temp = Path(f.name)
        seen.update(parent=temp.parent, name=temp.name, target_now=target.read_bytes(), listing=_names(folder))
        f.write(b"v2")

    atomic_write(target, spy)
    assert seen["parent"] == folder
    assert seen["name"] != target.name and str(seen["name"]).startswith(".") and target.name in str(seen["name"])
    assert seen["target_now"] == b"v1", "readers see the old file until the rename"
    assert seen["listing"] == sorted([target.name, str(seen["name"])])
    assert target.read_bytes() == b"v2" and _names(folder) == ["model.onnx"]


def test_fsync_dir_needs_an_existing_folder(tmp_path):
    fsync_dir(tmp_path)
    with pytest.raises(FileNotFoundError):
        fsync_dir(tmp_path / "missing")


def test_durable_false_skips_the_syncs_but_still_replaces_whole(tmp_path, monkeypatch):
    """status.json's mode: no fsync of file or folder, the same all-or-nothing replacement."""
    synced: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd)))
    target = tmp_path / "status.json"
    atomic_write_json(target, {"a": 1}, durable=False)
    assert synced == [] and json.loads(target.read_text()) == {"a": 1}
    with pytest.raises(WriterFailed):
        atomic_write(target, lambda f: (f.write(b"{\"a\""), (_ for _ in ()).throw(WriterFailed())), durable=False)
    assert json.loads(target.read_text()) == {"a": 1} and _names(tmp_path) == ["status.json"]
    atomic_write_json(target, {"a": 2})
    assert len(synced) == 2  # the default syncs the file and its folder
