"""Configuration: load, validate against the JSON schema, and canonical per-stage slices.

The schema (src/pipeline3d/schemas/config.schema.yaml, linked from workflow/schemas/) is the single source of truth
for keys and defaults; Snakemake validates with it at parse time and the stages validate again when run by hand.
Errors name the offending key.
"""

from __future__ import annotations

import hashlib
import json
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from .config_refs import reference_problems
from .versions import STAGE_VERSIONS

# Shipped inside the package (an installed pipeline3d validates without a checkout); workflow/schemas/ links to it.
SCHEMA_PATH = Path(str(resources.files("pipeline3d") / "schemas" / "config.schema.yaml"))


class ConfigError(ValueError):
    """A configuration problem; the message names the key."""


def _fill_defaults(schema: dict, value: Any) -> Any:
    if not isinstance(value, dict) or schema.get("type") != "object":
        return value
    props = schema.get("properties", {})
    for key, sub in props.items():
        if key not in value and "default" in sub:
            value[key] = json.loads(json.dumps(sub["default"]))
    for key, item in value.items():
        sub = props.get(key)
        if sub is None and isinstance(schema.get("additionalProperties"), dict):
            sub = schema["additionalProperties"]
        if sub is not None:
            _fill_defaults(sub, item)
    return value


def load_schema(path: str | Path = SCHEMA_PATH) -> dict:
    return yaml.safe_load(Path(path).read_text())


def validate(config: dict, schema: dict | None = None) -> dict:
    """Validate ``config`` in place (filling defaults) and return it; raise ConfigError naming the key."""
    import jsonschema

    schema = schema or load_schema()
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: list(e.absolute_path))
    if errors:
        lines = []
        for err in errors:
            where = ".".join(str(p) for p in err.absolute_path) or "<top level>"
            if err.validator == "additionalProperties":
                extra = sorted(set(err.instance) - set(err.schema.get("properties", {})))
                lines.append(
                    f"config key {where + '.' if where != '<top level>' else ''}{extra[0]}: unknown key "
                    f"(allowed: {', '.join(sorted(err.schema.get('properties', {})))})"
                )
            else:
                lines.append(f"config key {where}: {err.message}")
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(lines))
    _fill_defaults(schema, config)
    problems = reference_problems(config)
    if problems:
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(problems))
    return config


def load(path: str | Path) -> dict:
    """Read and validate a YAML config file."""
    path = Path(path)
    try:
        config = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    try:
        return validate(config)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from exc


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def stage_params(stage: str, config_slice: dict) -> str:
    """The canonical JSON a rule passes to its stage: the stage's config slice plus its code version.

    Key order does not matter (sorted), so reordering YAML causes no spurious reruns.
    """
    if stage not in STAGE_VERSIONS:
        raise ConfigError(f"unknown stage {stage!r}: add it to pipeline3d.versions.STAGE_VERSIONS")
    return canonical_json({**config_slice, "stage_version": STAGE_VERSIONS[stage]})


def cfg_hash(params_json: str) -> str:
    return hashlib.sha256(params_json.encode("utf-8")).hexdigest()[:12]
