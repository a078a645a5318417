"""Perceptual fingerprints of shapes and images (inputs of the near-duplicate search).

View hashes: the cache casts every shape's rays from one fixed camera layout (ray index = view * rays_per_view +
pixel, row-major pixels of a ``side x side`` grid, side = ceil(sqrt(rays_per_view))). The first ``views`` views
become depth images, depth normalised over the fixed world range [R - 1, R + 1] (R = camera radius; shapes live
in the unit ball) so the same geometry always gives the same grey levels; misses are background. Each image gets
``imagehash.phash``. At 400 rays per view the per-shape jitter inside each pixel makes silhouettes noisy: two
caches of the same mesh differ by about 8 of 64 bits per view, so the view hashes catch near-identical renders
only and the geometry hash does most of the work (numbers below).

Geometry hash: a random-hyperplane signature (SimHash) of a smooth "soft occupancy" field
exp(-udf / GEOMETRY_SIGMA) block-averaged to GEOMETRY_GRID^3 and centred. The UDF grid is a distance transform,
so it barely changes with the random surface sample it was built from, unlike a median-thresholded DCT of the
binary occupancy (5% of resampled copies of a mesh ended more than 70 of its 215 bits apart). The Hamming
distance of two SimHashes estimates the angle between the centred fields: E[d] / bits = angle / pi.

Rotation robustness: the same signature is also computed for the field under each of the 48 axis-aligned
rotations and reflections (the cube's symmetry group, which maps grid cells onto grid cells exactly). Their
average projection gives a group-invariant ``sym`` hash, used as a cheap candidate filter, and the 48 variant
hashes give the rotation-aware distance min_g d(h_i, g h_j) for those candidates (see near_duplicates.py). This
catches copies saved with another up axis, turned by 90 degrees or mirrored (SHREC07 itself holds a rescaled and
rotated copy: bearing_0342 / bearing_0343), which fixed-camera views cannot see.

Calibration (bits; 114 real SHREC07 meshes, cache-like inputs: 20 x 400 jittered rays, EDT grid of a surface
sample at 64^3; plus the demo data set through the real cache):

- same mesh, new sampling (+ 0.002 vertex noise): geometry median 3, p95 7, max 10; turned by 90 degrees:
  rotation-aware max 7.5; rescaled 6% along one axis: median 9, max 26; demo planted copies: 2 to 11.
- distinct shapes: closest same-class pair 14 (apart from SHREC's own near-copies, found at 0 to 7), closest
  cross-class pair 24.5; demo parametric models of one class (deliberately alike): p1 10, p5 14.
- views (mean per-view bits): same mesh p50 8, p95 14; distinct same-class p1 8, p5 12.

Hence the defaults: geometry_threshold 12 (about 8 degrees between the fields) and threshold 6 (views only merge
near-identical renders; a looser view threshold would merge distinct shapes before it catches resampled copies).
"""

from __future__ import annotations

import io
import itertools
import math
from dataclasses import dataclass
from functools import lru_cache

import imagehash
import numpy as np
from PIL import Image

from ..rng import rng_for

GEOMETRY_GRID = 16  # side of the block-averaged field the signature is computed on
GEOMETRY_BITS = 256  # signature length; geometry_threshold is in bits of this
SYM_BITS = GEOMETRY_BITS  # the group-invariant filter signature (the mean of the 48 variant projections)
# The ray arrays a dataset kind's depth views are read from (the cache's per-primitive ray hits).
RAY_ARRAYS = {"mesh": ("ray_t_mesh", "ray_hit_mesh"), "pointcloud": ("ray_t_pc", "ray_hit_pc")}
GEOMETRY_SIGMA = 0.06  # world units (about 2 voxels of a 64^3 grid): width of the soft occupancy
_PROJECTION_KEY = "geometry-simhash-v1"  # changing the projection changes every hash: bump the stage version


# ----------------------------------------------------------------------------------------------- bit helpers
def bits_to_hex(bits: np.ndarray) -> str:
    """Hex string of a bit vector, most significant bit first (same text as ``str(imagehash.ImageHash)``)."""
    bits = np.asarray(bits, dtype=bool).ravel()
    pad = (-len(bits)) % 8
    packed = np.packbits(np.concatenate([np.zeros(pad, bool), bits]))
    text = packed.tobytes().hex()
    return text[len(text) - math.ceil(len(bits) / 4) :]


def hex_to_bits(text: str, n_bits: int) -> np.ndarray:
    value = np.frombuffer(bytes.fromhex(text.rjust(2 * math.ceil(len(text) / 2), "0")), dtype=np.uint8)
    bits = np.unpackbits(value).astype(bool)
    return bits[len(bits) - n_bits :]


def pack_codes(bits: np.ndarray) -> np.ndarray:
    """(N, B) bools -> (N, ceil(B/64)) uint64 words. Padding bits are zero for everyone, so they never differ."""
    bits = np.asarray(bits, dtype=bool)
    n, b = bits.shape
    words = math.ceil(b / 64)
    padded = np.zeros((n, words * 64), dtype=bool)
    padded[:, :b] = bits
    return np.packbits(padded, axis=1).view(">u8").astype(np.uint64).reshape(n, words)


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Hamming distance between packed codes (broadcasting over leading axes, summed over the word axis)."""
    return np.bitwise_count(np.bitwise_xor(a, b)).sum(axis=-1, dtype=np.int64)


# ------------------------------------------------------------------------------------------------ view hashes
def depth_images(
    ray_t: np.ndarray, ray_hit: np.ndarray, *, views: int, rays_per_view: int, camera_radius: float
) -> np.ndarray:
    """(views, side, side) uint8 depth images from a shape's ray answers (first ``views`` camera views).

    Hits map linearly from the nearest possible depth (R - 1 -> 255) to the farthest (R + 1 -> 32); misses and the
    unused pixels of the last grid row are 0, so the silhouette stays visible even for far surfaces.
    """
    side = math.ceil(math.sqrt(rays_per_view))
    n = views * rays_per_view
    if len(ray_t) < n:
        raise ValueError(f"{views} views need {n} rays, the cache holds {len(ray_t)}")
    t = np.asarray(ray_t[:n], dtype=np.float64).reshape(views, rays_per_view)
    hit = np.asarray(ray_hit[:n]).reshape(views, rays_per_view) > 0
    nearness = np.clip((camera_radius + 1.0 - t) / 2.0, 0.0, 1.0)
    pixels = np.where(hit, np.rint(32.0 + 223.0 * nearness), 0.0).astype(np.uint8)
    images = np.zeros((views, side * side), dtype=np.uint8)
    images[:, :rays_per_view] = pixels
    return images.reshape(views, side, side)


def phash_bits(image: Image.Image | np.ndarray, hash_size: int) -> np.ndarray:
    """imagehash's perceptual hash as a flat bool vector of hash_size^2 bits."""
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    return imagehash.phash(image, hash_size=hash_size).hash.ravel().astype(bool)


def view_hash_bits(
    ray_t: np.ndarray, ray_hit: np.ndarray, *, views: int, rays_per_view: int, camera_radius: float, hash_size: int
) -> np.ndarray:
    """(views, hash_size^2) phash bits of a shape's first ``views`` depth images."""
    images = depth_images(ray_t, ray_hit, views=views, rays_per_view=rays_per_view, camera_radius=camera_radius)
    return np.stack([phash_bits(img, hash_size) for img in images])


def image_hash_bits(data: bytes, hash_size: int) -> np.ndarray:
    """phash bits of an encoded image (PNG/JPEG bytes)."""
    with Image.open(io.BytesIO(data)) as img:
        img.load()
        return phash_bits(img, hash_size)


# --------------------------------------------------------------------------------------------- geometry hash
def soft_occupancy(udf_grid: np.ndarray, grid: int = GEOMETRY_GRID, sigma: float = GEOMETRY_SIGMA) -> np.ndarray:
    """exp(-udf / sigma) averaged over blocks to (grid, grid, grid) float32 (any cubic input size)."""
    udf = np.asarray(udf_grid, dtype=np.float32)
    side = udf.shape[0]
    if udf.ndim != 3 or udf.shape != (side,) * 3:
        raise ValueError(f"udf grid must be cubic, got shape {udf.shape}")
    field = np.exp(udf * np.float32(-1.0 / sigma))
    field[np.isnan(field)] = 0.0  # a NaN distance (never expected) counts as far from the surface
    if side % grid:  # resample to a multiple of the target side first, so every block has equal weight
        from scipy.ndimage import zoom

        target = grid * math.ceil(side / grid)
        field = zoom(field, target / side, order=1)
        side = target
    f = side // grid
    blocks = field.reshape(grid, f, grid, f, grid, f).sum(axis=5).sum(axis=3).sum(axis=1)
    return (blocks / np.float32(f**3)).astype(np.float32)


def cube_symmetries() -> list[tuple[tuple[int, int, int], tuple[bool, bool, bool]]]:
    """The 48 axis permutations x axis flips (identity first): the symmetry group of the cube."""
    return [
        (perm, flips)
        for perm in itertools.permutations(range(3))
        for flips in itertools.product((False, True), repeat=3)
    ]


def apply_symmetry(field: np.ndarray, perm: tuple[int, int, int], flips: tuple[bool, bool, bool]) -> np.ndarray:
    out = np.transpose(field, perm)
    for axis, flip in enumerate(flips):
        if flip:
            out = np.flip(out, axis)
    return out


@lru_cache(maxsize=4)
def _symmetry_gathers(grid: int) -> np.ndarray:
    """(48, grid^3) index arrays: field.ravel()[gather[g]] is the field under symmetry g."""
    cells = np.arange(grid**3).reshape(grid, grid, grid)
    return np.stack([apply_symmetry(cells, p, f).ravel() for p, f in cube_symmetries()])


@lru_cache(maxsize=4)
def symmetry_inverses(grid: int = GEOMETRY_GRID) -> np.ndarray:
    """(48,) index of the inverse of each cube symmetry (in ``cube_symmetries`` order)."""
    gathers = _symmetry_gathers(grid)
    index = {g.tobytes(): k for k, g in enumerate(gathers)}
    return np.array([index[np.argsort(g).tobytes()] for g in gathers])


@lru_cache(maxsize=4)
def _projection(grid: int, bits: int) -> np.ndarray:
    # Independent Gaussian hyperplanes (each bit an unbiased SimHash bit, P[differ] = angle / pi). A fixed part of
    # the hash definition, not a per-shape draw: the same for every dataset, seed and run. (Hyperplanes closed
    # under the 48 symmetries would give the variants as bit permutations of one projection, but for a symmetric
    # shape the bits of symmetric hyperplanes coincide, so its distance estimates get |symmetry group| times the
    # variance: measured jittered-copy distances reached 50 bits. Independent bits cost one stacked GEMM.)
    return (
        rng_for(0, "fingerprints", f"{_PROJECTION_KEY}/{grid}/{bits}")
        .standard_normal((grid**3, bits))
        .astype(np.float32)
    )


@dataclass
class GeometryHashes:
    """Per item: the signature (identity orientation), the group-invariant one and all 48 variants."""

    plain: np.ndarray  # (N, GEOMETRY_BITS) bool
    sym: np.ndarray  # (N, SYM_BITS) bool, invariant under the 48 symmetries
    variants: np.ndarray  # (N, 48, GEOMETRY_BITS) bool, variants[:, 0] == plain


def geometry_hashes(fields: np.ndarray, batch: int = 64) -> GeometryHashes:
    """SimHash signatures of soft-occupancy fields (N, G, G, G) under the 48 cube symmetries.

    All 48 transformed copies of a batch are stacked into one matrix and projected with a single GEMM (about
    2.5 ms per shape; 48 separate small GEMMs were 10x slower).
    """
    fields = np.asarray(fields, dtype=np.float32)
    n, grid = fields.shape[0], fields.shape[1]
    flat = fields.reshape(n, -1)
    flat = flat - flat.mean(axis=1, keepdims=True)  # centred: the signature sees shape, not fill level
    proj = _projection(grid, GEOMETRY_BITS)
    gathers = _symmetry_gathers(grid)
    values = np.empty((n, len(gathers), GEOMETRY_BITS), dtype=np.float32)
    for s in range(0, n, batch):
        stacked = flat[s : s + batch][:, gathers]  # (b, 48, G^3)
        values[s : s + batch] = (stacked.reshape(-1, flat.shape[1]) @ proj).reshape(-1, len(gathers), GEOMETRY_BITS)
    return GeometryHashes(plain=values[:, 0] > 0, sym=values.mean(axis=1) > 0, variants=values > 0)
