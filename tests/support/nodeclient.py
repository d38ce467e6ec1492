"""A hand-written protocol-v1 device for the node tests (pyzmq + msgpack + numpy, not ``edge_runtime.wire``)."""

from __future__ import annotations

import msgpack
import numpy as np
import zmq

SCHEMA_16 = {"audio": {"dtype": "float32", "shape": [-1, 13]}, "video": {"dtype": "float32", "shape": [-1, 1, 16, 16]}}


class Device:
    """One DEALER connection; ``rid`` is its routing id (bytes, so that non-UTF-8 ids can be tried)."""

    def __init__(self, ctx: zmq.Context, endpoint: str, rid: bytes | str, keys: tuple | None = None) -> None:
        self.rid = rid.encode() if isinstance(rid, str) else rid
        self.sock = ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.ROUTING_ID, self.rid)
        self.sock.setsockopt(zmq.LINGER, 0)
        if keys:
            self.sock.curve_publickey, self.sock.curve_secretkey, self.sock.curve_serverkey = keys
        self.sock.connect(endpoint)

    def send(self, header: dict, *frames: bytes) -> None:
        self.sock.send_multipart([msgpack.packb(header), *frames])

    def recv(self, timeout_ms: int = 20000) -> dict:
        if not self.sock.poll(timeout_ms):
            raise TimeoutError(f"no answer from the node to {self.rid!r}")
        return msgpack.unpackb(self.sock.recv_multipart()[0])

    def silent(self, timeout_ms: int) -> bool:
        """True when nothing arrives within ``timeout_ms``."""
        return not self.sock.poll(timeout_ms)

    def hello(self, schema: dict | None = None, device: str | None = None) -> dict:
        self.send({"v": 1, "type": "hello", "device": device or self.rid.decode("utf-8", "replace"),
                   "schema": SCHEMA_16 if schema is None else schema})
        return self.recv()

    def sample(self, seq: int, label=1, audio: np.ndarray | None = None, video: np.ndarray | None = None,
               split: str = "train") -> None:
        audio = np.ones((5, 13), "<f4") if audio is None else audio
        video = np.ones((2, 1, 16, 16), "<f4") if video is None else video
        self.send({"v": 1, "type": "sample", "seq": seq, "ts": 0.0, "label": label, "split": split,
                   "tensors": [{"name": "audio", "dtype": str(audio.dtype), "shape": list(audio.shape)},
                               {"name": "video", "dtype": str(video.dtype), "shape": list(video.shape)}]},
                  audio.tobytes(), video.tobytes())

    def acks(self, want: set[int], timeout_ms: int = 20000) -> dict[int, str]:
        """Verdicts of ``want`` (errors for those seqs are returned as ``error:<code>``)."""
        got: dict[int, str] = {}
        while not want <= set(got):
            msg = self.recv(timeout_ms)
            if msg["type"] == "ack":
                for seq, status in msg["acks"]:
                    got.setdefault(seq, status)
            elif msg["type"] == "error" and msg["seq"] is not None:
                got.setdefault(msg["seq"], f"error:{msg['code']}")
            else:
                raise AssertionError(f"unexpected {msg}")
        return got

    def close(self) -> None:
        self.sock.close(0)


def stream(dev: Device, seqs: range, window: int = 16, **kw) -> dict[int, str]:
    """Send ``seqs`` keeping at most ``window`` unacknowledged; returns every verdict."""
    out: dict[int, str] = {}
    seqs = list(seqs)
    for i in range(0, len(seqs), window):
        chunk = seqs[i : i + window]
        for seq in chunk:
            dev.sample(seq, label=seq % 10, **kw)
        out.update(dev.acks(set(chunk)))
    return out
