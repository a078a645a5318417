"""Pinhole cameras and Embree ray casting (through trimesh): depth images and the surface seen from one viewpoint.

Image convention: row 0 is the top of the image (the camera's up direction), column 0 its left; rays go through
pixel centres in row-major order, optionally jittered inside each pixel.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import trimesh

WORLD_UP = (0.0, 1.0, 0.0)  # meshes follow the ShapeNet convention: Y up


def orbit_position(azimuth: float, elevation: float, distance: float) -> np.ndarray:
    """A point at ``distance`` from the origin; azimuth about +Y from +Z towards +X, elevation above the XZ plane."""
    ce = np.cos(elevation)
    return distance * np.array([ce * np.sin(azimuth), np.sin(elevation), ce * np.cos(azimuth)])


@dataclass(frozen=True)
class PinholeCamera:
    """A square pinhole camera at ``eye`` looking at ``target``; ``half_fov`` in radians, ``size`` pixels a side."""

    eye: np.ndarray
    target: np.ndarray
    half_fov: float
    size: int
    up: tuple[float, float, float] = WORLD_UP

    def basis(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(forward, right, up) unit vectors; ``up`` must not be parallel to the viewing direction."""
        forward = np.asarray(self.target, dtype=np.float64) - np.asarray(self.eye, dtype=np.float64)
        forward /= np.linalg.norm(forward)
        right = np.cross(forward, np.asarray(self.up, dtype=np.float64))
        norm = np.linalg.norm(right)
        if norm < 1e-9:
            raise ValueError("camera up vector is parallel to the viewing direction")
        right /= norm
        return forward, right, np.cross(right, forward)

    def rays(self, jitter: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Origins and unit directions (size*size, 3), row-major; ``jitter`` (size*size, 2) in [0, 1) pixel units
        replaces the pixel centre (0.5, 0.5) as the point each ray goes through."""
        forward, right, up = self.basis()
        rows, cols = np.divmod(np.arange(self.size * self.size), self.size)
        offset = np.full((self.size * self.size, 2), 0.5) if jitter is None else np.asarray(jitter, dtype=np.float64)
        scale = np.tan(self.half_fov)
        x = ((cols + offset[:, 0]) / self.size * 2.0 - 1.0) * scale
        y = (1.0 - (rows + offset[:, 1]) / self.size * 2.0) * scale
        directions = forward + x[:, None] * right + y[:, None] * up
        directions /= np.linalg.norm(directions, axis=1, keepdims=True)
        origins = np.broadcast_to(np.asarray(self.eye, dtype=np.float64), directions.shape).copy()
        return origins, directions


def framing_camera(eye: np.ndarray, radius: float, size: int) -> PinholeCamera:
    """A camera at ``eye`` looking at the origin whose frustum just covers the ball of ``radius`` about it."""
    distance = float(np.linalg.norm(eye))
    if distance <= radius:
        raise ValueError(f"camera at distance {distance:.3f} is inside the bounding ball (radius {radius:.3f})")
    return PinholeCamera(
        eye=np.asarray(eye, dtype=np.float64),
        target=np.zeros(3),
        half_fov=float(np.arcsin(radius / distance)),
        size=size,
    )


def ray_intersector(mesh: trimesh.Trimesh):
    """A ray intersector of ``mesh`` that lives only as long as the caller holds it.

    Not ``mesh.ray``: trimesh caches that on the mesh, and with Embree each cached intersector keeps a native scene
    alive; a run that renders about a thousand meshes it still holds (the demo generator at 100 models per class)
    then dies with a segmentation fault inside Embree.
    """
    if trimesh.ray.has_embree:
        from trimesh.ray.ray_pyembree import RayMeshIntersector
    else:
        from trimesh.ray.ray_triangle import RayMeshIntersector
    return RayMeshIntersector(mesh)


def first_hits(mesh: trimesh.Trimesh, origins: np.ndarray, directions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(ray index, hit location) of the first surface hit of every ray that hits, sorted by ray index."""
    locations, ray_index, _ = ray_intersector(mesh).intersects_location(origins, directions, multiple_hits=False)
    order = np.argsort(ray_index, kind="stable")
    return ray_index[order], locations[order]


def depth_image(mesh: trimesh.Trimesh, camera: PinholeCamera, near: float, far: float) -> np.ndarray:
    """An 8-bit depth image: background 0, depth ``near`` -> 255 and ``far`` -> 1 (nearer is brighter)."""
    origins, directions = camera.rays()
    index, points = first_hits(mesh, origins, directions)
    forward, _, _ = camera.basis()
    depth = (points - camera.eye) @ forward  # z-depth, not distance along the ray, so planes stay flat
    level = 1.0 + 254.0 * (far - depth) / (far - near)
    image = np.zeros(camera.size * camera.size, dtype=np.uint8)
    image[index] = np.clip(np.rint(level), 1, 255).astype(np.uint8)
    return image.reshape(camera.size, camera.size)


def visible_surface(mesh: trimesh.Trimesh, camera: PinholeCamera, rng: np.random.Generator) -> np.ndarray:
    """The surface points a depth sensor at the camera sees: one jittered ray per pixel, first hits only."""
    jitter = rng.random((camera.size * camera.size, 2))
    _, points = first_hits(mesh, *camera.rays(jitter))
    return points
