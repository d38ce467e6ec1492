"""Policy names -> policy classes, and each policy's own settings model.

This module sits *below* :mod:`edge_runtime.config` in the import order: it imports pydantic,
importlib and the settings base classes (:mod:`edge_runtime.selection.settings`); the policy files
are imported by name, on first use.  A policy class lives in its own file and carries its settings
as a pydantic model ``Settings`` (a subclass of :class:`SelectionSettings` or :class:`ReplaySettings`);
config.py validates the ``selection`` and ``replay`` sections with :func:`parse_settings`, which
picks the model by the section's ``policy`` name (a union discriminated by the policy name, built
on demand so that only the named policy's file is imported).

Adding a policy is one file plus one line in :data:`SELECTION` or :data:`REPLAY`; a test (or a
plug-in) can add one at run time with :func:`register` / :func:`registered`.
"""

from __future__ import annotations

import contextlib
import importlib
from typing import Any, Iterator

from pydantic import BaseModel, ValidationError
from pydantic_core import InitErrorDetails, PydanticCustomError

from edge_runtime.selection.settings import KeepRatioSettings, PolicySettings, ReplaySettings, SelectionSettings

__all__ = ["SELECTION", "REPLAY", "PolicySettings", "SelectionSettings", "KeepRatioSettings", "ReplaySettings", "names",
           "policy_class", "settings_model", "register", "registered", "parse_settings", "build"]

#: Admission policies: which incoming samples of a micro-batch are trained on and offered to the buffer.
SELECTION: dict[str, str | type] = {
    "all": "edge_runtime.selection.all:KeepAllPolicy",
    "random": "edge_runtime.selection.random:RandomPolicy",
    "mbs": "edge_runtime.selection.mbs:MBSPolicy",
    "mbs-pooled": "edge_runtime.selection.mbs_pooled:MBSPooledPolicy",
    "mbs-class": "edge_runtime.selection.mbs_class:MBSClassPolicy",
    "mbs-gap": "edge_runtime.selection.mbs_gap:MBSGapPolicy",
    "el2n": "edge_runtime.selection.el2n:EL2NPolicy",
    "grand": "edge_runtime.selection.grand:GraNdPolicy",
    "bmmal": "edge_runtime.selection.bmmal:BMMALPolicy",
}

#: Replay policies: how each update's replay batch is drawn from the buffer.
REPLAY: dict[str, str | type] = {
    "uniform": "edge_runtime.selection.uniform:UniformReplay",
    "bss": "edge_runtime.selection.bss:BSSReplay",
    "dus": "edge_runtime.selection.dus:DUSReplay",
}

TABLES: dict[str, dict[str, str | type]] = {"selection": SELECTION, "replay": REPLAY}
#: The policy a section gets when it names none.
DEFAULT: dict[str, str] = {"selection": "all", "replay": "uniform"}
BASES: dict[str, type[PolicySettings]] = {"selection": SelectionSettings, "replay": ReplaySettings}


def _table(kind: str) -> dict[str, str | type]:
    try:
        return TABLES[kind]
    except KeyError:
        raise ValueError(f"unknown policy kind {kind!r}; choose one of {sorted(TABLES)}") from None


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
    if isinstance(target, str):
        module, _, attr = target.partition(":")
        target = getattr(importlib.import_module(module), attr)
    return target


def settings_model(kind: str, name: str) -> type[PolicySettings]:
    """The settings model of policy ``name`` (its class's ``Settings``)."""
    model = getattr(policy_class(kind, name), "Settings", None)
    if not (isinstance(model, type) and issubclass(model, BASES[kind])):
        raise TypeError(f"{kind} policy {name!r} must declare Settings, a subclass of {BASES[kind].__name__}")
    return model


def register(kind: str, name: str, cls: type | str) -> None:
    """Register (or replace) policy ``name`` of ``kind``: a class, or ``"module:Class"``."""
    _table(kind)[name] = cls


@contextlib.contextmanager
def registered(kind: str, name: str, cls: type | str) -> Iterator[None]:
    """Register ``name`` for the duration of a ``with`` block (tests); the previous entry comes back after."""
    table = _table(kind)
    missing = object()
    before = table.get(name, missing)
    table[name] = cls
    try:
        yield
    finally:
        if before is missing:
            table.pop(name, None)
        else:
            table[name] = before  # type: ignore[assignment]


def _owners(kind: str, key: str) -> tuple[list[str], list[tuple[str, str]]]:
    """Policies of ``kind`` that have ``key`` as a setting, and (policy, new key) where ``key`` is an old name."""
    has, renamed = [], []
    for name in names(kind):
        model = settings_model(kind, name)
        if key in model.model_fields:
            has.append(name)
        if key in model.renamed:
            renamed.append((name, model.renamed[key]))
    return has, renamed


def _not_a_setting(kind: str, name: str, key: str, value: Any) -> InitErrorDetails:
    has, renamed = _owners(kind, key)
    if renamed:
        hint = "; ".join(f"{kind}.{new} of policy {owner}" for owner, new in renamed)
        text = f"is an old key: its setting is now {hint} (set {kind}.policy to that policy)"
    else:
        text = f"is not a setting of policy {name}"
        if has:
            text += f" (it is a setting of {', '.join(has)}: set {kind}.policy to one of them, or remove it)"
        else:
            own = sorted(k for k in settings_model(kind, name).model_fields if k != "policy")
            text += f" (its settings: {', '.join(own) or 'none'})"
    return _error("not_a_setting", text, (key,), value)


def _error(kind: str, text: str, loc: tuple, value: Any) -> InitErrorDetails:
    """One line error of a :class:`ValidationError` with a ready-made message (no template fields)."""
    return {"type": PydanticCustomError(kind, text.replace("{", "(").replace("}", ")")), "loc": loc, "input": value}


def parse_settings(kind: str, data: Any) -> PolicySettings:
    """Validate one ``selection`` / ``replay`` section into the settings model of the policy it names.

    Errors are a :class:`pydantic.ValidationError` whose locations are keys of the section
    (``policy``, ``center``, ...): an unknown policy lists the choices; a key the policy does not
    have says which policies have it, or, for a key of the old flat layout, what it is called now.
    """
    base = BASES[kind]
    if isinstance(data, base):
        return data
    if data is None:
        data = {}
    if isinstance(data, BaseModel):
        data = data.model_dump()
    if not isinstance(data, dict):
        raise ValidationError.from_exception_data(kind, [_error("section", f"must be a mapping of settings, e.g. policy: {DEFAULT[kind]}", (), data)])
    name = data.get("policy", DEFAULT[kind])
    if not isinstance(name, str) or name not in _table(kind):
        raise ValidationError.from_exception_data(kind, [_error(
            "unknown_policy", f"unknown {kind} policy {name!r}; choose one of {names(kind)}", ("policy",), name)])
    model = settings_model(kind, name)
    errors: list[InitErrorDetails] = [_not_a_setting(kind, name, k, v) for k, v in data.items() if k not in model.model_fields]
    known = {k: v for k, v in data.items() if k in model.model_fields}
    known["policy"] = name
    try:
        settings = model.model_validate(known)
    except ValidationError as err:
        errors += [_error(e["type"], e["msg"], e["loc"], e.get("input")) for e in err.errors()]
    if errors:
        raise ValidationError.from_exception_data(kind, errors)
    return settings


def build(kind: str, settings: PolicySettings, *args: Any, **kwargs: Any) -> Any:
    """An instance of the policy ``settings.policy`` of ``kind``, built from its settings."""
    return policy_class(kind, settings.policy)(settings, *args, **kwargs)
