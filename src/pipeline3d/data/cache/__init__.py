"""The per-shape training cache: normalise, sample, exact distances, rays, voxel walk and grids.

Modules (one job each): ``normalize`` (unit-ball frame), ``sampling`` (area-weighted surface points, query pool),
``bvh`` (numba-compiled triangle/point BVHs: exact closest triangle, first ray hits, nearest point),
``distances`` (exact point-to-mesh distance and nearest neighbours on those BVHs; fcpw as the reference engine),
``rays`` (fixed camera layout, first hits on the same BVH; Embree as the test oracle), ``voxel_walk`` (compiled
Amanatides–Woo on point occupancy), ``grids`` (edt / narrowband / exact UDF and occupancy), ``pointcloud``
(resampling, PCA normals), ``build`` (one shape -> one cache row), ``threads`` (keeping native engines on one
core).

The public names are imported lazily, so ``pipeline3d.data.cache.threads`` can be used before numpy is loaded
(the shard stage sets thread limits first).
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "CacheProfile": "build",
    "StageTimer": "build",
    "cache_mesh": "build",
    "cache_pointcloud": "build",
    "purpose_rngs": "build",
    "ShapeError": "errors",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
