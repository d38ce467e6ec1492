"""Selection policies: turn per-sample scores of a micro-batch into the chosen subset.

One file per policy; a policy is found by name in :data:`REGISTRY` ("module:Class", imported
lazily so that validating a config does not import torch models); replay policies in
:data:`REPLAY_REGISTRY`.  Adding a policy is one new file in this package plus one line here.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from edge_runtime.config import ReplayConfig, SelectionConfig
    from edge_runtime.selection.base import ReplayPolicy, SelectionPolicy


#: Admission policies: which incoming samples of a micro-batch are trained on and offered to the buffer.
REGISTRY: dict[str, str] = {
    "all": "edge_runtime.selection.all:KeepAllPolicy",
    "random": "edge_runtime.selection.random:RandomPolicy",
    "mbs": "edge_runtime.selection.mbs:MBSPolicy",
    "el2n": "edge_runtime.selection.el2n:EL2NPolicy",
    "grand": "edge_runtime.selection.grand:GraNdPolicy",
    "bmmal": "edge_runtime.selection.bmmal:BMMALPolicy",
}

#: Replay policies: how each update's replay batch is drawn from the buffer.
REPLAY_REGISTRY: dict[str, str] = {
    "uniform": "edge_runtime.selection.uniform:UniformReplay",
    "bss": "edge_runtime.selection.bss:BSSReplay",
    "dus": "edge_runtime.selection.dus:DUSReplay",
}


def _load(target: str) -> type:
    module, _, cls = target.partition(":")
    return getattr(importlib.import_module(module), cls)


def build_policy(cfg: "SelectionConfig", seed: int = 0) -> "SelectionPolicy":
    """Instantiate the policy named ``cfg.policy`` with its settings."""
    try:
        target = REGISTRY[cfg.policy]
    except KeyError:
        raise ValueError(f"selection.policy: unknown policy {cfg.policy!r}; choose one of {sorted(REGISTRY)}") from None
    return _load(target)(cfg, seed=seed)


def build_replay(cfg: "ReplayConfig", replay_batch_size: int, seed: int = 0) -> "ReplayPolicy":
    """Instantiate the replay policy named ``cfg.policy``."""
    try:
        target = REPLAY_REGISTRY[cfg.policy]
    except KeyError:
        raise ValueError(f"replay.policy: unknown policy {cfg.policy!r}; choose one of {sorted(REPLAY_REGISTRY)}") from None
    return _load(target)(cfg, replay_batch_size, seed=seed)
