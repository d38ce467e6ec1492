"""Streams of samples for tests."""

from __future__ import annotations


def stream(dataset, order, device="test"):
    """Materialise the samples of ``order`` (indices) with consecutive seq numbers."""
    out = []
    for seq, i in enumerate(order):
        s = dataset.sample(int(i))
        s.device, s.seq = device, seq
        out.append(s)
    return out
