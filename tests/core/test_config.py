"""Configuration: defaults, YAML loading, overrides, and errors that name the key."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from edge_runtime.core.config import Config, ConfigError, config_from_dict, load_config

ROOT = Path(__file__).resolve().parents[2]


def test_defaults_validate_and_match_default_yaml():
    cfg = load_config()
    assert cfg == Config()
    from_file = load_config(ROOT / "configs" / "default.yaml")
    assert from_file.model_dump() == cfg.model_dump()


def test_loading_and_validating_configurations_imports_no_torch():
    """The policies' settings models are torch-free (core.policy_settings): validating any configuration,
    whatever policies it names, imports neither torch nor the policy code."""
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from edge_runtime.core.config import config_from_dict, load_config\n"
        "from edge_runtime.core.policy_settings import names\n"
        "load_config('configs/default.yaml')\n"
        "for path in sorted(Path('configs').glob('**/*.yaml')):\n"
        "    load_config(path)\n"
        "for kind in ('selection', 'replay'):\n"
        "    for name in names(kind):\n"
        "        config_from_dict({kind: {'policy': name}})\n"
        "loaded = sorted(m for m in sys.modules if m == 'torch' or m.startswith(('torch.', 'edge_runtime.learning')))\n"
        "print(loaded, len(names('selection')) + len(names('replay')))\n"
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["[]", "12"]


@pytest.mark.parametrize(
    "data, key",
    [
        ({"selection": {"policy": "mbs", "keep_ratio": 1.5}}, "selection.keep_ratio"),
        ({"selection": {"policy": "mbs", "keep_ratio": 0}}, "selection.keep_ratio"),
        ({"buffer": {"max_items": 0}}, "buffer.max_items"),
        ({"prototypes": {"momentum": 1.0}}, "prototypes.momentum"),
        ({"training": {"lr": -1}}, "training.lr"),
        ({"model": {"fusion": "average"}}, "model.fusion"),
        ({"device": "gpu0"}, "device"),
        ({"selection": {"policy": "nonexistent"}}, "selection.policy"),
    ],
)
def test_out_of_range_values_name_the_key(data, key):
    with pytest.raises(ConfigError) as err:
        config_from_dict(data)
    assert f"{key}:" in str(err.value)


def test_unknown_keys_name_the_key():
    with pytest.raises(ConfigError) as err:
        config_from_dict({"selection": {"policy": "mbs", "keepratio": 0.3}, "bufer": {}})
    msg = str(err.value)
    assert "selection.keepratio is not a setting of policy mbs" in msg and "keep_ratio" in msg  # lists mbs's settings
    assert "bufer: unknown key" in msg


@pytest.mark.parametrize(
    "section, expected",
    [
        ({"selection": {"policy": "el2n", "center": "running"}},
         "selection.center is not a setting of policy el2n (it is a setting of mbs"),
        ({"selection": {"policy": "all", "keep_ratio": 0.3}}, "selection.keep_ratio is not a setting of policy all"),
        ({"selection": {"policy": "mbs", "grad_params": "all"}}, "selection.grad_params is not a setting of policy mbs (it is a setting of grand"),
        ({"replay": {"policy": "uniform", "round_updates": 5}}, "replay.round_updates is not a setting of policy uniform (it is a setting of bss"),
    ],
)
def test_a_key_of_another_policy_names_the_key_and_its_policies(section, expected):
    with pytest.raises(ConfigError) as err:
        config_from_dict(section)
    assert expected in str(err.value)


@pytest.mark.parametrize(
    "old, new",
    [("dus_gamma", "replay.gamma of policy dus"), ("dus_max", "replay.max_extra of policy dus"),
     ("dus_epsilon", "replay.epsilon of policy dus"), ("dus_weight", "replay.weight of policy dus"),
     ("bss_variant", "replay.variant of policy bss"), ("bss_lambda0", "replay.lambda0 of policy bss"),
     ("bss_t_grow", "replay.t_grow of policy bss")],
)
def test_old_flat_keys_say_what_the_new_key_is(old, new):
    for policy in ("uniform", "dus", "bss"):  # the old flat layout carried them under any policy
        with pytest.raises(ConfigError) as err:
            config_from_dict({"replay": {"policy": policy, old: 0.5}})
        assert f"replay.{old} is an old key: its setting is now {new}" in str(err.value)


def test_each_policy_gets_its_own_settings_model_and_dump_round_trips():
    cfg = config_from_dict({"selection": {"policy": "grand", "grad_params": "all", "keep_ratio": 0.25},
                            "replay": {"policy": "dus", "gamma": 0.5, "max_extra": 4}})
    assert type(cfg.selection).__name__ == "GraNdSettings" and cfg.selection.grad_params == "all"
    assert cfg.selection.direction == "largest"  # grand's own default
    assert type(cfg.replay).__name__ == "DUSSettings" and (cfg.replay.gamma, cfg.replay.max_extra, cfg.replay.weight) == (0.5, 4, 1.0)
    dumped = cfg.model_dump()
    assert dumped["selection"] == {"policy": "grand", "train_on": "selected", "keep_ratio": 0.25, "direction": "largest", "grad_params": "all"}
    assert config_from_dict(dumped) == cfg
    with pytest.raises(ConfigError, match=r"selection\.direction: Input should be 'smallest' or 'largest'"):
        config_from_dict({"selection": {"policy": "el2n", "direction": "auto"}})
    with pytest.raises(ConfigError, match=r"replay\.gamma: Input should be less than 1"):
        config_from_dict({"replay": {"policy": "dus", "gamma": 1.0}})


def test_unknown_policy_lists_the_choices():
    with pytest.raises(ConfigError) as err:
        config_from_dict({"selection": {"policy": "nope"}})
    assert "'mbs'" in str(err.value) and "'random'" in str(err.value)


def test_yaml_file_and_overrides(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text(yaml.safe_dump({"selection": {"policy": "mbs", "keep_ratio": 0.3}, "buffer": {"max_items": 50}}))
    cfg = load_config(f, ["buffer.retention=reservoir", "selection.keep_ratio=0.25"])
    assert cfg.selection.keep_ratio == 0.25
    assert cfg.buffer.max_items == 50
    assert cfg.buffer.retention == "reservoir"


def test_bad_files_and_overrides_are_clear(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("selection: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    listing = tmp_path / "list.yaml"
    listing.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(listing)
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        load_config(None, ["selection.keep_ratio"])
    with pytest.raises(ConfigError, match=r"buffer\.max_items"):
        load_config(None, ["buffer.max_items=many"])


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("**/*.yaml")), ids=lambda p: str(p.relative_to(ROOT / "configs")))
def test_every_shipped_config_validates(path):
    cfg = load_config(path)
    assert cfg.selection.policy and cfg.replay.policy
    if path.parent.name == "configs":  # the README's baseline: another policy over a shipped file keeps working
        assert load_config(path, ["selection.policy=random"]).selection.policy == "random"
    else:  # a preset names its policy and that policy's own keys
        assert cfg.selection.policy == yaml.safe_load(path.read_text())["selection"]["policy"]


@pytest.mark.parametrize("name", ["mbs-trim", "mbs-gap-trim"])
def test_preset_selects_as_the_sweep_variant_it_names(name):
    """A preset named after a balance-sweep variant admits exactly as that variant did in the sweep
    (the variant's overrides over configs/avdigits.yaml, the sweep's base), so the README's numbers hold for it."""
    from benchmarks.balance_sweep import VARIANTS
    from edge_runtime.core.config import _merge

    preset = load_config(ROOT / "configs" / "presets" / f"{name}.yaml")
    base = yaml.safe_load((ROOT / "configs" / "avdigits.yaml").read_text())
    swept = config_from_dict(_merge(base, VARIANTS[name]))
    assert preset.selection.model_dump() == swept.selection.model_dump()
    assert preset.buffer.retention == swept.buffer.retention
