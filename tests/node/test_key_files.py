"""Issue 24, G4: a half-copied key file in ``node.curve.allowed_keys_dir`` against a real node with CURVE.

An empty ``.key`` file (a copy just begun) and one whose public key is not ASCII are skipped with one
warning each, however many reloads see them; the device already allowed keeps being served, a new
connection of it is welcomed, and SIGTERM exits 0. Once the empty file holds a whole public key, a
device with that key is welcomed. (Before the fix the reload raised ValueError out of the IO loop: the
node stopped serving and exited 2.)
"""

from __future__ import annotations

import json
import time

import pytest
import zmq
import zmq.auth

from tests.support.nodeclient import Device, stream
from tests.support.nodeproc import NodeProcess

RELOAD_S = 0.2


def _hello(ctx: zmq.Context, endpoint: str, rid: str, keys: tuple, tries: int = 20) -> dict:
    """A hello on a new connection and its answer; retried while the node has not taken the key in yet."""
    for _ in range(tries):
        d = Device(ctx, endpoint, rid, keys)
        d.send({"v": 1, "type": "hello", "device": rid, "schema": {}})
        try:
            return d.recv(500) | {"_device": d}
        except TimeoutError:
            d.close()
    raise AssertionError(f"no answer to a hello of {rid}")


def _skip_warnings(log: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for line in log.splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if event.get("event") == "key_file_skipped":
            assert event["level"] == "warning" and event["path"] in event["msg"]
            out[event["path"]] = out.get(event["path"], 0) + 1
    return out


@pytest.mark.slow
def test_half_copied_key_files_are_skipped_once_warned_and_taken_in_when_whole(tmp_path):
    keys, allowed = tmp_path / "keys", tmp_path / "keys" / "allowed"
    allowed.mkdir(parents=True)
    zmq.auth.create_certificates(keys, "server")
    zmq.auth.create_certificates(allowed, "good")
    node = NodeProcess(tmp_path, {"node": {"credit": 8, "batch_size": 8, "curve": {
        "enabled": True, "server_secret_key": str(keys / "server.key_secret"), "allowed_keys_dir": str(allowed),
        "reload_s": RELOAD_S}}}).start()
    server_public, _ = zmq.auth.load_certificate(keys / "server.key")
    good_public, good_secret = zmq.auth.load_certificate(allowed / "good.key_secret")
    good_keys = (good_public, good_secret, server_public)
    new_public, new_secret = zmq.curve_keypair()
    ctx = zmq.Context()
    try:
        w = _hello(ctx, node.endpoint, "uav-good", good_keys)
        good = w.pop("_device")
        assert w["type"] == "welcome"
        assert set(stream(good, range(0, 8), window=8).values()) <= {"admitted", "trained", "skipped"}

        empty, garbled = allowed / "incoming.key", allowed / "garbled.key"
        empty.write_bytes(b"")  # a copy just begun
        garbled.write_bytes(b'metadata\ncurve\n    public-key = "\xc3\xa9\xff\xfe' + b"x" * 36 + b'"\n')  # not ASCII
        time.sleep(10 * RELOAD_S)  # many reloads see both files

        # the allowed device is still served: its open connection, and a new one
        assert set(stream(good, range(8, 16), window=8).values()) <= {"admitted", "trained", "skipped"}
        good.close()
        w = _hello(ctx, node.endpoint, "uav-good", good_keys, tries=1)
        assert w["type"] == "welcome", w
        w.pop("_device").close()
        assert node.proc.poll() is None, node.log()
        assert _skip_warnings(node.log()) == {str(empty): 1, str(garbled): 1}, node.log()

        # the copy completes: a whole certificate with a new device's public key
        certs = tmp_path / "new"
        certs.mkdir()
        made, _ = zmq.auth.create_certificates(certs, "newdev")
        text = open(made, "rb").read()
        assert new_public not in text
        text = text.replace(zmq.auth.load_certificate(made)[0], new_public)
        empty.write_bytes(text)
        w = _hello(ctx, node.endpoint, "uav-new", (new_public, new_secret, server_public))
        newdev = w.pop("_device")
        assert w["type"] == "welcome", w
        assert set(stream(newdev, range(0, 8), window=8).values()) <= {"admitted", "trained", "skipped"}
        newdev.close()
        assert _skip_warnings(node.log()) == {str(empty): 1, str(garbled): 1}  # the garbled file: still one warning
        assert node.stop() == 0, node.log()
    finally:
        ctx.destroy(linger=0)
        node.kill()
    assert "Traceback" not in node.log()
