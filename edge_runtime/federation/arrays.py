"""What federation shares, by name, and how prototypes are merged (numpy only, no torch, no flwr).

A node shares ``model.<state_dict key>`` (every floating-point entry of the model's state dict),
``proto.<modality>`` (the EMA class prototypes, ``num_classes x embed_dim``) and ``proto.counts``
(how many labelled training samples of each class the node has learned from, int64). Nothing else:
no sample, no buffer item, no optimiser state, no teacher.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

MODEL_PREFIX = "model."
PROTO_PREFIX = "proto."
COUNTS = "proto.counts"

Spec = dict[str, tuple[str, tuple[int, ...]]]


def split(arrays: Mapping[str, np.ndarray]) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(model weights, prototypes and counts) of one message's arrays."""
    weights = {k: v for k, v in arrays.items() if k.startswith(MODEL_PREFIX)}
    protos = {k: v for k, v in arrays.items() if k.startswith(PROTO_PREFIX)}
    return weights, protos


def spec_of(arrays: Mapping[str, np.ndarray]) -> Spec:
    return {k: (np.asarray(v).dtype.name, tuple(np.asarray(v).shape)) for k, v in arrays.items()}


def mismatch(expected: Spec, arrays: Mapping[str, np.ndarray]) -> str | None:
    """Why ``arrays`` cannot be loaded into a model of spec ``expected`` (names, dtypes, shapes), or None."""
    missing = sorted(set(expected) - set(arrays))
    if missing:
        return f"array {missing[0]!r} is missing ({len(missing)} missing in all); a put must carry every array a get returns"
    extra = sorted(set(arrays) - set(expected))
    if extra:
        return f"array {extra[0]!r} is not part of this node's model ({len(extra)} unknown in all)"
    for name, (dtype, shape) in expected.items():
        got = np.asarray(arrays[name])
        if got.dtype.name != dtype:
            return f"array {name!r} has dtype {got.dtype.name}, this node's model has {dtype}"
        if tuple(got.shape) != shape:
            return f"array {name!r} has shape {list(got.shape)}, this node's model has {list(shape)}"
        if got.dtype.kind == "f" and not np.isfinite(got).all():
            return f"array {name!r} holds NaN or Inf"
    return None


def merge_prototypes(parts: Sequence[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Per-class merge of the nodes' prototypes, weighted by each node's per-class counts.

    ``c_k = sum_i n_ik c_ik / sum_i n_ik`` for every modality; a class that only one node has
    seen keeps that node's prototype, a class nobody has seen stays zero with count 0.
    """
    if not parts:
        raise ValueError("merge_prototypes needs at least one node's prototypes")
    counts = np.stack([np.asarray(p[COUNTS], dtype=np.int64) for p in parts])  # nodes x classes
    total = counts.sum(axis=0)
    out: dict[str, np.ndarray] = {COUNTS: total.astype(np.int64)}
    for name in sorted(k for k in parts[0] if k != COUNTS):
        stacked = np.stack([np.asarray(p[name], dtype=np.float64) for p in parts])  # nodes x classes x dim
        num = (counts[:, :, None] * stacked).sum(axis=0)
        merged = np.where(total[:, None] > 0, num / np.maximum(total, 1)[:, None], 0.0)
        out[name] = merged.astype(np.asarray(parts[0][name]).dtype)
    return out


def nbytes(arrays: Mapping[str, np.ndarray]) -> int:
    return int(sum(np.asarray(v).nbytes for v in arrays.values()))
