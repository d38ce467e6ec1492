"""Selection policies: turn per-sample scores of a micro-batch into the chosen subset.

One file per policy: its settings model (``Settings``), its ``select`` (admission) or ``plan``
(replay), and optionally its own ``loss`` term.  Policies are found by name in
:data:`~edge_runtime.selection.registry.SELECTION` (admission, also :data:`REGISTRY`) and
:data:`~edge_runtime.selection.registry.REPLAY` (replay, also :data:`REPLAY_REGISTRY`), imported
lazily.  Adding a policy is one new file in this package plus one line in ``registry.py``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from edge_runtime.selection.registry import REPLAY, SELECTION, build

if TYPE_CHECKING:
    from edge_runtime.selection.base import ReplayPolicy, SelectionPolicy
    from edge_runtime.selection.registry import ReplaySettings, SelectionSettings

REGISTRY = SELECTION
REPLAY_REGISTRY = REPLAY


def build_policy(cfg: "SelectionSettings", seed: int = 0) -> "SelectionPolicy":
    """Instantiate the admission policy named ``cfg.policy`` with its settings."""
    return build("selection", cfg, seed=seed)


def build_replay(cfg: "ReplaySettings", replay_batch_size: int, seed: int = 0) -> "ReplayPolicy":
    """Instantiate the replay policy named ``cfg.policy`` with its settings."""
    return build("replay", cfg, replay_batch_size, seed=seed)
