"""N-way K-shot episodes: the field's few-shot protocol (Point-BERT's ModelNet40 folds), drawn from our own seed.

Per setting (``"<N>w<K>s"``) and fold: N classes, K support shapes per class from the ttv train split and up to
``query_per_class`` query shapes per class from the ttv test split (train -> support, test -> query, as the released
folds do). The field's generator set no seed, so its folds cannot be reproduced; ours are a pure function of the
config seed, the dataset and stable ids (class labels, near-duplicate group ids), so a fold never changes unless the
data or the seed does.

- Eligible classes: at least K train groups (a class with fewer cannot give K distinct support shapes) and at least
  one test group. With fewer than N eligible classes the setting is skipped for the dataset: logged and written into
  the parquet metadata, not an error (a small dataset simply has no 10-way 20-shot episode).
- Query: the first ``query_per_class`` test groups of the class in seeded order; a class with fewer gets fewer
  (logged, and the episode table shows the per-class query range).
- Near-duplicates: a group contributes one representative and belongs to one role. Support and query come from
  different ttv splits, which never share a group; the maker checks it anyway, because a leak here would inflate
  every number of the table.
- Per (setting, fold), one draw (``family_salt``) orders the eligible classes and each class's groups by a salted
  hash; labels are remapped 0..N-1 in the order of the original label.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence

import pandas as pd

from ...rng import stable_hash
from .common import family_salt, group_table, members_by_group, representative

log = logging.getLogger("pipeline3d.make_splits")

SETTING = re.compile(r"^([1-9][0-9]*)w([1-9][0-9]*)s$")
COLUMNS = ["setting", "way", "shot", "fold", "shape_id", "label", "episode_label", "role"]


def parse_setting(setting: str) -> tuple[int, int]:
    """``"5w10s"`` -> (5, 10); anything else is a ValueError naming the setting."""
    match = SETTING.match(str(setting))
    if not match:
        raise ValueError(f"episode setting {setting!r} is not of the form <N>w<K>s (e.g. 5w10s)")
    return int(match.group(1)), int(match.group(2))


def _pools(subset: pd.DataFrame, salt: int) -> dict[int, list[str]]:
    """class -> its groups in seeded order (a group counts for its primary class only)."""
    groups = group_table(subset, salt).sort_values(["primary", "key", "group"], kind="stable")
    return {int(label): cls["group"].tolist() for label, cls in groups.groupby("primary", sort=True)}


def _groups_per_class(subset: pd.DataFrame) -> dict[int, int]:
    if subset.empty:
        return {}
    return {label: len(groups) for label, groups in _pools(subset, 0).items()}


def eligible_classes(n_train: dict[int, int], n_test: dict[int, int], shot: int) -> list[int]:
    """Classes with at least ``shot`` train groups and one test group, sorted."""
    return sorted(c for c, n in n_train.items() if n >= shot and n_test.get(c, 0) >= 1)


def _choose_classes(eligible: Sequence[int], way: int, salt: int) -> list[int]:
    """N of the eligible classes by a salted hash of the label (stable ids, not list positions), sorted."""
    ranked = sorted(eligible, key=lambda c: (stable_hash(f"{salt}/class/{c}"), c))
    return sorted(ranked[:way])


def _episode(
    train: pd.DataFrame, test: pd.DataFrame, classes: list[int], shot: int, per_class: int, salt: int
) -> list[tuple[str, int, int, str]]:
    """(shape_id, label, episode_label, role) of one episode."""
    support_pool, query_pool = _pools(train, salt), _pools(test, salt)
    by_train, by_test = members_by_group(train), members_by_group(test)
    rows = []
    for episode_label, label in enumerate(classes):
        support = support_pool[label][:shot]
        query = query_pool[label][:per_class]
        if set(support) & set(query):
            raise RuntimeError(
                f"class {label}: near-duplicate groups {sorted(set(support) & set(query))[:3]} are in "
                "both the train and the test split; the ttv split is broken"
            )
        rows += [(representative(by_train[g], label, salt), label, episode_label, "support") for g in support]
        rows += [(representative(by_test[g], label, salt), label, episode_label, "query") for g in query]
    return rows


def make_episodes(
    items: pd.DataFrame,
    ttv: pd.DataFrame,
    settings: Sequence[str],
    folds: int,
    query_per_class: int,
    seed: int,
    dataset: str,
    names: dict[int, str],
) -> pd.DataFrame:
    """Columns setting, way, shot, fold, shape_id, label, episode_label, role (support | query).

    ``frame.attrs["notes"]`` holds, per setting, the eligible class count, the query range per class and, for a
    skipped setting, why (build_splits writes it into the parquet metadata).
    """
    train = items[(ttv["split"] == "train").values]
    test = items[(ttv["split"] == "test").values]
    n_train, n_test = _groups_per_class(train), _groups_per_class(test)
    rows, notes = [], {}
    for setting in settings:
        way, shot = parse_setting(setting)
        eligible = eligible_classes(n_train, n_test, shot)
        notes[setting] = {"eligible_classes": len(eligible)}
        if len(eligible) < way:
            notes[setting]["skipped"] = (
                f"only {len(eligible)} classes have >= {shot} train groups and a test shape (need {way})"
            )
            log.info("episodes %s: skipped for %s: %s", setting, dataset, notes[setting]["skipped"])
            continue
        log.info(
            "episodes %s: %d of %d classes eligible (>= %d train groups and a test shape), %d folds",
            setting,
            len(eligible),
            len(n_train),
            shot,
            int(folds),
        )
        for fold in range(int(folds)):
            salt = family_salt(seed, dataset, f"episodes/{setting}/fold{fold}")
            classes = _choose_classes(eligible, way, salt)
            rows += [
                (setting, way, shot, fold, *row)
                for row in _episode(train, test, classes, shot, int(query_per_class), salt)
            ]
        notes[setting] |= _query_note(rows, setting, int(query_per_class), names)
    out = pd.DataFrame(rows, columns=COLUMNS).astype(
        {
            "setting": str,
            "way": "int64",
            "shot": "int64",
            "fold": "int64",
            "shape_id": str,
            "label": "int64",
            "episode_label": "int64",
            "role": str,
        }
    )
    out.attrs["notes"] = notes
    return out


def _query_note(rows: list[tuple], setting: str, per_class: int, names: dict[int, str]) -> dict:
    """Query shapes per class (min, max over the setting's folds); classes short of ``per_class`` are logged."""
    frame = pd.DataFrame([r for r in rows if r[0] == setting and r[-1] == "query"], columns=COLUMNS)
    counts = frame.groupby(["fold", "label"]).size()
    short = sorted({int(label) for (_, label), n in counts.items() if n < per_class})
    if short:
        log.info(
            "episodes %s: %d classes have fewer than %d test groups, so fewer query shapes: %s",
            setting,
            len(short),
            per_class,
            ", ".join(f"{names.get(c, c)}={counts.xs(c, level='label').iloc[0]}" for c in short),
        )
    return {"query_per_class_min": int(counts.min()), "query_per_class_max": int(counts.max())}
