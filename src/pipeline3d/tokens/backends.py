"""Backends: what one primitive may see of a cached shape, as pools for the tokenizer.

=================  =========  ==========================================  =====================================
backend            primitive  point distance (``pt_dist``)                rays
=================  =========  ==========================================  =====================================
mesh               mesh       ``pool_dist_mesh`` (exact, to the mesh)     ``ray_*_mesh`` (first hits on the mesh)
pointcloud         pc         ``pool_dist_pc`` (to the nearest pc point)  ``ray_*_pc`` (voxel walk on pc occupancy)
pointcloud_noray   pc         ``pool_dist_pc``                            none
udfgrid            udf        ``pool_dist_grid`` (trilinear UDF grid)     none
voxel              pc         ``pool_dist_voxel``, else computed (below)  ``ray_*_pc``
=================  =========  ==========================================  =====================================

Every array is read through ``ShardReader(path, primitive)``, which refuses the arrays the primitive may not
see; a backend also refuses a reader opened for a wider primitive, and keys outside its primitive, so a
point-cloud backend cannot obtain a mesh-derived array even when asked. There are no fallback chains: a shard that
lacks an array the backend needs (e.g. a point-cloud item cache for the mesh backend) is an error naming the file.

The voxel backend's distances are the Euclidean distance transform (the values of
``pipeline3d.data.cache.grids.edt_grid``) of the occupancy of ``pc_xyz`` with the cache's own grid settings
(``pc_grid``, ``pc_dilate``: the occupancy the cached ``ray_*_pc`` answers were walked on), looked up trilinearly
at the pool queries (the reference used the nearest cell, and re-ran a per-ray Python walk on every load). A cache
built with ``voxel_pool_dist`` stores them (``pool_dist_voxel``); otherwise they are computed from ``pc_xyz`` with
the same bits. A draw uses a few hundred of the 20k queries, so the computed ``pt_dist`` is lazy
(``VoxelDistances``): only the corner cells of the drawn queries are evaluated, by a nearest-neighbour query among
the occupied cells, with the same bits as the full grid (a shape drawn many times from a per-process cache
switches to the full grid once that is cheaper).

``occupancy`` gives the coarse G^3 occupancy target of what the backend sees (CMAE's R-MAE term): the voxelised
``pc_xyz`` for mesh / point-cloud / voxel backends, the occupied cells of ``occ_grid`` (i.e. its max-pooling when
G divides the grid) for udfgrid.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, ClassVar, Sequence, Union

import numpy as np

from ..data.cache import grids
from ..data.cache.bvh import PointTree
from ..data.cache.voxel_walk import dilate, voxelize
from ..io.cache_schema import ARRAYS, PRIMITIVE_ARRAYS
from ..io.shards import ShardReader

POOL_KEYS = ("pool_xyz",)
RAY_GEOMETRY = ("ray_origin", "ray_dir")

# A pool's point distances: an array over the whole pool, or a callable giving them (float32) at pool indices.
PointDistances = Union[np.ndarray, Callable[[np.ndarray], np.ndarray]]


def surface_cells(occupancy: np.ndarray) -> np.ndarray:
    """Occupied cells with an empty face neighbour inside the grid (the grid's outside does not count as empty)."""
    inner = occupancy.copy()
    for axis in range(3):
        lead, trail = [slice(None)] * 3, [slice(None)] * 3
        lead[axis], trail[axis] = slice(1, None), slice(None, -1)
        inner[tuple(lead)] &= occupancy[tuple(trail)]
        inner[tuple(trail)] &= occupancy[tuple(lead)]
    return occupancy & ~inner


class VoxelDistances:
    """Trilinear EDT of an occupancy at pool queries, evaluated lazily: ``self(indices)`` -> float32 distances.

    The EDT value of a cell is the distance from its centre to the nearest occupied cell centre (0 when occupied).
    That nearest occupied cell always has an empty face neighbour (its neighbour one step towards the query, along
    any axis where they differ, is inside the grid and closer), so a tree over those surface cells alone (about
    half the occupied cells on the SHREC'07 clouds) answers it. The tree works in cell units on integer
    coordinates: the squared distances are the same exact integers as ``grids.squared_edt`` and go through the same
    ``sqrt(.) * cell_size``, so every corner value has the bits of the full grid, and ``grids.trilinear`` then
    reads them (from an otherwise unfilled grid) with the same weights and sum order.

    A shape kept in a per-process cache is drawn again and again: once the drawn points add up to
    ``MATERIALISE_FRACTION`` of the pool (about the cost of one full EDT at 64^3 and a 20k pool, measured), the
    whole pool is evaluated once through the full grid (same bits) and later draws are array lookups.
    """

    MATERIALISE_FRACTION = 0.25

    def __init__(self, occupancy: np.ndarray, queries: np.ndarray):
        if not occupancy.any():
            raise ValueError("voxel distances: no occupied cell (no points)")
        self.occupancy = np.ascontiguousarray(occupancy, dtype=bool)
        self.queries = queries
        self.grid = occupancy.shape[0]
        surface = np.flatnonzero(surface_cells(self.occupancy))
        g = self.grid
        cells = np.stack([surface // (g * g), surface // g % g, surface % g], axis=1).astype(np.float64)
        # a full grid has no empty cell to measure from: every value is 0
        self.tree = PointTree(cells) if len(cells) else None
        self.pool: np.ndarray | None = None  # every query's distance, once materialised
        self.asked = 0
        tree = sum(a.nbytes for a in vars(self.tree).values() if isinstance(a, np.ndarray)) if self.tree else 0
        # fixed for the object's life (the dataset's cache budget adds it on insertion, subtracts it on eviction)
        self.nbytes = self.occupancy.nbytes + tree + 4 * len(queries)

    def __len__(self) -> int:
        return len(self.queries)

    def corner_cells(self, points: np.ndarray) -> np.ndarray:
        """Flat indices of the 8 cells ``grids.trilinear`` reads for each point (same clamping as it)."""
        g = self.grid
        x = np.clip((points - grids.LO) / grids.cell_size(g) - 0.5, 0.0, g - 1.0)
        low = np.minimum(np.floor(x).astype(np.int64), max(g - 2, 0))
        high = np.minimum(low + 1, g - 1)
        ends = np.stack([low, high], axis=1)  # (n, 2, 3): the lower / upper cell along each axis
        i, j, k = ends[:, :, None, None, 0], ends[:, None, :, None, 1], ends[:, None, None, :, 2]
        return ((i * g + j) * g + k).reshape(len(points), 8)

    def cell_values(self, flat: np.ndarray) -> np.ndarray:
        """EDT values (world units, float64) of the cells with flat indices ``flat``."""
        values = np.zeros(len(flat))
        empty = ~self.occupancy.ravel()[flat]
        if empty.any():
            cells = np.stack(np.unravel_index(flat[empty], self.occupancy.shape), axis=1).astype(np.float64)
            values[empty] = self.tree.query(cells)[0] * grids.cell_size(self.grid)
        return values

    def materialise(self) -> np.ndarray:
        """Every query's distance through the full grid (``grids.edt_grid``'s values), then drop the tree."""
        if self.pool is None:
            self.pool = grids.edt_at(self.occupancy, self.queries)
            self.tree = None
        return self.pool

    def __call__(self, indices: np.ndarray) -> np.ndarray:
        indices = np.asarray(indices, dtype=np.int64)
        if self.pool is None:
            self.asked += len(indices)
            if self.asked >= self.MATERIALISE_FRACTION * len(self.queries):
                self.materialise()
        if self.pool is not None:
            return self.pool[indices]
        points = np.asarray(self.queries, dtype=np.float64)[indices]
        # no dedup: sorting costs as much as the repeated queries; the tokenizer's Morton order keeps them coherent
        flat = self.corner_cells(points).ravel()
        grid = np.empty(self.grid**3)  # only the corners are filled: the interpolation reads nothing else
        grid[flat] = self.cell_values(flat)
        return grids.trilinear(grid.reshape(self.occupancy.shape), points).astype(np.float32)


class Backend:
    """One view of a cached shape. Stateless (so picklable); subclasses set the class attributes."""

    name: ClassVar[str]
    primitive: ClassVar[str]  # a key of cache_schema.PRIMITIVE_ARRAYS
    dist_key: ClassVar[str]  # the pool distance array
    ray_source: ClassVar[str | None]  # "mesh" / "pc": which ray answers; None: no rays

    @property
    def visible(self) -> tuple[str, ...]:
        return PRIMITIVE_ARRAYS[self.primitive]

    def ray_keys(self) -> tuple[str, ...]:
        if self.ray_source is None:
            return ()
        s = self.ray_source
        return (*RAY_GEOMETRY, f"ray_hit_{s}", f"ray_t_{s}", f"ray_normal_{s}")

    def pool_keys(self, present: Sequence[str] = ()) -> tuple[str, ...]:
        return (*POOL_KEYS, self.dist_key)

    def occupancy_keys(self) -> tuple[str, ...]:
        return ("pc_xyz",)

    def keys(self, occ_grid: int = 0, present: Sequence[str] = ()) -> tuple[str, ...]:
        """The arrays this backend reads (pools, plus the occupancy source when ``occ_grid`` > 0) from a shard
        holding ``present`` (only the voxel backend's choice depends on it)."""
        wanted = [*self.pool_keys(present), *self.ray_keys(), *(self.occupancy_keys() if occ_grid else ())]
        return tuple(dict.fromkeys(wanted))

    # -- reading ---------------------------------------------------------------------------------------------
    def open(self, path: str | Path) -> ShardReader:
        """A reader of ``path`` restricted to this backend's primitive."""
        return ShardReader(path, self.primitive)

    def check_reader(self, reader: ShardReader) -> None:
        wider = sorted(set(reader.allowed) - set(self.visible))
        if wider:
            raise PermissionError(
                f"backend {self.name} (primitive {self.primitive}) refuses a reader of "
                f"{reader.path} that can see {wider}: open it with backend.open()"
            )

    def read(
        self, reader: ShardReader, row: int, keys: Sequence[str] | None = None, *, occ_grid: int = 0
    ) -> dict[str, np.ndarray]:
        """Arrays of one row, through ``reader``; any key outside this backend's primitive is refused."""
        self.check_reader(reader)
        keys = self.keys(occ_grid, reader.allowed) if keys is None else tuple(keys)
        forbidden = [k for k in keys if k in ARRAYS and k not in self.visible]
        if forbidden:
            raise PermissionError(f"backend {self.name} (primitive {self.primitive}) may not read {forbidden}")
        absent = [k for k in keys if k in self.visible and k not in reader.allowed]
        if absent:
            raise ValueError(
                f"{reader.path}: backend {self.name} needs arrays {absent} that this shard does not "
                f"hold (kind {reader.attrs.get('kind')!r}, "
                f"primitive {reader.attrs.get('primitive', 'all')!r})"
            )
        return reader.read(row, keys)

    # -- pools -----------------------------------------------------------------------------------------------
    def pools_from(self, arrays: dict[str, np.ndarray], profile: dict) -> dict[str, np.ndarray | PointDistances]:
        """The tokenizer pools from arrays read by ``read`` (``profile``: the shard's cache profile)."""
        pt_xyz = np.asarray(arrays["pool_xyz"], dtype=np.float32)
        pools = {"pt_xyz": pt_xyz, "pt_dist": self.point_distances(arrays, profile, pt_xyz)}
        if self.ray_source is not None:
            s = self.ray_source
            pools.update(
                ray_o=np.asarray(arrays["ray_origin"], dtype=np.float32),
                ray_d=np.asarray(arrays["ray_dir"], dtype=np.float32),
                ray_hit=np.asarray(arrays[f"ray_hit_{s}"], dtype=np.uint8),
                ray_t=np.asarray(arrays[f"ray_t_{s}"], dtype=np.float32),
                ray_n=np.asarray(arrays[f"ray_normal_{s}"], dtype=np.float32),
            )
        return pools

    def point_distances(self, arrays: dict[str, np.ndarray], profile: dict, pt_xyz: np.ndarray) -> PointDistances:
        """The unsigned distance of the pool queries ``pt_xyz`` as this backend knows it: a float32 array over
        the pool, or a callable giving them at pool indices."""
        return np.asarray(arrays[self.dist_key], dtype=np.float32)

    def pools(self, reader: ShardReader, row: int) -> dict[str, np.ndarray | PointDistances]:
        """``pt_xyz``, ``pt_dist`` (float32, or a callable of pool indices, see ``point_distances``) and, with
        rays, ``ray_o, ray_d, ray_hit, ray_t, ray_n``."""
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
    name, primitive, dist_key, ray_source = "voxel", "pc", "pool_dist_voxel", "pc"

    def pool_keys(self, present: Sequence[str] = ()) -> tuple[str, ...]:
        # the stored distances when the cache holds them (cache.voxel_pool_dist), else pc_xyz to compute them
        return (*POOL_KEYS, self.dist_key) if self.dist_key in present else (*POOL_KEYS, "pc_xyz")

    def point_distances(self, arrays: dict[str, np.ndarray], profile: dict, pt_xyz: np.ndarray) -> PointDistances:
        if self.dist_key in arrays:
            return np.asarray(arrays[self.dist_key], dtype=np.float32)
        # the occupancy edt_grid builds (and the ray walk saw), without its full distance transform
        occ = dilate(
            voxelize(np.asarray(arrays["pc_xyz"], dtype=np.float64), int(profile["pc_grid"])), int(profile["pc_dilate"])
        )
        return VoxelDistances(occ, pt_xyz)


BACKENDS: dict[str, type[Backend]] = {
    cls.name: cls for cls in (MeshBackend, PointCloudBackend, PointCloudNoRayBackend, UdfGridBackend, VoxelBackend)
}


def get_backend(name: str) -> Backend:
    try:
        return BACKENDS[name]()
    except KeyError:
        raise ValueError(f"unknown backend {name!r} (expected one of {sorted(BACKENDS)})") from None
