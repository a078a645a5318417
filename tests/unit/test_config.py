"""The schema and the config loader: defaults, typos named, stable params."""

import copy
from pathlib import Path

import pytest
import yaml

from pipeline3d import config as cfgmod

ROOT = Path(__file__).resolve().parents[2]


def demo_config() -> dict:
    return yaml.safe_load((ROOT / "config" / "config.yaml").read_text())


def test_demo_config_is_valid_and_complete():
    cfg = cfgmod.validate(demo_config())
    assert cfg["cache"]["pt_pool"] == 20000
    assert set(cfg["datasets"]) == {"demo-mesh", "demo-scan", "demo-img"}


def test_unknown_key_is_named():
    cfg = demo_config()
    cfg["cache"]["pt_pol"] = 10
    with pytest.raises(cfgmod.ConfigError, match=r"cache\.pt_pol: unknown key"):
        cfgmod.validate(cfg)


def test_unknown_dataset_key_is_named():
    cfg = demo_config()
    cfg["datasets"]["demo-mesh"]["pth"] = "x"
    with pytest.raises(cfgmod.ConfigError, match=r"datasets\.demo-mesh\.pth: unknown key"):
        cfgmod.validate(cfg)


def test_wrong_type_names_the_key():
    cfg = demo_config()
    cfg["cache"]["grid_mode"] = "fast"
    with pytest.raises(cfgmod.ConfigError, match=r"cache\.grid_mode"):
        cfgmod.validate(cfg)


def test_bad_dataset_name_is_refused():
    cfg = demo_config()
    cfg["datasets"]["Bad_Name"] = cfg["datasets"].pop("demo-img")
    with pytest.raises(cfgmod.ConfigError, match="Bad_Name"):
        cfgmod.validate(cfg)


def test_defaults_are_filled():
    cfg = demo_config()
    del cfg["cache"]["grid_mode"]
    del cfg["datasets"]["demo-mesh"]["format"]
    out = cfgmod.validate(cfg)
    assert out["cache"]["grid_mode"] == "edt"
    assert out["datasets"]["demo-mesh"]["format"] == "auto"


def test_load_names_the_file(tmp_path):
    bad = tmp_path / "c.yaml"
    bad.write_text("seed: [unclosed\n")
    with pytest.raises(cfgmod.ConfigError, match=str(bad)):
        cfgmod.load(bad)


def test_stage_params_stable_under_key_order_and_carries_version():
    a = cfgmod.stage_params("make_splits", {"b": 1, "a": {"y": 2, "x": 1}})
    b = cfgmod.stage_params("make_splits", {"a": {"x": 1, "y": 2}, "b": 1})
    assert a == b
    assert '"stage_version":' in a
    changed = cfgmod.stage_params("make_splits", {"a": {"x": 1, "y": 3}, "b": 1})
    assert cfgmod.cfg_hash(changed) != cfgmod.cfg_hash(a)


def test_stage_params_unknown_stage():
    with pytest.raises(cfgmod.ConfigError, match="no_such_stage"):
        cfgmod.stage_params("no_such_stage", {})


def test_validate_does_not_depend_on_input_mutation():
    cfg = demo_config()
    snapshot = copy.deepcopy(cfg)
    cfgmod.validate(cfg)
    cfgmod.validate(snapshot)
    assert cfg == snapshot


def test_every_optional_section_has_a_default():
    """An empty section (`splits: {}`) must fill every sub-section, or a rule meets a KeyError at parse time."""
    missing = []

    def walk(node: dict, path: str) -> None:
        for key, sub in (node.get("properties") or {}).items():
            if sub.get("type") == "object" and "default" not in sub and key not in node.get("required", []):
                missing.append(f"{path}{key}")
            walk(sub, f"{path}{key}.")

    walk(cfgmod.load_schema(), "")
    assert not missing, f"object keys without a default: {missing}"
    config = {
        "seed": 0,
        "demo": {"enabled": False},
        "ingest": {},
        "cache": {},
        "fingerprints": {},
        "splits": {},
        "datasets": {"shapes": {"kind": "mesh", "format": "modelnet", "path": "/data/ModelNet40"}},
    }
    cfgmod.validate(config)
    assert config["splits"]["unpaired"] == {"train_mesh": 0.34, "train_pc": 0.33, "train_udf": 0.33}


def test_the_schema_ships_inside_the_package():
    """An installed pipeline3d validates configs without a checkout: the schema is package data, and the path
    the workflow documents (workflow/schemas/) links to that very file."""
    import tomllib
    from pathlib import Path

    import pipeline3d

    package = Path(pipeline3d.__file__).parent
    assert cfgmod.SCHEMA_PATH == package / "schemas" / "config.schema.yaml" and cfgmod.SCHEMA_PATH.is_file()
    project = tomllib.loads((package.parents[1] / "pyproject.toml").read_text())
    assert "schemas/*.yaml" in project["tool"]["setuptools"]["package-data"]["pipeline3d"]
    linked = package.parents[1] / "workflow" / "schemas" / "config.schema.yaml"
    assert linked.resolve() == cfgmod.SCHEMA_PATH.resolve()
