"""Split families (one module each): ttv, kfold, unpaired, fewshot, qg, episodes; ``build.run`` writes them all."""

from .build import FAMILIES, FAMILY_KEYS, build_splits, run
from .common import allocate, assign_groups, load_items

__all__ = ["FAMILIES", "FAMILY_KEYS", "allocate", "assign_groups", "build_splits", "load_items", "run"]
