"""Selection policies: turn per-sample scores of a micro-batch into the chosen subset.

One file per policy; a policy is found by name in :data:`REGISTRY` ("module:Class", imported
lazily so that validating a config does not import torch models).  Adding a policy is one new
file in this package plus one line here.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from edge_runtime.config import SelectionConfig
    from edge_runtime.selection.base import SelectionPolicy

REGISTRY: dict[str, str] = {
    "mbs": "edge_runtime.selection.mbs:MBSPolicy",
    "random": "edge_runtime.selection.random:RandomPolicy",
}


def build_policy(cfg: "SelectionConfig", seed: int = 0) -> "SelectionPolicy":
    """Instantiate the policy named ``cfg.policy`` with its settings."""
    try:
        target = REGISTRY[cfg.policy]
    except KeyError:
        raise ValueError(f"selection.policy: unknown policy {cfg.policy!r}; choose one of {sorted(REGISTRY)}") from None
    module, _, cls = target.partition(":")
    return getattr(importlib.import_module(module), cls)(cfg, seed=seed)
