"""Camera rays (fixed layout, per-shape pixel jitter) and their first hits on a mesh (our BVH; Embree oracle).

Layout contract (fingerprints rely on it): ``n_views`` cameras on a Fibonacci sphere of radius ``camera_radius``,
identical for every shape, each looking at the origin with a deterministic up vector; per view a
``side x side`` pixel grid (side = ceil(sqrt(rays_per_view))), row-major, first ``rays_per_view`` pixels, one
ray through a uniformly jittered point of each pixel. Ray index = view * rays_per_view + pixel. The pinhole's
half field of view is asin(1 / camera_radius), so the frustum just covers the unit ball.
"""

from __future__ import annotations

import functools
import math

import numpy as np

from .distances import MeshDistance
from .threads import one_cpu

GOLDEN_ANGLE = math.pi * (3.0 - math.sqrt(5.0))


def camera_positions(n_views: int, radius: float) -> np.ndarray:
    """(n_views, 3) camera centres: a Fibonacci sphere (z from top to bottom, golden-angle azimuth steps)."""
    i = np.arange(n_views, dtype=np.float64)
    z = 1.0 - (2.0 * i + 1.0) / n_views
    ring = np.sqrt(np.clip(1.0 - z * z, 0.0, None))
    phi = i * GOLDEN_ANGLE
    return radius * np.stack([ring * np.cos(phi), ring * np.sin(phi), z], axis=1)


def camera_frames(positions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(forward, right, up) unit vectors per camera; forward looks at the origin, up is world +z projected
    (world +y for cameras within ~8 degrees of the poles)."""
    forward = -positions / np.linalg.norm(positions, axis=1, keepdims=True)
    world_up = np.where(np.abs(forward[:, 2:3]) > 0.99, [[0.0, 1.0, 0.0]], [[0.0, 0.0, 1.0]])
    right = np.cross(forward, world_up)
    right /= np.linalg.norm(right, axis=1, keepdims=True)
    up = np.cross(right, forward)
    return forward, right, up


@functools.lru_cache(maxsize=8)
def _layout(n_views: int, rays_per_view: int, radius: float):
    positions = camera_positions(n_views, radius)
    forward, right, up = camera_frames(positions)
    side = math.ceil(math.sqrt(rays_per_view))
    pixel = np.arange(rays_per_view)
    row, col = np.divmod(pixel, side)
    return positions, forward, right, up, side, row.astype(np.float64), col.astype(np.float64)


def camera_rays(
    n_views: int, rays_per_view: int, radius: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """(origins, unit directions), float64 (n_views * rays_per_view, 3), with a fresh jitter inside each pixel."""
    positions, forward, right, up, side, row, col = _layout(n_views, rays_per_view, float(radius))
    jitter = rng.random((n_views, rays_per_view, 2))
    tan_half = math.tan(math.asin(1.0 / radius))
    # image-plane coordinates in [-1, 1]: x grows with the column, y shrinks with the row (row 0 at the top)
    x = (2.0 * (col[None, :] + jitter[..., 0]) / side - 1.0) * tan_half
    y = (1.0 - 2.0 * (row[None, :] + jitter[..., 1]) / side) * tan_half
    dirs = forward[:, None, :] + x[..., None] * right[:, None, :] + y[..., None] * up[:, None, :]
    dirs = dirs.reshape(-1, 3)
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    origins = np.repeat(positions, rays_per_view, axis=0)
    return origins, dirs


def _first_hit_answers(
    face: np.ndarray,
    engine_t: np.ndarray,
    origins: np.ndarray,
    dirs: np.ndarray,
    v0: np.ndarray,
    face_normals: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(hit uint8, t float64, normal float64) from an engine's hit face (-1 = miss) and its float32 t.

    t is recomputed in float64 from the hit triangle's plane; the normal is the unit face normal turned towards
    the ray origin (dot(n, d) < 0). t and normal are 0 on a miss.
    """
    hit = face >= 0
    t = np.zeros(len(origins))
    normal = np.zeros((len(origins), 3))
    if hit.any():
        f, o, d = face[hit], origins[hit], dirs[hit]
        n = face_normals[f]
        denom = np.einsum("ij,ij->i", d, n)
        plane_t = np.einsum("ij,ij->i", v0[f] - o, n) / np.where(denom != 0, denom, 1.0)
        rough_t = engine_t[hit].astype(np.float64)
        # a degenerate (zero-normal) face or a grazing hit keeps the engine's t
        ok = (denom != 0) & np.isfinite(plane_t) & (np.abs(plane_t - rough_t) < 1e-3)
        t[hit] = np.where(ok, plane_t, rough_t)
        normal[hit] = np.where(denom[:, None] > 0, -n, n)
    return hit.astype(np.uint8), t, normal


class MeshRayCaster:
    """First hits of rays on one triangle mesh, on the BVH that already serves the exact distances
    (``distances.MeshDistance``, i.e. ``bvh.TriangleBVH``).

    Why not Embree (measured on SHREC'07, one CPU, BENCHMARKS.md "Cache"): the closest-point BVH is built anyway,
    and casting the 8000 rays on it (float64 Möller–Trumbore) costs ~1.4 ms, against ~9 ms to build an Embree
    scene through embreex plus ~6 ms to cast (and ~4-5 ms on fcpw's BVH), with identical hit/miss answers.
    ``EmbreeRayCaster`` (same answers, second acceleration structure) remains the test oracle.
    """

    def __init__(
        self,
        vertices: np.ndarray,
        faces: np.ndarray,
        face_normals: np.ndarray,
        bvh: MeshDistance | None = None,
        single_cpu: bool = True,
    ):
        self._bvh = bvh if bvh is not None else MeshDistance(vertices, faces, single_cpu=single_cpu)
        self._v0 = vertices[faces[:, 0]]
        self._normals = face_normals

    def cast(self, origins: np.ndarray, dirs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(hit uint8 (R,), t float64 (R,), normal float64 (R,3)) for unit directions; t and normal are 0 on a miss.

        t is the distance along the direction, recomputed in float64 from the hit triangle's plane (as for every
        engine, so the answers do not depend on how an engine computes t); the normal is the unit face normal
        turned towards the ray origin (dot(n, d) < 0).
        """
        face, engine_t = self._bvh.ray_hits(origins, dirs)
        return _first_hit_answers(face, engine_t, origins, dirs, self._v0, self._normals)


def require_embree():
    """Import embreex or fail loudly (it is only the reference engine for tests and benchmarks)."""
    try:
        from embreex import rtcore, rtcore_scene
        from embreex.mesh_construction import TriangleMesh
    except ImportError as exc:
        raise RuntimeError("EmbreeRayCaster needs embreex: pip install embreex==4.4.0.post1") from exc
    return rtcore, rtcore_scene, TriangleMesh


@functools.lru_cache(maxsize=1)
def _device():
    rtcore, _, _ = require_embree()
    return rtcore.EmbreeDevice()


class EmbreeRayCaster:
    """The same answers as ``MeshRayCaster`` from an Embree scene (embreex): the independent reference engine."""

    def __init__(self, vertices: np.ndarray, faces: np.ndarray, face_normals: np.ndarray, single_cpu: bool = True):
        _, rtcore_scene, TriangleMesh = require_embree()
        self._single_cpu = single_cpu
        with one_cpu(single_cpu):
            self._scene = rtcore_scene.EmbreeScene(_device())
            TriangleMesh(
                self._scene,
                np.ascontiguousarray(vertices, dtype=np.float32),
                np.ascontiguousarray(faces, dtype=np.int32),
            )
        self._v0 = vertices[faces[:, 0]]
        self._normals = face_normals

    def cast(self, origins: np.ndarray, dirs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        with one_cpu(self._single_cpu):
            out = self._scene.run(
                np.ascontiguousarray(origins, dtype=np.float32), np.ascontiguousarray(dirs, dtype=np.float32), output=1
            )
        return _first_hit_answers(out["primID"].astype(np.int64), out["tfar"], origins, dirs, self._v0, self._normals)
