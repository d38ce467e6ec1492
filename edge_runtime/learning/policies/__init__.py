"""Selection policies: turn per-sample scores of a micro-batch into the chosen subset.

One file per policy: its ``select`` (admission) or ``plan`` (replay), optionally its own ``loss``
term, and ``Settings``, its settings model (defined in :mod:`edge_runtime.core.policy_settings`, so
that a configuration validates without torch).  Policies are found by name in
:data:`~edge_runtime.learning.policies.registry.SELECTION` (admission, also :data:`REGISTRY`) and
:data:`~edge_runtime.learning.policies.registry.REPLAY` (replay, also :data:`REPLAY_REGISTRY`), imported
lazily; ``registry.py`` says how to add one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

from edge_runtime.learning.policies.registry import REPLAY, SELECTION, build

if TYPE_CHECKING:
    from edge_runtime.core.policy_settings import ReplaySettings, SelectionSettings
    from edge_runtime.learning.policies.base import ReplayPolicy, SelectionPolicy

REGISTRY = SELECTION
REPLAY_REGISTRY = REPLAY


def _checked(policy, modalities: Sequence[str] | None):
    check = getattr(policy, "check_modalities", None)  # a plug-in need not derive from the base classes
    if modalities is not None and check is not None:
        check(tuple(modalities))
    return policy


def build_policy(cfg: "SelectionSettings", seed: int = 0, modalities: Sequence[str] | None = None) -> "SelectionPolicy":
    """Instantiate the admission policy named ``cfg.policy`` with its settings.

    ``modalities`` (the model's modality names, in order): checked now by the policy's
    ``check_modalities``, a ValueError when the policy cannot work with them (e.g. ``mbs`` with one
    modality, ``bmmal`` with more than 4); None: checked at first use."""
    return _checked(build("selection", cfg, seed=seed), modalities)


def build_replay(cfg: "ReplaySettings", replay_batch_size: int, seed: int = 0,
                 modalities: Sequence[str] | None = None) -> "ReplayPolicy":
    """Instantiate the replay policy named ``cfg.policy`` with its settings (``modalities``: as :func:`build_policy`)."""
    return _checked(build("replay", cfg, replay_batch_size, seed=seed), modalities)
