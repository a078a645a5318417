"""Names, shapes and provenance of the cache arrays (the contract between the cache and every reader).

Provenance is explicit in the names (``pool_dist_mesh``/``pool_dist_pc``/``pool_dist_grid``, ``ray_*_mesh`` /
``ray_*_pc``), never a fallback chain. ``PRIMITIVE_ARRAYS`` says what each primitive may see: a point-cloud
reader can never reach a mesh-derived array.

The UDF/occupancy grid is built from a surface sample drawn independently of ``pc_xyz`` (edt mode) or from
the mesh itself (narrowband / exact), so the "pc" and "udf" primitives are not two views of one point set.
"""

from __future__ import annotations

import numpy as np

# name -> (trailing shape as a function of the profile, dtype, provenance)
#   provenance: "surface" (samples of the shape's surface, i.e. the observed point cloud), "query" (query
#   positions, shape-independent), "camera" (ray geometry, shape-independent), "mesh" (needs the mesh),
#   "pc" (derived from pc_xyz only), "grid" (derived from the grid)
ARRAYS = {
    "pc_xyz": (lambda p: (p["pc_points"], 3), np.float32, "surface"),
    "pc_normal": (lambda p: (p["pc_points"], 3), np.float32, "surface"),
    "pool_xyz": (lambda p: (p["pt_pool"], 3), np.float32, "query"),
    "pool_dist_mesh": (lambda p: (p["pt_pool"],), np.float32, "mesh"),
    "pool_dist_pc": (lambda p: (p["pt_pool"],), np.float32, "pc"),
    "pool_dist_grid": (lambda p: (p["pt_pool"],), np.float32, "grid"),
    "pool_dist_voxel": (lambda p: (p["pt_pool"],), np.float32, "pc"),
    "ray_origin": (lambda p: (p["n_views"] * p["rays_per_view"], 3), np.float32, "camera"),
    "ray_dir": (lambda p: (p["n_views"] * p["rays_per_view"], 3), np.float32, "camera"),
    "ray_hit_mesh": (lambda p: (p["n_views"] * p["rays_per_view"],), np.uint8, "mesh"),
    "ray_t_mesh": (lambda p: (p["n_views"] * p["rays_per_view"],), np.float32, "mesh"),
    "ray_normal_mesh": (lambda p: (p["n_views"] * p["rays_per_view"], 3), np.float32, "mesh"),
    "ray_hit_pc": (lambda p: (p["n_views"] * p["rays_per_view"],), np.uint8, "pc"),
    "ray_t_pc": (lambda p: (p["n_views"] * p["rays_per_view"],), np.float32, "pc"),
    "ray_normal_pc": (lambda p: (p["n_views"] * p["rays_per_view"], 3), np.float32, "pc"),
    "occ_grid": (lambda p: (p["df_grid"],) * 3, np.uint8, "grid"),
    "udf_grid": (lambda p: (p["df_grid"],) * 3, np.float16, "grid"),
}

# Arrays a shard holds only when the profile flag named here is on (each costs cache time; see ``kind_arrays``).
#   pool_dist_voxel: the trilinear EDT of the pc occupancy the voxel walk used, at the pool queries (~7 ms/shape
#   at 64^3 and a 20k pool); without it the voxel backend computes the same values at each draw.
OPTIONAL_ARRAYS = {"pool_dist_voxel": "voxel_pool_dist"}

# What a cache of each item kind can hold. Point clouds have no mesh: they simply lack mesh-derived arrays.
KIND_ARRAYS = {
    "mesh": tuple(ARRAYS),
    "pointcloud": tuple(k for k, (_, _, prov) in ARRAYS.items() if prov != "mesh"),
}

# What each primitive (backend family / unpaired split) may read.
PRIMITIVE_ARRAYS = {
    "mesh": (
        "pc_xyz",
        "pc_normal",
        "pool_xyz",
        "pool_dist_mesh",
        "ray_origin",
        "ray_dir",
        "ray_hit_mesh",
        "ray_t_mesh",
        "ray_normal_mesh",
    ),
    "pc": (
        "pc_xyz",
        "pc_normal",
        "pool_xyz",
        "pool_dist_pc",
        "pool_dist_voxel",
        "ray_origin",
        "ray_dir",
        "ray_hit_pc",
        "ray_t_pc",
        "ray_normal_pc",
    ),
    "udf": ("pool_xyz", "pool_dist_grid", "occ_grid", "udf_grid"),
    "all": tuple(ARRAYS),
}

# The cache-profile keys that change what the arrays contain (shard attrs record them; a mismatch = foreign).
PROFILE_KEYS = (
    "pc_points",
    "pt_pool",
    "pt_surface_ratio",
    "pt_surface_sigma",
    "n_views",
    "rays_per_view",
    "camera_radius",
    "pc_grid",
    "pc_dilate",
    "df_grid",
    "df_dilate",
    "grid_mode",
    "band_voxels",
    "voxel_pool_dist",
)


def kind_arrays(kind: str, profile: dict) -> tuple[str, ...]:
    """The arrays a cache of ``kind`` built with ``profile`` holds (optional arrays only when switched on)."""
    return tuple(k for k in KIND_ARRAYS[kind] if k not in OPTIONAL_ARRAYS or profile.get(OPTIONAL_ARRAYS[k]))


def array_spec(name: str, profile: dict) -> tuple[tuple[int, ...], np.dtype]:
    shape_fn, dtype, _ = ARRAYS[name]
    return tuple(int(s) for s in shape_fn(profile)), np.dtype(dtype)


def profile_of(cache_cfg: dict) -> dict:
    """The content-defining subset of a cache config."""
    return {k: cache_cfg[k] for k in PROFILE_KEYS}
