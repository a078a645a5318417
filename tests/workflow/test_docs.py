"""config/README.md documents exactly the keys of the config schema, with the schema's defaults (no drift)."""

from __future__ import annotations

import re

import yaml

from smk import ROOT


def leaves(schema: dict, path: tuple[str, ...] = ()) -> dict[tuple[str, ...], dict]:
    """Key path -> schema of every leaf; a dataset entry's keys count as leaves of `datasets`."""
    found = {}
    for name, sub in schema.get("properties", {}).items():
        if "properties" in sub:
            found |= leaves(sub, (*path, name))
        elif "properties" in sub.get("additionalProperties", {}):  # datasets: <name> -> entry
            found |= leaves(sub["additionalProperties"], (*path, name))
        else:
            found[(*path, name)] = sub
    return found


def documented() -> dict[tuple[str, str], str]:
    """(section, `key`) -> the default column, from every table row of config/README.md (a table belongs to the
    `## `section`` heading above it; top-level keys sit under a heading without one and are their own section)."""
    found, section = {}, None
    for line in (ROOT / "config" / "README.md").read_text().splitlines():
        heading = re.match(r"^## (?:`(\w+)`)?", line)
        if heading:
            section = heading.group(1)
            continue
        row = re.match(r"^\| `([\w.]+)` \| ([^|]+?) \|", line)
        if row:
            found[(section or row.group(1), row.group(1))] = row.group(2)
    return found


def schema_leaves() -> dict[tuple[str, str], dict]:
    schema = yaml.safe_load((ROOT / "workflow" / "schemas" / "config.schema.yaml").read_text())
    # each section has its own table, so a key is written without its section: `kfold`, `unpaired.train_mesh`
    return {(path[0], ".".join(path[1:]) or path[0]): sub for path, sub in leaves(schema).items()}


def test_every_schema_key_is_documented_and_nothing_else() -> None:
    assert set(documented()) == set(schema_leaves())


def test_documented_defaults_are_the_schema_defaults() -> None:
    docs = documented()
    wrong = {}
    for key, sub in schema_leaves().items():
        if "default" in sub:
            shown = yaml.safe_load(docs[key].strip("`"))
            if shown != sub["default"]:
                wrong[key] = (docs[key], sub["default"])
    assert not wrong, wrong
