"""A triangle BVH compiled with numba: exact closest triangle (float64) and first ray hits, one structure for both.

Why our own engine (measured on the SHREC'07 meshes, one CPU, interleaved with fcpw 1.2.0 in one process, see
BENCHMARKS.md "Cache"): the 20k query pool costs ~0.5x fcpw's time (1.26 against 2.47 us per query), the build
~0.6x and the 8000 camera rays ~0.4x, because

* the traversal is scalar float64 code with branch-free box distances, visiting the nearer child first and
  popping far children only while they can still beat the best distance found;
* every triangle test is the exact float64 point-triangle distance, so the closest triangle is chosen in float64
  (fcpw chooses it in float32 and needs a float64 refinement afterwards), and no Python object per answer is
  created (fcpw returns a list of interaction objects);
* the binned-SAH build takes each child's box from its bins (one binning and one partition pass per level over
  primitive records kept in node order), so it needs no separate bounds pass.

Rays (Möller–Trumbore in float64) run on the same tree, so a mesh needs one build for distances and rays.
Everything here is single-threaded (no ``parallel=True``), so a worker per core stays on its core. Kernels are
compiled on first use and cached on disk by numba (``cache=True``).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from .errors import ShapeError

LEAF_SIZE = 4  # triangles per leaf: 2..8 cost within 3% on the pool, 4 is the fastest (measured)
SAH_BINS = 16  # 8 to 32 bins give the same query cost; 16 builds as fast as 8
_JIT = {"cache": True, "nogil": True, "error_model": "numpy"}


@njit(**_JIT)
def _build(tri: np.ndarray, leaf_size: int, bins: int):
    """Binned-SAH BVH over triangles ``tri`` (F, 9) = (a, b, c) per row.

    Returns (nodes (N, 6) float64 box lo/hi, links (N, 2) int64, order (F,) int64, depth). A node's two children
    sit at ``links[k, 0]`` and ``links[k, 0] + 1``; a leaf has ``links[k, 0] = -count`` and its triangles are
    ``order[links[k, 1]:links[k, 1] + count]``.
    """
    n = tri.shape[0]
    prim = np.empty((n, 9))  # per triangle, kept in node order: centroid of its box, box lo, box hi
    order = np.arange(n)
    nodes = np.empty((max(2 * n - 1, 1), 6))
    links = np.zeros((max(2 * n - 1, 1), 2), np.int64)
    # task stack (node, start, end, depth) and the centroid box of its triangles; never deeper than n
    tasks = np.empty((n + 1, 4), np.int64)
    cbox = np.empty((n + 1, 6))
    for a in range(3):
        nodes[0, a] = np.inf
        nodes[0, 3 + a] = -np.inf
        cbox[0, a] = np.inf
        cbox[0, 3 + a] = -np.inf
    for i in range(n):
        for a in range(3):
            x0, x1, x2 = tri[i, a], tri[i, 3 + a], tri[i, 6 + a]
            lo, hi = min(x0, min(x1, x2)), max(x0, max(x1, x2))
            c = 0.5 * (lo + hi)
            prim[i, a], prim[i, 3 + a], prim[i, 6 + a] = c, lo, hi
            nodes[0, a], nodes[0, 3 + a] = min(nodes[0, a], lo), max(nodes[0, 3 + a], hi)
            cbox[0, a], cbox[0, 3 + a] = min(cbox[0, a], c), max(cbox[0, 3 + a], c)
    tasks[0, 0], tasks[0, 1], tasks[0, 2], tasks[0, 3] = 0, 0, n, 1
    top, used, depth = 1, 1, 1
    count = np.zeros(bins, np.int64)
    binbox = np.empty((bins, 12))  # per bin: box lo/hi of its triangles, then box lo/hi of their centroids
    right_cost = np.empty(bins)
    while top > 0:
        top -= 1
        node, start, end, level = tasks[top, 0], tasks[top, 1], tasks[top, 2], tasks[top, 3]
        depth = max(depth, level)
        m = end - start
        axis = 0
        extent = cbox[top, 3] - cbox[top, 0]
        for a in range(1, 3):
            if cbox[top, 3 + a] - cbox[top, a] > extent:
                axis, extent = a, cbox[top, 3 + a] - cbox[top, a]
        if m <= leaf_size or not extent > 1e-30:  # small, or all centroids coincide: a leaf
            links[node, 0], links[node, 1] = -m, start
            continue
        low = cbox[top, axis]
        scale = bins * (1.0 - 1e-12) / extent
        for b in range(bins):
            count[b] = 0
            for a in range(3):
                binbox[b, a] = binbox[b, 6 + a] = np.inf
                binbox[b, 3 + a] = binbox[b, 9 + a] = -np.inf
        for j in range(start, end):
            b = min(int((prim[j, axis] - low) * scale), bins - 1)
            count[b] += 1
            for a in range(3):
                binbox[b, a] = min(binbox[b, a], prim[j, 3 + a])
                binbox[b, 3 + a] = max(binbox[b, 3 + a], prim[j, 6 + a])
                binbox[b, 6 + a] = min(binbox[b, 6 + a], prim[j, a])
                binbox[b, 9 + a] = max(binbox[b, 9 + a], prim[j, a])
        # SAH: surface area x triangle count of each side, for every split between two bins
        x0 = y0 = z0 = np.inf
        x1 = y1 = z1 = -np.inf
        seen = 0
        for b in range(bins - 1, 0, -1):
            seen += count[b]
            x0, y0, z0 = min(x0, binbox[b, 0]), min(y0, binbox[b, 1]), min(z0, binbox[b, 2])
            x1, y1, z1 = max(x1, binbox[b, 3]), max(y1, binbox[b, 4]), max(z1, binbox[b, 5])
            dx, dy, dz = x1 - x0, y1 - y0, z1 - z0
            right_cost[b] = (dx * dy + dy * dz + dz * dx) * seen if seen > 0 else 0.0
        x0 = y0 = z0 = np.inf
        x1 = y1 = z1 = -np.inf
        seen = 0
        best, split = np.inf, -1
        for b in range(bins - 1):
            seen += count[b]
            x0, y0, z0 = min(x0, binbox[b, 0]), min(y0, binbox[b, 1]), min(z0, binbox[b, 2])
            x1, y1, z1 = max(x1, binbox[b, 3]), max(y1, binbox[b, 4]), max(z1, binbox[b, 5])
            if seen == 0 or seen == m:
                continue
            dx, dy, dz = x1 - x0, y1 - y0, z1 - z0
            cost = (dx * dy + dy * dz + dz * dx) * seen + right_cost[b + 1]
            if cost < best:
                best, split = cost, b
        if split < 0:  # unreachable while extent > 0 (both end bins are occupied); kept as a safe leaf
            links[node, 0], links[node, 1] = -m, start
            continue
        i, k = start, end - 1
        while i <= k:
            if min(int((prim[i, axis] - low) * scale), bins - 1) <= split:
                i += 1
            else:
                for a in range(9):
                    prim[i, a], prim[k, a] = prim[k, a], prim[i, a]
                order[i], order[k] = order[k], order[i]
                k -= 1
        first = used
        used += 2
        links[node, 0], links[node, 1] = first, 0
        # right child goes on the stack first, so the left one is built next (depth-first, left to right)
        for side in range(2):
            child = first + side
            slot = top + 1 - side
            b0, b1 = (0, split + 1) if side == 0 else (split + 1, bins)
            for a in range(3):
                nodes[child, a] = cbox[slot, a] = np.inf
                nodes[child, 3 + a] = cbox[slot, 3 + a] = -np.inf
            for b in range(b0, b1):
                if count[b] == 0:
                    continue
                for a in range(3):
                    nodes[child, a] = min(nodes[child, a], binbox[b, a])
                    nodes[child, 3 + a] = max(nodes[child, 3 + a], binbox[b, 3 + a])
                    cbox[slot, a] = min(cbox[slot, a], binbox[b, 6 + a])
                    cbox[slot, 3 + a] = max(cbox[slot, 3 + a], binbox[b, 9 + a])
            tasks[slot, 0], tasks[slot, 3] = child, level + 1
            tasks[slot, 1], tasks[slot, 2] = (start, i) if side == 0 else (i, end)
        top += 2
    return nodes[:used].copy(), links[:used].copy(), order, depth


@njit(**_JIT)
def _box_d2(px: float, py: float, pz: float, nodes: np.ndarray, k: int) -> float:
    """Squared distance from a point to node k's box (0 inside); branch-free."""
    x = max(max(nodes[k, 0] - px, px - nodes[k, 3]), 0.0)
    y = max(max(nodes[k, 1] - py, py - nodes[k, 4]), 0.0)
    z = max(max(nodes[k, 2] - pz, pz - nodes[k, 5]), 0.0)
    return x * x + y * y + z * z


@njit(**_JIT)
def _segment_d2(wx: float, wy: float, wz: float, ex: float, ey: float, ez: float) -> float:
    """Squared distance from w (relative to the segment start) to the segment [0, e]."""
    length = ex * ex + ey * ey + ez * ez
    t = 0.0
    if length > 0.0:
        t = min(max((wx * ex + wy * ey + wz * ez) / length, 0.0), 1.0)
    x, y, z = wx - t * ex, wy - t * ey, wz - t * ez
    return x * x + y * y + z * z


@njit(inline="always", **_JIT)
def _triangle_d2(px: float, py: float, pz: float, tri: np.ndarray, k: int) -> float:
    """Exact squared distance from a point to triangle k (float64; Voronoi regions of the closest point, in the
    order of Ericson's *Real-Time Collision Detection* 5.1.5). Degenerate triangles (zero area) fall back to
    the closest of their three edges."""
    ax, ay, az = tri[k, 0], tri[k, 1], tri[k, 2]
    abx, aby, abz = tri[k, 3] - ax, tri[k, 4] - ay, tri[k, 5] - az
    acx, acy, acz = tri[k, 6] - ax, tri[k, 7] - ay, tri[k, 8] - az
    apx, apy, apz = px - ax, py - ay, pz - az
    d1 = abx * apx + aby * apy + abz * apz
    d2 = acx * apx + acy * apy + acz * apz
    if d1 <= 0.0 and d2 <= 0.0:  # vertex a
        return apx * apx + apy * apy + apz * apz
    bpx, bpy, bpz = apx - abx, apy - aby, apz - abz
    d3 = abx * bpx + aby * bpy + abz * bpz
    d4 = acx * bpx + acy * bpy + acz * bpz
    if d3 >= 0.0 and d4 <= d3:  # vertex b
        return bpx * bpx + bpy * bpy + bpz * bpz
    vc = d1 * d4 - d3 * d2
    if vc <= 0.0 and d1 >= 0.0 and d3 <= 0.0 and d1 - d3 > 0.0:  # edge ab
        v = d1 / (d1 - d3)
        x, y, z = apx - v * abx, apy - v * aby, apz - v * abz
        return x * x + y * y + z * z
    cpx, cpy, cpz = apx - acx, apy - acy, apz - acz
    d5 = abx * cpx + aby * cpy + abz * cpz
    d6 = acx * cpx + acy * cpy + acz * cpz
    if d6 >= 0.0 and d5 <= d6:  # vertex c
        return cpx * cpx + cpy * cpy + cpz * cpz
    vb = d5 * d2 - d1 * d6
    if vb <= 0.0 and d2 >= 0.0 and d6 <= 0.0 and d2 - d6 > 0.0:  # edge ac
        w = d2 / (d2 - d6)
        x, y, z = apx - w * acx, apy - w * acy, apz - w * acz
        return x * x + y * y + z * z
    va = d3 * d6 - d5 * d4
    if va <= 0.0 and d4 - d3 >= 0.0 and d5 - d6 >= 0.0 and (d4 - d3) + (d5 - d6) > 0.0:  # edge bc
        w = (d4 - d3) / ((d4 - d3) + (d5 - d6))
        x, y, z = bpx - w * (acx - abx), bpy - w * (acy - aby), bpz - w * (acz - abz)
        return x * x + y * y + z * z
    area = va + vb + vc  # = |ab x ac|^2 up to rounding
    if area > 0.0:  # inside: the projection onto the plane
        v, w = vb / area, vc / area
        x, y, z = apx - v * abx - w * acx, apy - v * aby - w * acy, apz - v * abz - w * acz
        return x * x + y * y + z * z
    edge = min(_segment_d2(apx, apy, apz, abx, aby, abz), _segment_d2(apx, apy, apz, acx, acy, acz))
    return min(edge, _segment_d2(bpx, bpy, bpz, acx - abx, acy - aby, acz - abz))


@njit(**_JIT)
def _closest(
    points: np.ndarray,
    nodes: np.ndarray,
    links: np.ndarray,
    tri: np.ndarray,
    depth: int,
    best_d2: np.ndarray,
    best_face: np.ndarray,
) -> None:
    """For each point, the closest triangle (index into ``tri``) and its squared distance, in place.

    ``best_d2`` comes in as a known upper bound of each squared distance (inf if none): only triangles strictly
    closer are taken, so a point whose bound is already met keeps ``best_face`` (-1).
    """
    stack = np.empty(depth + 1, np.int64)
    stack_d2 = np.empty(depth + 1)
    for i in range(points.shape[0]):
        px, py, pz = points[i, 0], points[i, 1], points[i, 2]
        best, face = best_d2[i], best_face[i]
        top, node, node_d2 = 0, 0, _box_d2(px, py, pz, nodes, 0)
        while True:
            if node_d2 < best:
                first = links[node, 0]
                if first < 0:
                    start = links[node, 1]
                    for k in range(start, start - first):
                        d2 = _triangle_d2(px, py, pz, tri, k)
                        if d2 < best:
                            best, face = d2, k
                else:  # descend into the nearer child, keep the other one for later
                    d_left = _box_d2(px, py, pz, nodes, first)
                    d_right = _box_d2(px, py, pz, nodes, first + 1)
                    if d_left <= d_right:
                        if d_right < best:
                            stack[top], stack_d2[top] = first + 1, d_right
                            top += 1
                        node, node_d2 = first, d_left
                    else:
                        if d_left < best:
                            stack[top], stack_d2[top] = first, d_left
                            top += 1
                        node, node_d2 = first + 1, d_right
                    continue
            if top == 0:
                break
            top -= 1
            node, node_d2 = stack[top], stack_d2[top]
        best_d2[i], best_face[i] = best, face


@njit(**_JIT)
def _slab_entry(
    ox: float, oy: float, oz: float, ix: float, iy: float, iz: float, nodes: np.ndarray, k: int, t_max: float
) -> float:
    """Entry distance of a ray into node k's box, or inf if it misses the box within [0, t_max]."""
    tx0, tx1 = (nodes[k, 0] - ox) * ix, (nodes[k, 3] - ox) * ix
    ty0, ty1 = (nodes[k, 1] - oy) * iy, (nodes[k, 4] - oy) * iy
    tz0, tz1 = (nodes[k, 2] - oz) * iz, (nodes[k, 5] - oz) * iz
    near = max(max(min(tx0, tx1), min(ty0, ty1)), max(min(tz0, tz1), 0.0))
    far = min(min(max(tx0, tx1), max(ty0, ty1)), min(max(tz0, tz1), t_max))
    return near if near <= far else np.inf


@njit(**_JIT)
def _first_hits(
    origins: np.ndarray,
    dirs: np.ndarray,
    nodes: np.ndarray,
    links: np.ndarray,
    tri: np.ndarray,
    depth: int,
    hit_face: np.ndarray,
    hit_t: np.ndarray,
) -> None:
    """Nearest hit (t >= 0, either side of the triangle) of each ray: Möller–Trumbore in float64, in place."""
    stack = np.empty(depth + 1, np.int64)
    stack_t = np.empty(depth + 1)
    for i in range(origins.shape[0]):
        ox, oy, oz = origins[i, 0], origins[i, 1], origins[i, 2]
        dx, dy, dz = dirs[i, 0], dirs[i, 1], dirs[i, 2]
        # a zero component becomes a huge finite inverse: slab products stay finite (no 0 * inf = nan)
        ix = 1.0 / dx if dx != 0.0 else 1e300
        iy = 1.0 / dy if dy != 0.0 else 1e300
        iz = 1.0 / dz if dz != 0.0 else 1e300
        best, face = np.inf, -1
        top, node, node_t = 0, 0, _slab_entry(ox, oy, oz, ix, iy, iz, nodes, 0, np.inf)
        while True:
            if node_t < best:
                first = links[node, 0]
                if first < 0:
                    start = links[node, 1]
                    for k in range(start, start - first):
                        ax, ay, az = tri[k, 0], tri[k, 1], tri[k, 2]
                        e1x, e1y, e1z = tri[k, 3] - ax, tri[k, 4] - ay, tri[k, 5] - az
                        e2x, e2y, e2z = tri[k, 6] - ax, tri[k, 7] - ay, tri[k, 8] - az
                        qx, qy, qz = dy * e2z - dz * e2y, dz * e2x - dx * e2z, dx * e2y - dy * e2x
                        det = e1x * qx + e1y * qy + e1z * qz
                        if det == 0.0:
                            continue
                        inv = 1.0 / det
                        sx, sy, sz = ox - ax, oy - ay, oz - az
                        u = (sx * qx + sy * qy + sz * qz) * inv
                        if u < 0.0 or u > 1.0:
                            continue
                        rx, ry, rz = sy * e1z - sz * e1y, sz * e1x - sx * e1z, sx * e1y - sy * e1x
                        v = (dx * rx + dy * ry + dz * rz) * inv
                        if v < 0.0 or u + v > 1.0:
                            continue
                        t = (e2x * rx + e2y * ry + e2z * rz) * inv
                        if 0.0 <= t < best:
                            best, face = t, k
                else:
                    t_left = _slab_entry(ox, oy, oz, ix, iy, iz, nodes, first, best)
                    t_right = _slab_entry(ox, oy, oz, ix, iy, iz, nodes, first + 1, best)
                    if t_left <= t_right:
                        if t_right < best:
                            stack[top], stack_t[top] = first + 1, t_right
                            top += 1
                        node, node_t = first, t_left
                    else:
                        if t_left < best:
                            stack[top], stack_t[top] = first, t_left
                            top += 1
                        node, node_t = first + 1, t_right
                    continue
            if top == 0:
                break
            top -= 1
            node, node_t = stack[top], stack_t[top]
        hit_face[i], hit_t[i] = face, best


@njit(**_JIT)
def _corners(vertices: np.ndarray, faces: np.ndarray, order: np.ndarray) -> np.ndarray:
    """(len(order), 9) corner coordinates of faces ``order`` (a fused ``vertices[faces[order]]``: ~3x cheaper)."""
    out = np.empty((len(order), 9))
    for i in range(len(order)):
        for c in range(3):
            v = faces[order[i], c]
            out[i, 3 * c], out[i, 3 * c + 1], out[i, 3 * c + 2] = vertices[v, 0], vertices[v, 1], vertices[v, 2]
    return out


class TriangleBVH:
    """One BVH over a triangle mesh, built once, answering exact closest-triangle queries and first ray hits."""

    def __init__(self, vertices: np.ndarray, faces: np.ndarray, leaf_size: int = LEAF_SIZE, bins: int = SAH_BINS):
        vertices = np.ascontiguousarray(vertices, dtype=np.float64)
        faces = np.ascontiguousarray(faces, dtype=np.int64)
        if len(faces) == 0:
            raise ShapeError("distance_failed", "the mesh has no triangles")
        if not np.isfinite(vertices).all():
            raise ShapeError("distance_failed", "non-finite vertex coordinates")
        if faces.ndim != 2 or faces.shape[1] != 3 or faces.min() < 0 or faces.max() >= len(vertices):
            raise ShapeError("distance_failed", "faces must be (F, 3) indices into the vertices")
        tri = _corners(vertices, faces, np.arange(len(faces)))
        self._nodes, self._links, order, self._depth = _build(tri, leaf_size, bins)
        self._order = order  # leaf position -> input face index
        self._tri = _corners(vertices, faces, order)  # triangles in leaf order: neighbours in memory

    @property
    def depth(self) -> int:
        return int(self._depth)

    def closest(self, points: np.ndarray, upper: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(exact distance float64 (N,), closest face int64 (N,)) of each point (N,3).

        ``upper`` (optional) bounds each distance from above and prunes the search from the start; it is padded
        for rounding, and any point it wrongly excludes is asked again without it. Points in a spatially coherent
        order (e.g. ``distances.morton_order``) are ~1.6x cheaper than in random order.
        """
        points = np.ascontiguousarray(points, dtype=np.float64)
        n = len(points)
        if upper is None:
            best_d2 = np.full(n, np.inf)
        else:
            best_d2 = (np.asarray(upper, dtype=np.float64) * (1.0 + 1e-9) + 1e-12) ** 2
        face = np.full(n, -1, dtype=np.int64)
        if n:
            _closest(points, self._nodes, self._links, self._tri, self._depth, best_d2, face)
        found = face >= 0
        distance, face = np.sqrt(best_d2), np.where(found, self._order[np.maximum(face, 0)], -1)
        if not found.all():
            if upper is None:
                raise ShapeError("distance_failed", f"no closest triangle for {int((~found).sum())} queries")
            distance[~found], face[~found] = self.closest(points[~found])
        return distance, face

    def first_hits(self, origins: np.ndarray, dirs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(face int64, -1 on a miss; t float64, inf on a miss) of the nearest hit of each ray (t >= 0, both
        sides of a triangle count). ``dirs`` need not be unit length: t is in units of ``dirs``."""
        origins = np.ascontiguousarray(origins, dtype=np.float64)
        dirs = np.ascontiguousarray(dirs, dtype=np.float64)
        n = len(origins)
        face = np.full(n, -1, dtype=np.int64)
        t = np.full(n, np.inf)
        if n:
            _first_hits(origins, dirs, self._nodes, self._links, self._tri, self._depth, face, t)
        hit = face >= 0
        face[hit] = self._order[face[hit]]
        return face, t


@njit(**_JIT)
def _nearest(
    queries: np.ndarray,
    nodes: np.ndarray,
    links: np.ndarray,
    points: np.ndarray,
    depth: int,
    best_d2: np.ndarray,
    best_index: np.ndarray,
) -> None:
    """For each query, the nearest point (index into ``points``) and its squared distance, in place."""
    stack = np.empty(depth + 1, np.int64)
    stack_d2 = np.empty(depth + 1)
    for i in range(queries.shape[0]):
        px, py, pz = queries[i, 0], queries[i, 1], queries[i, 2]
        best, index = best_d2[i], best_index[i]
        top, node, node_d2 = 0, 0, _box_d2(px, py, pz, nodes, 0)
        while True:
            if node_d2 < best:
                first = links[node, 0]
                if first < 0:
                    start = links[node, 1]
                    for k in range(start, start - first):
                        x, y, z = px - points[k, 0], py - points[k, 1], pz - points[k, 2]
                        d2 = x * x + y * y + z * z
                        if d2 < best:
                            best, index = d2, k
                else:
                    d_left = _box_d2(px, py, pz, nodes, first)
                    d_right = _box_d2(px, py, pz, nodes, first + 1)
                    if d_left <= d_right:
                        if d_right < best:
                            stack[top], stack_d2[top] = first + 1, d_right
                            top += 1
                        node, node_d2 = first, d_left
                    else:
                        if d_left < best:
                            stack[top], stack_d2[top] = first, d_left
                            top += 1
                        node, node_d2 = first + 1, d_right
                    continue
            if top == 0:
                break
            top -= 1
            node, node_d2 = stack[top], stack_d2[top]
        best_d2[i], best_index[i] = best, index


POINT_LEAF_SIZE = 16  # 16 to 32 points per leaf are equally fast on 2048-point clouds (measured), 4 is 20% slower


class PointTree:
    """Exact Euclidean nearest neighbour in a fixed point set (float64), on the same BVH code (a point is a
    zero-size triangle for the build)."""

    def __init__(self, points: np.ndarray, leaf_size: int = POINT_LEAF_SIZE, bins: int = SAH_BINS):
        points = np.ascontiguousarray(points, dtype=np.float64).reshape(-1, 3)
        if len(points) == 0:
            raise ValueError("PointTree needs at least one point")
        if not np.isfinite(points).all():
            raise ValueError("PointTree: non-finite point coordinates")
        self._nodes, self._links, self._order, self._depth = _build(np.tile(points, 3), leaf_size, bins)
        self._points = np.ascontiguousarray(points[self._order])

    def query(self, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(distance float64 (N,), index int64 (N,)) of the nearest point to each query (N,3). Queries in a
        spatially coherent order (e.g. Morton) are cheaper."""
        queries = np.ascontiguousarray(queries, dtype=np.float64).reshape(-1, 3)
        best_d2 = np.full(len(queries), np.inf)
        index = np.full(len(queries), -1, dtype=np.int64)
        if len(queries):
            _nearest(queries, self._nodes, self._links, self._points, self._depth, best_d2, index)
        if (index < 0).any():
            raise ValueError(f"PointTree: {int((index < 0).sum())} queries found no point (non-finite queries?)")
        return np.sqrt(best_d2), self._order[index]
