"""Base classes of the policies' settings models (pydantic only; below the registry and config).

Each policy file declares ``class XSettings(SelectionSettings | KeepRatioSettings | ReplaySettings)``
with ``policy: Literal["x"] = "x"`` and its own keys.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field


class PolicySettings(BaseModel):
    """Base of every policy's settings: ``policy`` (its registered name) plus the policy's own keys.

    ``renamed`` maps keys of the old flat configuration (before each policy owned its settings) to
    this policy's key, so that an old file gets an error that says what the new key is.
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True)
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
