"""Policy names -> policy classes (imported on first use), and :func:`build`.

The settings of every policy are validated without this module: their pydantic models and the
name -> model tables live in :mod:`edge_runtime.core.policy_settings` (no torch), which
:mod:`edge_runtime.core.config` uses.  Here each name maps to the policy class as a
``"module:Class"`` string, imported only when a policy of that name is built.

Adding a built-in policy ``x``:

1. its settings model in :mod:`edge_runtime.core.policy_settings`: ``class XSettings`` deriving from
   ``SelectionSettings`` / ``KeepRatioSettings`` (admission) or ``ReplaySettings`` (replay), with
   ``policy: Literal["x"] = "x"`` and its own keys, plus the line ``"x": XSettings`` in that module's
   ``SELECTION`` or ``REPLAY``;
2. the policy class in its own file under ``admission/`` or ``replay/``, with ``Settings = XSettings``
   and the constructor ``XPolicy(settings, seed=...)`` (replay: ``(settings, replay_batch_size, seed=...)``);
3. the line ``"x": "edge_runtime.learning.policies.admission.x:XPolicy"`` in :data:`SELECTION` or
   :data:`REPLAY` below.

``tests/learning/test_policies.py`` checks that both tables name the same policies and that each
class's ``Settings`` is the model registered for its name.  A plug-in (or a test) whose class and
settings live elsewhere calls :func:`register` (or uses :func:`registered`): the class and its
``Settings`` are registered together.
"""

from __future__ import annotations

import contextlib
import importlib
from typing import Any, Iterator

from edge_runtime.core import policy_settings
from edge_runtime.core.policy_settings import KeepRatioSettings, PolicySettings, ReplaySettings, SelectionSettings, parse_settings, settings_model

__all__ = ["SELECTION", "REPLAY", "PolicySettings", "SelectionSettings", "KeepRatioSettings", "ReplaySettings", "names",
           "policy_class", "settings_model", "register", "registered", "parse_settings", "build"]

#: Admission policies: which incoming samples of a micro-batch are trained on and offered to the buffer.
SELECTION: dict[str, str | type] = {
    "all": "edge_runtime.learning.policies.admission.all:KeepAllPolicy",
    "random": "edge_runtime.learning.policies.admission.random:RandomPolicy",
    "mbs": "edge_runtime.learning.policies.admission.mbs:MBSPolicy",
    "mbs-pooled": "edge_runtime.learning.policies.admission.mbs_pooled:MBSPooledPolicy",
    "mbs-class": "edge_runtime.learning.policies.admission.mbs_class:MBSClassPolicy",
    "mbs-gap": "edge_runtime.learning.policies.admission.mbs_gap:MBSGapPolicy",
    "el2n": "edge_runtime.learning.policies.admission.el2n:EL2NPolicy",
    "grand": "edge_runtime.learning.policies.admission.grand:GraNdPolicy",
    "bmmal": "edge_runtime.learning.policies.admission.bmmal:BMMALPolicy",
}

#: Replay policies: how each update's replay batch is drawn from the buffer.
REPLAY: dict[str, str | type] = {
    "uniform": "edge_runtime.learning.policies.replay.uniform:UniformReplay",
    "bss": "edge_runtime.learning.policies.replay.bss:BSSReplay",
    "dus": "edge_runtime.learning.policies.replay.dus:DUSReplay",
}

TABLES: dict[str, dict[str, str | type]] = {"selection": SELECTION, "replay": REPLAY}


def _table(kind: str) -> dict[str, str | type]:
    try:
        return TABLES[kind]
    except KeyError:
        raise ValueError(f"unknown policy kind {kind!r}; choose one of {sorted(TABLES)}") from None


def _resolve(target: str | type) -> type:
    if isinstance(target, str):
        module, _, attr = target.partition(":")
        return getattr(importlib.import_module(module), attr)
    return target


def names(kind: str) -> list[str]:
    """The registered policy names of ``kind`` ("selection" or "replay"), sorted."""
    return sorted(_table(kind))


def policy_class(kind: str, name: str) -> type:
    """The class registered as ``name`` (imported on first use); ValueError listing the choices."""
    table = _table(kind)
    try:
        target = table[name]
    except KeyError:
        raise ValueError(f"{kind}.policy: unknown policy {name!r}; choose one of {sorted(table)}") from None
    return _resolve(target)


def register(kind: str, name: str, cls: type | str) -> None:
    """Register (or replace) policy ``name`` of ``kind``: a class, or ``"module:Class"`` (imported now).

    The class's ``Settings`` becomes the settings model of ``name`` in
    :mod:`edge_runtime.core.policy_settings`; TypeError when it has none of the right base.
    """
    table = _table(kind)
    policy_settings.register_settings(kind, name, getattr(_resolve(cls), "Settings", None))
    table[name] = cls


@contextlib.contextmanager
def registered(kind: str, name: str, cls: type | str) -> Iterator[None]:
    """Register ``name`` for the duration of a ``with`` block (tests); the previous entry comes back after."""
    classes, models = _table(kind), policy_settings.TABLES[kind]
    before = classes.get(name), models.get(name)
    register(kind, name, cls)
    try:
        yield
    finally:
        for table, entry in zip((classes, models), before):
            if entry is None:
                table.pop(name, None)
            else:
                table[name] = entry


def build(kind: str, settings: PolicySettings, *args: Any, **kwargs: Any) -> Any:
    """An instance of the policy ``settings.policy`` of ``kind``, built from its settings."""
    return policy_class(kind, settings.policy)(settings, *args, **kwargs)
