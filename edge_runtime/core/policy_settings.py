"""The settings models of the admission and replay policies (pydantic only, no torch).

:mod:`edge_runtime.core.config` validates the ``selection`` and ``replay`` sections with
:func:`parse_settings`, which picks the model by the section's ``policy`` name from
:data:`SELECTION` / :data:`REPLAY`.  Validating a configuration therefore never imports a policy's
code (nor torch); the policy classes live in :mod:`edge_runtime.learning.policies` and carry their
model as ``Settings``.  A policy registered at run time with
:func:`edge_runtime.learning.policies.registry.register` adds its ``Settings`` here through
:func:`register_settings`.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic_core import InitErrorDetails, PydanticCustomError

__all__ = ["PolicySettings", "SelectionSettings", "KeepRatioSettings", "ReplaySettings", "AllSettings", "RandomSettings",
           "MBSFamilySettings", "MBSSettings", "MBSPooledSettings", "MBSClassSettings", "MBSGapSettings", "EL2NSettings",
           "GraNdSettings", "BMMALSettings", "UniformSettings", "BSSSettings", "DUSSettings", "SELECTION", "REPLAY", "TABLES",
           "DEFAULT", "BASES", "names", "settings_model", "register_settings", "parse_settings"]


# --------------------------------------------------------------------------- base classes
class PolicySettings(BaseModel):
    """Base of every policy's settings: ``policy`` (its registered name) plus the policy's own keys.

    ``renamed`` maps keys of the old flat configuration (before each policy owned its settings) to
    this policy's key, so that an old file gets an error that says what the new key is.
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)
    renamed: ClassVar[dict[str, str]] = {}

    policy: str


class SelectionSettings(PolicySettings):
    """Settings every admission policy has (the learner reads ``train_on``)."""

    train_on: Literal["selected", "all"] = Field(
        "selected", description="selected: CE only on the kept samples (saves compute); all: CE on every sample, the selection only decides buffer admission")


class KeepRatioSettings(SelectionSettings):
    """An admission policy that keeps a share of each batch."""

    keep_ratio: float = Field(0.5, gt=0.0, le=1.0, description="fraction of the batch KEPT (the paper's tables speak of pruning = 1 - keep)")


class ReplaySettings(PolicySettings):
    """Settings every replay policy has (none besides its name)."""


# --------------------------------------------------------------------------- admission policies
class AllSettings(SelectionSettings):
    """``all`` has no settings of its own (it keeps everything, so it trains on everything)."""

    policy: Literal["all"] = "all"
    train_on: Literal["selected", "all"] = Field("all", description="the same either way: every row is selected")


class RandomSettings(KeepRatioSettings):
    """``random``: only the kept share."""

    policy: Literal["random"] = "random"


class MBSFamilySettings(KeepRatioSettings):
    """Settings every policy of the MBS family has: the centre and the deviation from it."""

    center: Literal["median", "running", "one"] = Field("median", description="median of the batch | running median of the stream | 1")
    deviation: Literal["ratio", "log"] = Field("ratio", description="ratio: |MBS - m| | log: |log MBS - log m|")
    running_window: int = Field(2048, ge=1, description="samples in the running-median window")


class MBSSettings(MBSFamilySettings):
    """``mbs``: Algorithm 1 of "MBS: A Modality-Balanced Strategy for Multimodal Sample Selection"."""

    policy: Literal["mbs"] = "mbs"
    split: Literal["center", "one"] = Field(
        "center", description="center: sides MBS <= m / > m, as in the learning step, step 4 (docs/design.md) | one: sides 0 < MBS <= 1 / > 1 (the paper's lines 13-16)")


class MBSPooledSettings(MBSFamilySettings):
    """``mbs-pooled``: the centre and deviation of the family; no sides."""

    policy: Literal["mbs-pooled"] = "mbs-pooled"


class MBSClassSettings(MBSFamilySettings):
    """``mbs-class``: the family's centre (per class for ``median``) and deviation."""

    policy: Literal["mbs-class"] = "mbs-class"


class MBSGapSettings(KeepRatioSettings):
    """``mbs-gap``: the kept share (default 0.8: drop the most one-sided fifth of each batch)."""

    policy: Literal["mbs-gap"] = "mbs-gap"
    keep_ratio: float = Field(0.8, gt=0.0, le=1.0, description="fraction of the batch KEPT (the rows of smallest gap)")


class EL2NSettings(KeepRatioSettings):
    """``el2n``: which end of the score is kept."""

    policy: Literal["el2n"] = "el2n"
    direction: Literal["smallest", "largest"] = Field("smallest", description="keep the smallest (easy, the paper's baseline) or largest scores")


class GraNdSettings(KeepRatioSettings):
    """``grand``: which end of the score is kept, and over which parameters the gradient is taken."""

    policy: Literal["grand"] = "grand"
    direction: Literal["smallest", "largest"] = Field("largest", description="keep the largest (the paper's baseline) or smallest norms")
    grad_params: Literal["last_layer", "all"] = Field("last_layer", description="gradient over the fusion head (vmap) or every parameter")


class BMMALSettings(KeepRatioSettings):
    """``bmmal`` ("Towards Balanced Active Learning for Multimodal Classification"): only the kept share."""

    policy: Literal["bmmal"] = "bmmal"


# --------------------------------------------------------------------------- replay policies
class UniformSettings(ReplaySettings):
    """``uniform`` has no settings of its own."""

    policy: Literal["uniform"] = "uniform"


class BSSSettings(ReplaySettings):
    """``bss`` (Balance-aware Sequence Sampling): the curriculum round, variant and pacing."""

    policy: Literal["bss"] = "bss"
    round_updates: int = Field(10, ge=1, description="learner updates per curriculum round (the stream's 'epoch')")
    variant: Literal["heuristic", "learned"] = Field("heuristic", description="heuristic (pacing) | learned (re-scored weighted sampling)")
    lambda0: float = Field(0.1, gt=0.0, le=1.0, description="initial fraction of the most balanced samples")
    t_grow: int = Field(40, ge=1, description="rounds until the curriculum uses every sample")
    renamed = {"bss_variant": "variant", "bss_lambda0": "lambda0", "bss_t_grow": "t_grow"}


class DUSSettings(ReplaySettings):
    """``dus`` (Data-aware Unimodal Sampling): discount, quantity bound, dead band and weight of the unimodal term."""

    policy: Literal["dus"] = "dus"
    gamma: float = Field(0.9, ge=0.0, lt=1.0, description="discount of the cumulative modality discrepancy")
    max_extra: int | None = Field(None, ge=0, description="most extra unimodal samples per update (None: buffer.replay_batch_size)")
    epsilon: float = Field(0.02, ge=0.0, le=1.0, description="dead band of the imbalance level")
    weight: float = Field(1.0, ge=0.0, description="weight of the unimodal cross-entropy")
    renamed = {"dus_gamma": "gamma", "dus_max": "max_extra", "dus_epsilon": "epsilon", "dus_weight": "weight"}


# --------------------------------------------------------------------------- name -> settings model
#: Admission policies by name (the same names as the policy classes of ``learning.policies.registry``).
SELECTION: dict[str, type[PolicySettings]] = {
    "all": AllSettings,
    "random": RandomSettings,
    "mbs": MBSSettings,
    "mbs-pooled": MBSPooledSettings,
    "mbs-class": MBSClassSettings,
    "mbs-gap": MBSGapSettings,
    "el2n": EL2NSettings,
    "grand": GraNdSettings,
    "bmmal": BMMALSettings,
}

#: Replay policies by name.
REPLAY: dict[str, type[PolicySettings]] = {
    "uniform": UniformSettings,
    "bss": BSSSettings,
    "dus": DUSSettings,
}

TABLES: dict[str, dict[str, type[PolicySettings]]] = {"selection": SELECTION, "replay": REPLAY}
#: The policy a section gets when it names none.
DEFAULT: dict[str, str] = {"selection": "all", "replay": "uniform"}
#: The class every settings model of a kind derives from.
BASES: dict[str, type[PolicySettings]] = {"selection": SelectionSettings, "replay": ReplaySettings}


def _table(kind: str) -> dict[str, type[PolicySettings]]:
    try:
        return TABLES[kind]
    except KeyError:
        raise ValueError(f"unknown policy kind {kind!r}; choose one of {sorted(TABLES)}") from None


def names(kind: str) -> list[str]:
    """The policy names of ``kind`` ("selection" or "replay") that have a settings model, sorted."""
    return sorted(_table(kind))


def settings_model(kind: str, name: str) -> type[PolicySettings]:
    """The settings model of policy ``name``; ValueError listing the choices."""
    table = _table(kind)
    try:
        return table[name]
    except KeyError:
        raise ValueError(f"{kind}.policy: unknown policy {name!r}; choose one of {sorted(table)}") from None


def register_settings(kind: str, name: str, model: Any) -> None:
    """Set (or replace) the settings model of policy ``name``; TypeError unless it derives from the kind's base."""
    table = _table(kind)
    if not (isinstance(model, type) and issubclass(model, BASES[kind])):
        raise TypeError(f"{kind} policy {name!r} must declare Settings, a subclass of {BASES[kind].__name__}")
    table[name] = model


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
        own = sorted(k for k in settings_model(kind, name).model_fields if k != "policy")
        if has:
            text += (f" (it is a setting of {', '.join(has)}: set {kind}.policy to one of them, or remove it; "
                     f"the settings of {name}: {', '.join(own) or 'none'})")
        else:
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
