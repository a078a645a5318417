"""Backends: what one primitive may see of a cached shape, as pools for the tokenizer.

=================  =========  ==========================================  =====================================
backend            primitive  point distance (``pt_dist``)                rays
=================  =========  ==========================================  =====================================
mesh               mesh       ``pool_dist_mesh`` (exact, to the mesh)     ``ray_*_mesh`` (first hits on the mesh)
pointcloud         pc         ``pool_dist_pc`` (to the nearest pc point)  ``ray_*_pc`` (voxel walk on pc occupancy)
pointcloud_noray   pc         ``pool_dist_pc``                            none
udfgrid            udf        ``pool_dist_grid`` (trilinear UDF grid)     none
voxel              pc         trilinear EDT of the pc occupancy           ``ray_*_pc``
=================  =========  ==========================================  =====================================

Every array is read through ``ShardReader(path, primitive)``, which refuses the arrays the primitive may not
see; a backend also refuses a reader opened for a wider primitive, and keys outside its primitive, so a
point-cloud backend cannot obtain a mesh-derived array even when asked. There are no fallback chains: a shard that
lacks an array the backend needs (e.g. a point-cloud item cache for the mesh backend) is an error naming the file.

The voxel backend rebuilds the occupancy of ``pc_xyz`` with the cache's own grid settings (``pc_grid``,
``pc_dilate``: the occupancy the cached ``ray_*_pc`` answers were walked on), takes its Euclidean distance
transform (``pipeline3d.data.cache.grids.edt_grid``) and looks it up trilinearly at the pool queries (the
reference used the nearest cell, and re-ran a per-ray Python walk on every load).

``occupancy`` gives the coarse G^3 occupancy target of what the backend sees (CMAE's R-MAE term): the voxelised
``pc_xyz`` for mesh / point-cloud / voxel backends, the occupied cells of ``occ_grid`` (i.e. its max-pooling when
G divides the grid) for udfgrid.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Sequence

import numpy as np

from ..data.cache import grids
from ..data.cache.voxel_walk import voxelize
from ..data.cache_schema import ARRAYS, PRIMITIVE_ARRAYS
from ..io.shards import ShardReader

POOL_KEYS = ("pool_xyz",)
RAY_GEOMETRY = ("ray_origin", "ray_dir")


class Backend:
    """One view of a cached shape. Stateless (so picklable); subclasses set the class attributes."""

    name: ClassVar[str]
    primitive: ClassVar[str]  # a key of cache_schema.PRIMITIVE_ARRAYS
    dist_key: ClassVar[str | None]  # the pool distance array (None: computed, see VoxelBackend)
    ray_source: ClassVar[str | None]  # "mesh" / "pc": which ray answers; None: no rays

    @property
    def visible(self) -> tuple[str, ...]:
        return PRIMITIVE_ARRAYS[self.primitive]

    def ray_keys(self) -> tuple[str, ...]:
        if self.ray_source is None:
            return ()
        s = self.ray_source
        return (*RAY_GEOMETRY, f"ray_hit_{s}", f"ray_t_{s}", f"ray_normal_{s}")

    def pool_keys(self) -> tuple[str, ...]:
        return (*POOL_KEYS, self.dist_key) if self.dist_key else POOL_KEYS

    def occupancy_keys(self) -> tuple[str, ...]:
        return ("pc_xyz",)

    def keys(self, occ_grid: int = 0) -> tuple[str, ...]:
        """The arrays this backend reads (pools, plus the occupancy source when ``occ_grid`` > 0)."""
        wanted = [*self.pool_keys(), *self.ray_keys(), *(self.occupancy_keys() if occ_grid else ())]
        return tuple(dict.fromkeys(wanted))

    # -- reading ---------------------------------------------------------------------------------------------
    def open(self, path: str | Path) -> ShardReader:
        """A reader of ``path`` restricted to this backend's primitive."""
        return ShardReader(path, self.primitive)

    def check_reader(self, reader: ShardReader) -> None:
        wider = sorted(set(reader.allowed) - set(self.visible))
        if wider:
            raise PermissionError(f"backend {self.name} (primitive {self.primitive}) refuses a reader of "
                                  f"{reader.path} that can see {wider}: open it with backend.open()")

    def read(self, reader: ShardReader, row: int, keys: Sequence[str] | None = None, *,
             occ_grid: int = 0) -> dict[str, np.ndarray]:
        """Arrays of one row, through ``reader``; any key outside this backend's primitive is refused."""
        self.check_reader(reader)
        keys = self.keys(occ_grid) if keys is None else tuple(keys)
        forbidden = [k for k in keys if k in ARRAYS and k not in self.visible]
        if forbidden:
            raise PermissionError(f"backend {self.name} (primitive {self.primitive}) may not read {forbidden}")
        absent = [k for k in keys if k in self.visible and k not in reader.allowed]
        if absent:
            raise ValueError(f"{reader.path}: backend {self.name} needs arrays {absent} that this shard does not "
                             f"hold (kind {reader.attrs.get('kind')!r}, "
                             f"primitive {reader.attrs.get('primitive', 'all')!r})")
        return reader.read(row, keys)

    # -- pools -----------------------------------------------------------------------------------------------
    def pools_from(self, arrays: dict[str, np.ndarray], profile: dict) -> dict[str, np.ndarray]:
        """The tokenizer pools from arrays read by ``read`` (``profile``: the shard's cache profile)."""
        pools = {"pt_xyz": np.asarray(arrays["pool_xyz"], dtype=np.float32),
                 "pt_dist": np.asarray(self.distances(arrays, profile), dtype=np.float32)}
        if self.ray_source is not None:
            s = self.ray_source
            pools.update(ray_o=np.asarray(arrays["ray_origin"], dtype=np.float32),
                         ray_d=np.asarray(arrays["ray_dir"], dtype=np.float32),
                         ray_hit=np.asarray(arrays[f"ray_hit_{s}"], dtype=np.uint8),
                         ray_t=np.asarray(arrays[f"ray_t_{s}"], dtype=np.float32),
                         ray_n=np.asarray(arrays[f"ray_normal_{s}"], dtype=np.float32))
        return pools

    def distances(self, arrays: dict[str, np.ndarray], profile: dict) -> np.ndarray:
        """The unsigned distance of every pool query, as this backend knows it."""
        return arrays[self.dist_key]

    def pools(self, reader: ShardReader, row: int) -> dict[str, np.ndarray]:
        """``pt_xyz``, ``pt_dist`` (float32) and, with rays, ``ray_o, ray_d, ray_hit, ray_t, ray_n``."""
        return self.pools_from(self.read(reader, row), reader.profile)

    # -- occupancy target --------------------------------------------------------------------------------------
    def occupancy_from(self, arrays: dict[str, np.ndarray], grid: int) -> np.ndarray:
        """Boolean (grid, grid, grid) occupancy of what this backend sees."""
        return voxelize(np.asarray(arrays["pc_xyz"], dtype=np.float64), grid)

    def occupancy(self, reader: ShardReader, row: int, grid: int) -> np.ndarray:
        return self.occupancy_from(self.read(reader, row, self.occupancy_keys()), grid)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class MeshBackend(Backend):
    name, primitive, dist_key, ray_source = "mesh", "mesh", "pool_dist_mesh", "mesh"


class PointCloudBackend(Backend):
    name, primitive, dist_key, ray_source = "pointcloud", "pc", "pool_dist_pc", "pc"


class PointCloudNoRayBackend(Backend):
    name, primitive, dist_key, ray_source = "pointcloud_noray", "pc", "pool_dist_pc", None


class UdfGridBackend(Backend):
    name, primitive, dist_key, ray_source = "udfgrid", "udf", "pool_dist_grid", None

    def occupancy_keys(self) -> tuple[str, ...]:
        return ("occ_grid",)

    def occupancy_from(self, arrays: dict[str, np.ndarray], grid: int) -> np.ndarray:
        # each occupied fine cell marks the coarse cell holding its centre: max-pooling when grid divides it
        return voxelize(grids.centres_of(np.asarray(arrays["occ_grid"]) > 0), grid)


class VoxelBackend(Backend):
    name, primitive, dist_key, ray_source = "voxel", "pc", None, "pc"

    def pool_keys(self) -> tuple[str, ...]:
        return ("pool_xyz", "pc_xyz")

    def distances(self, arrays: dict[str, np.ndarray], profile: dict) -> np.ndarray:
        points = np.asarray(arrays["pc_xyz"], dtype=np.float64)
        udf, _ = grids.edt_grid(points, int(profile["pc_grid"]), int(profile["pc_dilate"]))
        return grids.trilinear(udf, np.asarray(arrays["pool_xyz"], dtype=np.float64))


BACKENDS: dict[str, type[Backend]] = {cls.name: cls for cls in (MeshBackend, PointCloudBackend,
                                                                  PointCloudNoRayBackend, UdfGridBackend,
                                                                  VoxelBackend)}


def get_backend(name: str) -> Backend:
    try:
        return BACKENDS[name]()
    except KeyError:
        raise ValueError(f"unknown backend {name!r} (expected one of {sorted(BACKENDS)})") from None
