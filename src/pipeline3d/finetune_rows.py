"""What each row of the few-shot tables is: a scratch model, a pretrained encoder (fine-tuned or linearly probed),
or the hand-crafted descriptor. Shared by the config checks, the workflow's input functions and the jobs (no torch).

Row names (``finetune.methods``): a name in ``finetune.scratch`` (random init; each may override ``model`` and
``tokens``), a pretrain method (full fine-tuning), ``<method>-linear`` (a linear probe of that pretrained encoder:
frozen, only the head trains) and ``descriptor`` (shape distributions + logistic regression, no learned features).
"""

from __future__ import annotations

from typing import Any

DESCRIPTOR = "descriptor"
LINEAR_SUFFIX = "-linear"
KINDS = ("scratch", "pretrained", "linear", "descriptor")


def row_kind(name: str, config: dict) -> tuple[str, str | None]:
    """(kind, pretrain method the row reads or None); ValueError naming the row when it is none of the kinds."""
    methods = config.get("pretrain", {}).get("methods", {})
    scratch = config.get("finetune", {}).get("scratch", {"scratch": {}})
    if name == DESCRIPTOR:
        return "descriptor", None
    if name in scratch:
        return "scratch", None
    if name in methods:
        return "pretrained", name
    if name.endswith(LINEAR_SUFFIX) and name[: -len(LINEAR_SUFFIX)] in methods:
        return "linear", name[: -len(LINEAR_SUFFIX)]
    known = [DESCRIPTOR, *sorted(scratch), *sorted(methods), *(f"{m}{LINEAR_SUFFIX}" for m in sorted(methods))]
    raise ValueError(f"{name!r} is not a few-shot row (known: {', '.join(known)})")


def row_architecture(name: str, config: dict) -> dict[str, Any]:
    """``model`` and ``tokens`` a row's encoder is built with: the global sections with the scratch entry's (or the
    pretrain method's) overrides on top."""
    kind, method = row_kind(name, config)
    if kind == "scratch":
        entry = config.get("finetune", {}).get("scratch", {}).get(name, {})
    elif method is not None:
        entry = config["pretrain"]["methods"][method]
    else:
        entry = {}
    return {
        "model": {**config.get("model", {}), **(entry.get("model") or {})},
        "tokens": {**config.get("tokens", {}), **(entry.get("tokens") or {})},
    }


def all_row_names(config: dict) -> list[str]:
    """Every name a row may have under this config (for the workflow's wildcard constraint)."""
    methods = sorted(config.get("pretrain", {}).get("methods", {}))
    scratch = sorted(config.get("finetune", {}).get("scratch", {"scratch": {}}))
    return [DESCRIPTOR, *scratch, *methods, *(f"{m}{LINEAR_SUFFIX}" for m in methods)]
