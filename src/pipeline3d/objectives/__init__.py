"""Training objectives over a token batch: ``build_objective(name, encoder, cfg)``.

Each objective owns the encoder (``objective.encoder``) and its heads, and implements
``forward(batch, *, step, total_steps, generator) -> (loss, logs)`` and ``after_step()``.
"""

from __future__ import annotations

import inspect
from typing import Any

from torch import nn

from pipeline3d.objectives.base import Objective
from pipeline3d.objectives.classify import ClassifyObjective
from pipeline3d.objectives.cmae import CmaeObjective
from pipeline3d.objectives.mae import MaeObjective
from pipeline3d.objectives.nepa import NepaObjective
from pipeline3d.objectives.point_mae import PointMaeObjective

OBJECTIVES: dict[str, type[Objective]] = {
    "nepa": NepaObjective,
    "mae": MaeObjective,
    "cmae": CmaeObjective,
    "point_mae": PointMaeObjective,
    "classify": ClassifyObjective,
}


def objective_keys(name: str) -> list[str]:
    """The config keys objective ``name`` accepts."""
    params = inspect.signature(OBJECTIVES[name].__init__).parameters
    return [p for p, spec in params.items() if spec.kind is inspect.Parameter.KEYWORD_ONLY]


def build_objective(name: str, encoder: nn.Module, cfg: dict[str, Any]) -> Objective:
    """Build objective ``name`` around ``encoder`` from its config section.

    Unknown keys are an error (a typo would otherwise silently fall back to a default).
    """
    if name not in OBJECTIVES:
        raise KeyError(f"unknown objective {name!r}; known objectives: {', '.join(OBJECTIVES)}")
    accepted = objective_keys(name)
    unknown = sorted(set(cfg) - set(accepted))
    if unknown:
        raise ValueError(f"objective {name!r}: unknown config keys {unknown}; accepted keys: {accepted}")
    return OBJECTIVES[name](encoder, **cfg)


__all__ = [
    "OBJECTIVES",
    "ClassifyObjective",
    "CmaeObjective",
    "MaeObjective",
    "NepaObjective",
    "Objective",
    "PointMaeObjective",
    "build_objective",
    "objective_keys",
]
