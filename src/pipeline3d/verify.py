"""``pipeline3d verify``: read back every output of a results tree against its checksums and list what is damaged.

What each kind of file is checked against:

- ``.h5`` (cache shards, unpaired stores, item stores): every chunk of every array against its Fletcher-32
  checksum, the file's metadata against HDF5's own checksums, the shape ids against ``ids_sha256``; cache shards
  also against their own contract (``validate_shard``).
- ``.parquet`` (manifests, splits, indexes, embeddings, tables): every page against its CRC.
- ``.safetensors``: the sha256 the JSON beside it records (exported encoders and heads); without one, only that
  the file parses.
- ``.json``: that it parses.

Logs, benchmarks, plots, Markdown tables and training state (``_state``) are not outputs read back by a stage and
are skipped. ``--move-aside`` renames each damaged file to ``<name>.invalid``, so the workflow's next run rebuilds
it (and what depends on it).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

SKIPPED_DIRS = {"logs", "benchmarks", "_state"}
CHECKED = (".h5", ".parquet", ".safetensors", ".json")


@dataclass
class Report:
    checked: list[Path] = field(default_factory=list)
    damaged: dict[Path, str] = field(default_factory=dict)


def _check_h5(path: Path) -> str | None:
    import h5py

    from .io.h5integrity import damaged_datasets, read_ids
    from .io.integrity import IntegrityError
    from .io.shards import FORMAT as SHARD_FORMAT
    from .io.shards import validate_shard

    try:
        with h5py.File(path, "r") as h5:
            is_shard = h5.attrs.get("format") == SHARD_FORMAT
            if not is_shard:
                problems = damaged_datasets(h5, path)
                if problems:
                    return "; ".join(p.split(": ", 1)[1] for p in problems)
                if "shape_id" in h5:
                    read_ids(h5, path)
    except IntegrityError as exc:
        return str(exc).split(": ", 1)[1]
    except (OSError, RuntimeError, KeyError, ValueError) as exc:
        return f"unreadable HDF5 ({type(exc).__name__}: {exc})"
    return validate_shard(path, deep=True) if is_shard else None


def _check_parquet(path: Path) -> str | None:
    from .io.integrity import IntegrityError
    from .io.tables import read_table

    try:
        read_table(path)
    except IntegrityError as exc:
        return str(exc).split(": ", 1)[1]
    return None


def _sidecar_sha(path: Path) -> str | None:
    """The sha256 a JSON beside ``path`` records for it (``{"weights": <name>, "sha256": ...}``)."""
    for candidate in sorted(path.parent.glob("*.json")):
        try:
            meta = json.loads(candidate.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(meta, dict) and meta.get("weights") == path.name and meta.get("sha256"):
            return str(meta["sha256"])
    return None


def _check_safetensors(path: Path) -> str | None:
    from .io.weights import file_sha256

    expected = _sidecar_sha(path)
    if expected is not None:
        actual = file_sha256(path)
        return None if actual == expected else f"sha256 {actual[:12]} does not match its JSON ({expected[:12]})"
    try:
        from safetensors import safe_open

        with safe_open(str(path), "np") as fh:
            for key in fh.keys():
                fh.get_tensor(key)
    except Exception as exc:  # noqa: BLE001 - any parse failure means damaged
        return f"not a readable safetensors file ({type(exc).__name__}: {exc})"
    return None


def _check_json(path: Path) -> str | None:
    try:
        json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        return f"not valid JSON ({exc})"
    return None


CHECKERS = {".h5": _check_h5, ".parquet": _check_parquet, ".safetensors": _check_safetensors, ".json": _check_json}


def outputs(results: Path) -> list[Path]:
    """The files ``verify`` reads back: checked suffixes, outside logs / benchmarks / training state."""
    found = []
    for path in sorted(results.rglob("*")):
        rel = path.relative_to(results).parts
        if path.is_file() and path.suffix in CHECKED and not SKIPPED_DIRS & set(rel[:-1]):
            found.append(path)
    return found


def verify(results: str | Path) -> Report:
    report = Report()
    for path in outputs(Path(results)):
        report.checked.append(path)
        problem = CHECKERS[path.suffix](path)
        if problem:
            report.damaged[path] = problem
    return report
