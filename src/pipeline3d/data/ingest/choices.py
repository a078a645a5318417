"""Decisions over the pooled items of every source: duplicate ids, labels, the ``max_items`` subset."""

from __future__ import annotations

import collections
from fractions import Fraction

from ...io.rejects import Reject
from ...rng import stable_hash
from .spec import Planned


def drop_duplicates(planned: list[Planned]) -> tuple[list[Planned], list[Reject]]:
    """Sorted by shape id; for a repeated id the first in (shape_id, source, member) order is kept (so which one
    wins never depends on the order of the configured paths). An id found in two configured paths is reported
    with both paths: the sources overlap, which is a data problem worth seeing, not something to merge."""

    def order(p: Planned):
        return p.shape_id, p.source, p.member.index if p.member else (p.h5_index or 0)

    kept, rejects = [], []
    for p in sorted(planned, key=order):
        if kept and kept[-1].shape_id == p.shape_id:
            first = kept[-1]
            if first.origin != p.origin:
                detail = f"shape id {p.shape_id} is in two sources, {first.origin} and {p.origin}; kept {first.source}"
            else:
                detail = f"shape id {p.shape_id} already used by {first.source}"
            rejects.append(Reject(p.source, "duplicate_id", detail))
        else:
            kept.append(p)
    return kept, rejects


def assign_labels(planned: list[Planned], class_names: tuple[str, ...] | None) -> list[str]:
    """Set ``label`` on every item; return the class names (label i -> name i)."""
    if planned and all(p.label_value is not None for p in planned):
        by_value = {p.label_value: p.label_name for p in planned}
        known = list(class_names or [])
        top = max(max(by_value) + 1, len(known))
        for p in planned:
            p.label = int(p.label_value)
        return [by_value.get(i, known[i] if i < len(known) else f"class_{i:03d}") for i in range(top)]
    names = sorted({p.label_name for p in planned})
    index = {n: i for i, n in enumerate(names)}
    for p in planned:
        p.label = index[p.label_name]
    return names


def stratified_subset(planned: list[Planned], max_items: int | None) -> list[Planned]:
    """At most ``max_items`` items, spread over the classes in proportion to their sizes (every class gets one
    before any gets two); inside a class the order is a stable hash of the shape id, so the subset does not
    depend on list order and grows monotonically with ``max_items``. Returned sorted by shape id."""
    if max_items is None or len(planned) <= max_items:
        return planned
    by_class: dict[str, list[Planned]] = collections.defaultdict(list)
    for p in planned:
        by_class[p.label_name].append(p)
    ranked = []
    for name, items in by_class.items():
        items.sort(key=lambda p: (stable_hash(p.shape_id), p.shape_id))
        ranked += [(Fraction(r, len(items)), name, r, p) for r, p in enumerate(items)]
    ranked.sort(key=lambda t: t[:3])
    chosen = [t[3] for t in ranked[:max_items]]
    return sorted(chosen, key=lambda p: p.shape_id)
