"""Embeddings parquet: one row per item, an id column, a fixed-size-list float32 ``vector`` and extra columns.

The file's key-value metadata says how the vectors were made (``model``, ``weights_sha256``, ``preprocessing`` are
required; backbones' ``describe()`` gives them) plus ``format``, ``id_column`` and ``dim``, which the reader checks.
Files are written atomically and deterministically (same rows + metadata -> same bytes).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ..io.atomic import write_parquet
from ..io.tables import read_table

FORMAT = "pipeline3d-embeddings/1"
VECTOR_COLUMN = "vector"
REQUIRED_METADATA = ("model", "weights_sha256", "preprocessing")


@dataclass
class Embeddings:
    """What ``read_vectors`` returns: ids, (N, D) float32 vectors, the other columns and the metadata."""

    ids: list[str]
    vectors: np.ndarray
    columns: dict[str, list[Any]]
    metadata: dict[str, str]
    id_column: str

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])


def _as_str(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


def write_vectors(
    path: str | os.PathLike,
    ids: Sequence[str],
    vectors: np.ndarray,
    metadata: Mapping[str, Any],
    *,
    id_column: str = "shape_id",
    columns: Mapping[str, Sequence[Any]] | None = None,
) -> None:
    """Write ``vectors`` (N, D) keyed by unique string ``ids`` to ``path`` atomically.

    ``metadata`` values that are not strings are stored as canonical JSON. ``columns`` adds per-row columns
    (e.g. label, caption id) in the given order after the id column.
    """
    import pyarrow as pa

    vectors = np.asarray(vectors)
    if vectors.ndim != 2 or vectors.shape[1] < 1:
        raise ValueError(f"{path}: vectors must be (N, D) with D >= 1, got shape {vectors.shape}")
    if len(ids) != vectors.shape[0]:
        raise ValueError(f"{path}: {len(ids)} ids for {vectors.shape[0]} vectors")
    if not all(isinstance(i, str) for i in ids):
        raise TypeError(f"{path}: ids must be strings")
    seen: set[str] = set()
    for item in ids:
        if item in seen:
            raise ValueError(f"{path}: duplicate id {item!r}")
        seen.add(item)
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if not np.isfinite(vectors).all():
        raise ValueError(f"{path}: vectors contain NaN or inf")
    missing = [k for k in REQUIRED_METADATA if k not in metadata]
    if missing:
        raise ValueError(f"{path}: embeddings metadata lacks {missing}")
    reserved = {"format", "id_column", "dim"} & set(metadata)
    if reserved:
        raise ValueError(f"{path}: metadata keys {sorted(reserved)} are set by write_vectors")
    columns = dict(columns or {})
    for name, values in columns.items():
        if name in (id_column, VECTOR_COLUMN):
            raise ValueError(f"{path}: extra column {name!r} clashes with the id or vector column")
        if len(values) != len(ids):
            raise ValueError(f"{path}: column {name!r} has {len(values)} values for {len(ids)} rows")

    dim = vectors.shape[1]
    arrays = {id_column: pa.array(list(ids), pa.string())}
    arrays.update({name: pa.array(list(values)) for name, values in columns.items()})
    arrays[VECTOR_COLUMN] = pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1), pa.float32()), dim)
    meta = {k: _as_str(v) for k, v in metadata.items()}
    meta.update({"format": FORMAT, "id_column": id_column, "dim": str(dim)})
    write_parquet(path, pa.table(arrays), metadata=meta)


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The key-value metadata of an embeddings parquet (pandas/arrow internals left out), without reading rows."""
    import pyarrow.parquet as pq

    raw = pq.read_schema(path).metadata or {}
    meta = {k.decode(): v.decode() for k, v in raw.items()}
    return {k: v for k, v in meta.items() if k not in ("pandas", "ARROW:schema")}


def read_vectors(path: str | os.PathLike) -> Embeddings:
    """Read and check an embeddings parquet written by ``write_vectors``."""
    import pyarrow as pa

    path = Path(path)
    table = read_table(path)
    meta = read_metadata(path)
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path}: not an embeddings file (format {meta.get('format')!r}, expected {FORMAT!r})")
    id_column = meta["id_column"]
    dim = int(meta["dim"])
    vtype = table.schema.field(VECTOR_COLUMN).type
    if not (pa.types.is_fixed_size_list(vtype) and vtype.list_size == dim and vtype.value_type == pa.float32()):
        raise ValueError(f"{path}: column {VECTOR_COLUMN!r} is {vtype}, expected fixed_size_list<float>[{dim}]")
    column = table.column(VECTOR_COLUMN).combine_chunks()
    if column.null_count or column.flatten().null_count:
        raise ValueError(f"{path}: column {VECTOR_COLUMN!r} has null entries")
    vectors = column.flatten().to_numpy(zero_copy_only=False).reshape(-1, dim)
    ids = table.column(id_column).to_pylist()
    columns = {
        name: table.column(name).to_pylist() for name in table.column_names if name not in (id_column, VECTOR_COLUMN)
    }
    return Embeddings(
        ids=ids,
        vectors=np.ascontiguousarray(vectors, dtype=np.float32),
        columns=columns,
        metadata=meta,
        id_column=id_column,
    )
