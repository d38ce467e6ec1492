"""Configuration: defaults, YAML loading, overrides, and errors that name the key."""

from pathlib import Path

import pytest
import yaml

from edge_runtime.config import Config, ConfigError, config_from_dict, load_config

ROOT = Path(__file__).resolve().parents[1]


def test_defaults_validate_and_match_default_yaml():
    cfg = load_config()
    assert cfg == Config()
    from_file = load_config(ROOT / "configs" / "default.yaml")
    assert from_file.model_dump() == cfg.model_dump()


@pytest.mark.parametrize(
    "data, key",
    [
        ({"selection": {"keep_ratio": 1.5}}, "selection.keep_ratio"),
        ({"selection": {"keep_ratio": 0}}, "selection.keep_ratio"),
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
        config_from_dict({"selection": {"keepratio": 0.3}, "bufer": {}})
    msg = str(err.value)
    assert "selection.keepratio: unknown key" in msg
    assert "bufer: unknown key" in msg


def test_unknown_policy_lists_the_choices():
    with pytest.raises(ConfigError) as err:
        config_from_dict({"selection": {"policy": "nope"}})
    assert "'mbs'" in str(err.value) and "'random'" in str(err.value)


def test_yaml_file_and_overrides(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text(yaml.safe_dump({"selection": {"keep_ratio": 0.3}, "buffer": {"max_items": 50}}))
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
