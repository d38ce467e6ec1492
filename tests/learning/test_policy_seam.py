"""Issue 13's promise: a new policy (two settings of its own and a loss term) is one file's worth of
code plus one registry line, and it runs through the stream and the offline protocol.  A plug-in
registers its class and, with it, its settings model (configuration validates from
:mod:`edge_runtime.core.policy_settings`)."""

from __future__ import annotations

from typing import Literal

import pytest
import torch
from pydantic import Field

from tests.support.streams import stream
from edge_runtime.core.config import ConfigError, config_from_dict
from edge_runtime.learning.learner import Learner
from edge_runtime.learning.offline import run_protocol
from edge_runtime.learning.policies.base import Selection, SelectionPolicy, StepContext
from edge_runtime.core import policy_settings
from edge_runtime.learning.policies.registry import names, register, registered
from edge_runtime.core.policy_settings import SelectionSettings


# ---------------------------------------------------------------- the whole "policy file"
class FirstKSettings(SelectionSettings):
    policy: Literal["first_k"] = "first_k"
    take: int = Field(3, ge=1, description="rows kept per batch: the first ones")
    weight: float = Field(0.5, ge=0.0, description="weight of the logit-norm penalty on the incoming rows")


class FirstKPolicy(SelectionPolicy):
    """Keeps the first ``take`` rows of each batch; adds ``weight * mean(logits^2)`` of the incoming rows."""

    Settings = FirstKSettings

    def __init__(self, cfg: FirstKSettings, seed: int = 0) -> None:
        self.cfg = cfg
        self.seen_labels: list[list[int]] = []  # what the loss term saw, for the test

    def select(self, ctx: StepContext) -> Selection:
        n = int(ctx.labels.shape[0])
        return Selection(indices=torch.arange(min(self.cfg.take, n)))

    def loss(self, step) -> torch.Tensor | None:
        if step.incoming is None:
            return None
        self.seen_labels.append(step.incoming.labels.tolist())
        return self.cfg.weight * step.incoming.output.logits.float().pow(2).mean()
# ---------------------------------------------------------------- end of the policy file


@pytest.fixture
def first_k():
    with registered("selection", "first_k", FirstKPolicy):  # the registry line, from inside the test
        yield
    assert "first_k" not in names("selection") and "first_k" not in policy_settings.names("selection")


def test_registering_a_class_registers_its_settings_and_leaving_the_block_removes_both():
    with registered("selection", "first_k", FirstKPolicy):
        assert policy_settings.settings_model("selection", "first_k") is FirstKSettings
        assert isinstance(config_from_dict({"selection": {"policy": "first_k"}}).selection, FirstKSettings)
    with pytest.raises(ConfigError, match=r"selection\.policy: unknown selection policy 'first_k'; choose one of \['all', "):
        config_from_dict({"selection": {"policy": "first_k"}})


def test_a_plug_in_named_by_string_and_a_replaced_builtin_come_and_go():
    with registered("selection", "first_k", "tests.learning.test_policy_seam:FirstKPolicy"):
        cfg = config_from_dict({"selection": {"policy": "first_k", "take": 2}})
        assert type(cfg.selection).__name__ == "FirstKSettings" and cfg.selection.take == 2
    before = policy_settings.settings_model("selection", "random")
    with registered("selection", "random", FirstKPolicy):  # a plug-in may replace a built-in for a while
        assert policy_settings.settings_model("selection", "random") is FirstKSettings
    assert policy_settings.settings_model("selection", "random") is before and before.__name__ == "RandomSettings"


def test_a_class_without_settings_is_refused_and_registers_nothing():
    class NoSettings(SelectionPolicy):
        pass

    with pytest.raises(TypeError, match="selection policy 'bare' must declare Settings, a subclass of SelectionSettings"):
        register("selection", "bare", NoSettings)
    assert "bare" not in names("selection") and "bare" not in policy_settings.names("selection")


def test_toy_policy_settings_are_validated(first_k):
    cfg = config_from_dict({"selection": {"policy": "first_k", "take": 5}})
    assert isinstance(cfg.selection, FirstKSettings) and (cfg.selection.take, cfg.selection.weight) == (5, 0.5)
    with pytest.raises(ConfigError, match=r"selection\.take: Input should be greater than or equal to 1"):
        config_from_dict({"selection": {"policy": "first_k", "take": 0}})
    with pytest.raises(ConfigError) as err:
        config_from_dict({"selection": {"policy": "first_k", "center": "median"}})
    assert "selection.center is not a setting of policy first_k (it is a setting of mbs" in str(err.value)
    with pytest.raises(ConfigError) as err:
        config_from_dict({"selection": {"policy": "mbs", "take": 2}})
    assert "selection.take is not a setting of policy mbs (it is a setting of first_k" in str(err.value)


def test_toy_policy_runs_through_the_stream_with_its_loss_term(synthetic, first_k):
    samples = stream(synthetic, range(96))

    def run(weight: float) -> Learner:
        cfg = config_from_dict({"selection": {"policy": "first_k", "take": 4, "weight": weight},
                                "buffer": {"max_items": 100}, "training": {"replay_steps": 2}})
        learner = Learner(cfg)
        verdicts = []
        for i in range(0, 96, 32):
            verdicts.append(learner.observe(samples[i : i + 32]))
        for v in verdicts:  # the first 4 rows of each batch are kept (and stored: the buffer has room), the rest skipped
            assert v[:4] == ["admitted"] * 4 and v[4:] == ["skipped"] * 28
        return learner

    learner = run(0.5)
    policy = learner.policy
    assert policy.loss in learner.terms
    # called at every optimiser step (2 per batch) with the kept rows' labels
    want = [[s.label for s in samples[i : i + 4]] for i in range(0, 96, 32) for _ in range(2)]
    assert policy.seen_labels == want
    plain = run(0.0)
    differs = any(not torch.equal(a, b) for a, b in zip(learner.model.state_dict().values(), plain.model.state_dict().values()))
    assert differs, "the policy's loss term must reach the gradient"


def test_toy_policy_runs_through_the_offline_protocol(synthetic, first_k):
    cfg = config_from_dict({"selection": {"policy": "first_k", "take": 7}})
    train, test = stream(synthetic, range(48)), stream(synthetic, range(48, 80))
    rows = run_protocol(train, test, cfg, pretrain_epochs=[1], ratios=[0.5], strategies=["first_k", "base"], epochs=1)
    by = {r["strategy"]: r for r in rows}
    assert by["first_k"]["kept"] == 7 and by["first_k"]["pretrain_epochs"] == 1  # its own setting, from the config
    assert by["base"]["kept"] == 48
