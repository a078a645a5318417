"""Seed derivation.

Every random draw in the pipeline comes from ``rng_for(seed, stage, key)``: the config seed, the stage name and
a stable key (usually the shape id). Never from list position, process id or wall clock, so results do not
depend on job order, shard count or parallelism.
"""

from __future__ import annotations

import hashlib

import numpy as np


def _words(text: str) -> list[int]:
    digest = hashlib.sha256(text.encode("utf-8")).digest()
    return [int.from_bytes(digest[i : i + 4], "little") for i in range(0, 16, 4)]


def seed_sequence(seed: int, stage: str, key: str = "") -> np.random.SeedSequence:
    """A SeedSequence unique to (seed, stage, key)."""
    return np.random.SeedSequence([int(seed) & 0xFFFFFFFF, *_words(stage), *_words(key)])


def rng_for(seed: int, stage: str, key: str = "") -> np.random.Generator:
    """A fresh numpy Generator for (seed, stage, key)."""
    return np.random.default_rng(seed_sequence(seed, stage, key))


def stable_hash(text: str) -> int:
    """A 64-bit integer hash of a string that is stable across processes and Python versions."""
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "little")
