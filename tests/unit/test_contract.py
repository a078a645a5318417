"""The names in pipeline3d.contract are the ones every other place uses (defined once, checked here)."""

from __future__ import annotations

from pipeline3d import config as cfgmod
from pipeline3d.config_refs import BACKEND_KINDS, UNPAIRED_BACKENDS
from pipeline3d.contract import BACKENDS, SPLIT_FAMILIES, SPLIT_PRIMITIVE, UNPAIRED_BUCKETS, UNPAIRED_SPLITS
from pipeline3d.data.splits import FAMILIES, FAMILY_KEYS
from pipeline3d.tokens.backends import BACKENDS as BACKEND_CLASSES


def test_backends_agree_with_the_registry_the_schema_and_the_reference_checks():
    assert tuple(sorted(BACKEND_CLASSES)) == tuple(sorted(BACKENDS))
    assert set(BACKEND_KINDS) == set(BACKENDS)
    schema = cfgmod.load_schema()
    ucpr_pairs = schema["properties"]["eval"]["properties"]["ucpr"]["properties"]["pairs"]
    assert tuple(ucpr_pairs["items"]["items"]["enum"]) == BACKENDS


def test_split_families_and_unpaired_splits():
    assert FAMILIES == SPLIT_FAMILIES and set(FAMILY_KEYS) == set(SPLIT_FAMILIES)
    assert UNPAIRED_SPLITS[: len(UNPAIRED_BUCKETS)] == UNPAIRED_BUCKETS and set(SPLIT_PRIMITIVE) == set(UNPAIRED_SPLITS)
    assert set(UNPAIRED_BACKENDS) <= set(UNPAIRED_BUCKETS)
    schema_buckets = cfgmod.load_schema()["properties"]["splits"]["properties"]["unpaired"]["properties"]
    assert tuple(schema_buckets) == UNPAIRED_BUCKETS
