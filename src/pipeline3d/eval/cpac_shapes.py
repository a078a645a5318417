"""Reading CPAC's shapes: a backend's context pools and the exact mesh distances, through separate readers."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..io.shards import ShardReader
from ..tokens.backends import Backend, get_backend
from .cpac import TARGET_KEY, TARGET_PRIMITIVE


@dataclass(frozen=True)
class CpacShape:
    shape_id: str
    shard_path: str
    row: int
    label: int


class ShapeSource:
    """Context pools through a backend's own restricted readers, targets through separate mesh readers."""

    def __init__(self, backend: str | Backend):
        self.backend = get_backend(backend) if isinstance(backend, str) else backend
        self._context: dict[str, ShardReader] = {}
        self._target: dict[str, ShardReader] = {}

    def _readers(self, path: str) -> tuple[ShardReader, ShardReader]:
        if path not in self._context:
            self._context[path] = self.backend.open(path)
            target = ShardReader(path, TARGET_PRIMITIVE)
            if TARGET_KEY not in target.allowed:
                target.close()
                raise ValueError(
                    f"{path}: the cache holds no exact mesh distances ({TARGET_KEY}); CPAC needs the "
                    "cache of a mesh dataset"
                )
            self._target[path] = target
        return self._context[path], self._target[path]

    def load(self, shape: CpacShape) -> tuple[dict[str, Any], np.ndarray]:
        """(the backend's pools, the exact distances over the pool) of one shape."""
        context, target = self._readers(shape.shard_path)
        if not 0 <= shape.row < len(context) or context.shape_ids[shape.row] != shape.shape_id:
            raise ValueError(f"{shape.shard_path}: row {shape.row} does not hold {shape.shape_id} (stale index?)")
        pools = self.backend.pools(context, shape.row)
        exact = np.asarray(target.read(shape.row, [TARGET_KEY])[TARGET_KEY], dtype=np.float64)
        return pools, exact

    def close(self) -> None:
        for reader in (*self._context.values(), *self._target.values()):
            reader.close()
        self._context, self._target = {}, {}


def shapes_from(
    where: Mapping[str, tuple[str | os.PathLike, int]], labels: Mapping[str, int], ids: Sequence[str]
) -> list[CpacShape]:
    """CpacShapes of ``ids`` (sorted) from a cache lookup (shape id -> (shard, row)); every id must be cached."""
    missing = sorted(set(ids) - set(where))
    if missing:
        raise ValueError(f"{len(missing)} CPAC shapes are not in the cache (first: {missing[:3]})")
    return [CpacShape(sid, str(Path(where[sid][0])), int(where[sid][1]), int(labels[sid])) for sid in sorted(ids)]
