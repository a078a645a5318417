"""Fingerprints and near-duplicate groups: hash formats, robustness on synthetic shapes, the exact blocked
search against brute force, and the fingerprint_dataset stage on synthetic shards and images."""

from __future__ import annotations

import io
import json
import math

import imagehash
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipeline3d.data.fingerprints import (
    GEOMETRY_BITS,
    apply_symmetry,
    bits_to_hex,
    cube_symmetries,
    depth_images,
    geometry_hashes,
    hamming,
    hex_to_bits,
    image_hash_bits,
    pack_codes,
    phash_bits,
    soft_occupancy,
    view_hash_bits,
)
from pipeline3d.data.near_duplicates import (
    DuplicateRule,
    GeometryCodes,
    UnionFind,
    duplicates_table,
    find_near_duplicates,
)
from pipeline3d.io.itemstore import ItemStoreWriter
from pipeline3d.io.shards import ShardWriter
from pipeline3d.stages import fingerprint_dataset

R = 2.2
N_VIEWS, RPV, GRID = 6, 256, 32
PROFILE = {
    "pc_points": 8,
    "pt_pool": 8,
    "pt_surface_ratio": 0.5,
    "pt_surface_sigma": 0.02,
    "n_views": N_VIEWS,
    "rays_per_view": RPV,
    "camera_radius": R,
    "pc_grid": 8,
    "pc_dilate": 1,
    "df_grid": GRID,
    "df_dilate": 1,
    "grid_mode": "edt",
    "band_voxels": 3,
    "voxel_pool_dist": False,
}
FP_CFG = {"hash_size": 8, "views": N_VIEWS, "threshold": 6, "geometry_threshold": 12}


# ------------------------------------------------------------------------ synthetic shapes (union of boxes)
def camera_rays(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The cache's ray layout contract: Fibonacci-sphere cameras, jittered row-major pixel grid per view."""
    i = np.arange(N_VIEWS, dtype=float)
    z = 1 - (2 * i + 1) / N_VIEWS
    phi = i * math.pi * (3 - math.sqrt(5))
    cams = R * np.stack([np.sqrt(1 - z * z) * np.cos(phi), np.sqrt(1 - z * z) * np.sin(phi), z], 1)
    side = math.ceil(math.sqrt(RPV))
    row, col = np.divmod(np.arange(RPV), side)
    tan_half = math.tan(math.asin(1 / R))
    origins, dirs = [], []
    for c in cams:
        f = -c / np.linalg.norm(c)
        right = np.cross(f, [0.0, 1.0, 0.0] if abs(f[2]) > 0.99 else [0.0, 0.0, 1.0])
        right /= np.linalg.norm(right)
        up = np.cross(right, f)
        jit = rng.random((RPV, 2))
        x = (2 * (col + jit[:, 0]) / side - 1) * tan_half
        y = (1 - 2 * (row + jit[:, 1]) / side) * tan_half
        d = f + x[:, None] * right + y[:, None] * up
        dirs.append(d / np.linalg.norm(d, axis=1, keepdims=True))
        origins.append(np.repeat(c[None], RPV, 0))
    return np.concatenate(origins), np.concatenate(dirs)


def cast(boxes, o, d) -> tuple[np.ndarray, np.ndarray]:
    best = np.full(len(o), np.inf)
    with np.errstate(divide="ignore", invalid="ignore"):
        for lo, hi in boxes:
            t1, t2 = (lo - o) / d, (hi - o) / d
            near, far = np.nanmax(np.minimum(t1, t2), axis=1), np.nanmin(np.maximum(t1, t2), axis=1)
            best = np.where((far >= near) & (far > 0), np.minimum(best, np.maximum(near, 0)), best)
    hit = np.isfinite(best)
    return np.where(hit, best, 0).astype(np.float32), hit.astype(np.uint8)


def udf(boxes) -> np.ndarray:
    c = -1 + (np.arange(GRID) + 0.5) * (2 / GRID)
    p = np.stack(np.meshgrid(c, c, c, indexing="ij"), -1)
    dist = np.full(p.shape[:3], np.inf)
    for lo, hi in boxes:
        dist = np.minimum(dist, np.linalg.norm(np.maximum(np.maximum(lo - p, p - hi), 0), axis=-1))
    return dist.astype(np.float16)


def box(lo, hi):
    return np.array(lo, float), np.array(hi, float)


TABLE = [box([-0.7, -0.5, 0.2], [0.7, 0.5, 0.3])] + [
    box([sx * 0.6 - 0.06, sy * 0.4 - 0.06, -0.6], [sx * 0.6 + 0.06, sy * 0.4 + 0.06, 0.2])
    for sx in (-1, 1)
    for sy in (-1, 1)
]
TOWER = [box([-0.2, -0.2, -0.8], [0.2, 0.2, 0.8]), box([-0.5, -0.5, -0.8], [0.5, 0.5, -0.65])]
CHAIR = [box([-0.4, -0.4, -0.1], [0.4, 0.4, 0]), box([-0.4, 0.3, 0], [0.4, 0.4, 0.8])] + [
    box([sx * 0.35 - 0.04, sy * 0.35 - 0.04, -0.8], [sx * 0.35 + 0.04, sy * 0.35 + 0.04, -0.1])
    for sx in (-1, 1)
    for sy in (-1, 1)
]


def jittered(boxes, seed, s=0.01):
    rng = np.random.default_rng(seed)
    return [(lo + rng.normal(0, s, 3), hi + rng.normal(0, s, 3)) for lo, hi in boxes]


def turned(boxes):
    """Rotated by 90 degrees about x: (x, y, z) -> (x, -z, y)."""
    return [(np.array([lo[0], -hi[2], lo[1]]), np.array([hi[0], -lo[2], hi[1]])) for lo, hi in boxes]


def cache_arrays(boxes, seed) -> dict[str, np.ndarray]:
    t, hit = cast(boxes, *camera_rays(np.random.default_rng(seed)))
    return {"ray_t_mesh": t, "ray_hit_mesh": hit, "udf_grid": udf(boxes)}


def hashes_of(arrays):
    views = view_hash_bits(
        arrays["ray_t_mesh"], arrays["ray_hit_mesh"], views=N_VIEWS, rays_per_view=RPV, camera_radius=R, hash_size=8
    )
    return views, geometry_hashes(soft_occupancy(arrays["udf_grid"])[None])


# ------------------------------------------------------------------------------------------- hash formats
def test_hex_is_imagehash_text_and_round_trips():
    rng = np.random.default_rng(0)
    for size in (8, 5):
        img = Image.fromarray((rng.random((40, 40)) * 255).astype(np.uint8))
        bits = phash_bits(img, size)
        assert bits.shape == (size * size,)
        assert bits_to_hex(bits) == str(imagehash.phash(img, hash_size=size))
        assert np.array_equal(hex_to_bits(bits_to_hex(bits), size * size), bits)


def test_packed_hamming_counts_differing_bits():
    rng = np.random.default_rng(1)
    a, b = rng.random((20, 130)) < 0.5, rng.random((20, 130)) < 0.5
    pa, pb = pack_codes(a), pack_codes(b)
    assert pa.shape == (20, 3) and pa.dtype == np.uint64
    assert np.array_equal(hamming(pa, pb), (a != b).sum(1))


def test_depth_images_follow_the_ray_layout():
    side = math.ceil(math.sqrt(10))  # 4x4 grid, 10 pixels used
    t = np.zeros(3 * 10, np.float32)
    hit = np.zeros(3 * 10, np.uint8)
    t[1 * 10 + 6], hit[1 * 10 + 6] = R - 1, 1  # view 1, pixel 6 = row 1, col 2: nearest possible depth
    t[2 * 10 + 9], hit[2 * 10 + 9] = R + 1, 1  # view 2, pixel 9 = row 2, col 1: farthest
    t[0] = 1.7  # a miss keeps the background whatever its t
    img = depth_images(t, hit, views=3, rays_per_view=10, camera_radius=R)
    assert img.shape == (3, side, side) and img.dtype == np.uint8
    assert img[1, 1, 2] == 255 and img[2, 2, 1] == 32
    assert img.sum() == 255 + 32
    # fixed world range: the same depth gives the same grey level whatever else is in the view
    t2, hit2 = t.copy(), hit.copy()
    t2[1 * 10 + 0], hit2[1 * 10 + 0] = R, 1
    assert depth_images(t2, hit2, views=3, rays_per_view=10, camera_radius=R)[1, 1, 2] == 255
    with pytest.raises(ValueError, match="views need"):
        depth_images(t, hit, views=4, rays_per_view=10, camera_radius=R)


def test_image_phash_from_png_bytes():
    rng = np.random.default_rng(2)
    pixels = np.kron(rng.random((8, 8)) * 255, np.ones((8, 8))).astype(np.uint8)
    img = Image.fromarray(pixels).convert("RGB")
    noisy = Image.fromarray(np.clip(pixels + rng.normal(0, 3, pixels.shape), 0, 255).astype(np.uint8))
    other = Image.fromarray(np.kron(rng.random((8, 8)) * 255, np.ones((8, 8))).astype(np.uint8))

    def png(im):
        buf = io.BytesIO()
        im.save(buf, format="PNG")
        return buf.getvalue()

    bits = image_hash_bits(png(img), 8)
    assert np.array_equal(bits, imagehash.phash(img, hash_size=8).hash.ravel())
    assert (bits != image_hash_bits(png(noisy), 8)).sum() <= 4
    assert (bits != image_hash_bits(png(other), 8)).sum() >= 16


# ------------------------------------------------------------------------------- robustness on shapes
@pytest.fixture(scope="module")
def shape_hashes():
    return {
        "table": hashes_of(cache_arrays(TABLE, 1)),
        "table_jit": hashes_of(cache_arrays(jittered(TABLE, 7), 2)),
        "table_turned": hashes_of(cache_arrays(turned(TABLE), 3)),
        "tower": hashes_of(cache_arrays(TOWER, 4)),
        "chair": hashes_of(cache_arrays(CHAIR, 5)),
    }


def test_geometry_hash_is_robust_to_jitter_and_separates_shapes(shape_hashes):
    geo = {k: v[1] for k, v in shape_hashes.items()}
    assert (geo["table"].plain != geo["table_jit"].plain).sum() <= 12
    for other in ("tower", "chair"):
        assert (geo["table"].plain != geo[other].plain).sum() >= 60
        # even allowing any of the 48 axis rotations/reflections, different shapes stay far apart
        assert (geo["table"].plain[0][None] != geo[other].variants[0]).sum(1).min() >= 60


def test_rotation_aware_distance_sees_a_turned_copy(shape_hashes):
    views, geo = shape_hashes["table"]
    tviews, tgeo = shape_hashes["table_turned"]
    assert (geo.plain != tgeo.plain).sum() > 60  # the orientation-dependent hash does not match ...
    assert (views != tviews).sum(1).mean() > FP_CFG["threshold"]  # ... nor do the fixed-camera views
    assert (geo.plain[0][None] != tgeo.variants[0]).sum(1).min() <= 4  # but one of the 48 symmetries does
    assert (geo.sym != tgeo.sym).sum() <= 4  # and the invariant filter lets the pair through


def test_symmetry_variants_are_the_transformed_fields():
    rng = np.random.default_rng(3)
    field = rng.random((1, 16, 16, 16)).astype(np.float32)
    g = geometry_hashes(field)
    assert len(cube_symmetries()) == 48 and g.variants.shape == (1, 48, GEOMETRY_BITS)
    assert np.array_equal(g.variants[0, 0], g.plain[0])
    for k in (5, 17, 40):
        perm, flips = cube_symmetries()[k]
        moved = np.ascontiguousarray(apply_symmetry(field[0], perm, flips))[None]
        assert np.array_equal(geometry_hashes(moved).plain[0], g.variants[0, k])
        assert np.array_equal(geometry_hashes(moved).sym[0], g.sym[0])  # invariant


def test_soft_occupancy_handles_sizes_not_divisible_by_the_grid():
    u = np.full((24, 24, 24), 1.0, np.float16)
    u[8:16, 8:16, 8:16] = 0
    f = soft_occupancy(u)
    assert f.shape == (16, 16, 16) and f.dtype == np.float32
    assert f[8, 8, 8] > 0.9 and f[0, 0, 0] < 0.01


# ------------------------------------------------------------------------------------------- the search
def brute_force(view_bits, rule, plain=None, sym=None, variants=None, inverse=None):
    """O(N^2) reference of the rule: pairs, rotation-aware geometry distance where the filter applies."""
    n = len(view_bits)
    vd = (view_bits[:, None] != view_bits[None]).sum(-1)
    dup = vd <= rule.view_limit
    gd = None
    if plain is not None:
        gd = (plain[:, None] != plain[None]).sum(-1)
        sd = (sym[:, None] != sym[None]).sum(-1)
        d = (plain[:, None, None, :] != variants[None, :, :, :]).sum(-1)  # [i, j, g] = d(i, g j)
        rot = (d + d.transpose(1, 0, 2)[:, :, inverse]).min(-1) / 2  # min_g (d(i, g j) + d(j, g^-1 i)) / 2
        cand = (sd <= rule.geometry_threshold) & (gd > rule.geometry_threshold)
        gd = np.where(cand, np.minimum(gd, rot), gd)
        dup |= gd <= rule.geometry_threshold
    upper = np.triu(np.ones((n, n), bool), 1)
    return {(int(i), int(j)) for i, j in zip(*np.nonzero(dup & upper))}, vd, gd


def components(n, pairs):
    uf = list(range(n))

    def find(x):
        while uf[x] != x:
            x = uf[x]
        return x

    for i, j in sorted(pairs):
        a, b = find(i), find(j)
        uf[max(a, b)] = min(a, b)
    return np.array([find(i) for i in range(n)])


@pytest.mark.parametrize("block_bytes", [8 * 97 * 5, 1 << 20])
def test_blocked_search_equals_brute_force(block_bytes):
    rng = np.random.default_rng(4)
    n, views, bits = 97, 3, 64
    proto = rng.random((25, views * bits)) < 0.5
    view_bits = proto[rng.integers(0, 25, n)] ^ (rng.random((n, views * bits)) < 0.04)
    gproto = rng.random((30, 48, 128)) < 0.5
    src = rng.integers(0, 30, n)
    turn = rng.integers(0, 48, n)  # each item is its prototype seen under some "symmetry" of a cyclic group
    variants = np.stack([np.roll(gproto[s], -t, axis=0) for s, t in zip(src, turn)])
    variants ^= rng.random(variants.shape) < 0.03
    plain = variants[:, 0]
    sym = gproto[src, 0] ^ (rng.random((n, 128)) < 0.02)
    rule = DuplicateRule(views=views, threshold=4, geometry_threshold=10)
    inverse = (-np.arange(48)) % 48
    geo = GeometryCodes(
        pack_codes(plain), pack_codes(sym), pack_codes(variants.reshape(-1, 128)).reshape(n, 48, 2), inverse
    )
    res = find_near_duplicates(pack_codes(view_bits), rule, geo, block_bytes=block_bytes)
    pairs, vd, gd = brute_force(view_bits, rule, plain, sym, variants, inverse)
    assert res.n_pairs == len(pairs) and res.n_pairs > 20 and res.n_rotated_pairs > 0
    assert np.array_equal(res.root, components(n, pairs))
    score = np.minimum(vd / rule.view_limit, gd / rule.geometry_threshold).astype(float)
    np.fill_diagonal(score, np.inf)
    best = score.min(1)
    assert np.allclose(res.score, best)
    assert all(score[i, res.nearest[i]] == best[i] for i in range(n))
    assert np.allclose(res.view_distance, vd[np.arange(n), res.nearest] / views)


def test_view_only_search_equals_brute_force():
    rng = np.random.default_rng(5)
    bits = rng.random((150, 64)) < 0.5
    bits[75:] = bits[:75] ^ (rng.random((75, 64)) < 0.05)
    rule = DuplicateRule(views=1, threshold=5)
    res = find_near_duplicates(pack_codes(bits), rule)
    pairs, vd, _ = brute_force(bits, rule)
    assert res.n_pairs == len(pairs) > 30
    assert np.array_equal(res.root, components(150, pairs))
    assert np.isnan(res.geometry_distance).all()


def test_union_find_roots_are_smallest_members():
    uf = UnionFind(8)
    uf.union(np.array([7, 5, 3]), np.array([5, 3, 6]))  # chain 3-5-6-7
    uf.union(np.array([4]), np.array([1]))
    assert uf.roots().tolist() == [0, 1, 2, 3, 1, 3, 3, 3]


def test_duplicates_table_rows_and_groups():
    ids = ["d/a/1", "d/a/2", "d/b/3", "d/b/4"]
    bits = np.array([[0] * 64, [0] * 63 + [1], [1] * 64, [1] * 32 + [0] * 32], bool)
    res = find_near_duplicates(pack_codes(bits), DuplicateRule(views=1, threshold=2))
    table = duplicates_table(ids, res)
    assert table["group"].tolist() == ["d/a/1", "d/a/1", "d/b/3", "d/b/4"]
    assert table["group_size"].tolist() == [2, 2, 1, 1]
    assert table["nearest"].tolist()[:2] == ["d/a/2", "d/a/1"] and table["distance"].tolist()[:2] == [1.0, 1.0]
    with pytest.raises(ValueError, match="sorted"):
        duplicates_table(ids[::-1], res)


def test_single_item_has_no_neighbour():
    res = find_near_duplicates(pack_codes(np.zeros((1, 64), bool)), DuplicateRule(views=1, threshold=2))
    table = duplicates_table(["d/a/1"], res)
    assert table["group_size"].tolist() == [1] and pd.isna(table["nearest"].iloc[0])


# ---------------------------------------------------------------------------------------------- the stage
def write_mesh_dataset(root, items, manifest_order=None):
    """Cache shards (ray + udf arrays only) + index + manifest for ``items`` = {shape_id: arrays}."""
    cache = root / "cache"
    ids = sorted(items)
    rows = []
    for shard in range(2):
        mine = [sid for k, sid in enumerate(ids) if k % 2 == shard]
        with ShardWriter(
            cache / f"shard-{shard:04d}.h5",
            dataset="ds",
            shard=shard,
            n_shards=2,
            kind="mesh",
            profile=PROFILE,
            keys=("ray_t_mesh", "ray_hit_mesh", "udf_grid"),
        ) as w:
            for row, sid in enumerate(mine):
                w.append(sid, items[sid])
                rows.append((sid, shard, row))
    pd.DataFrame(rows, columns=["shape_id", "shard", "row"]).to_parquet(cache / "index.parquet")
    order = manifest_order or ids
    manifest = pd.DataFrame({"shape_id": order, "kind": "mesh", "label": 0, "source_split": ""})
    manifest.to_parquet(root / "manifest.parquet")
    return cache


def run_stage(root, cache, kind="mesh", fp=FP_CFG, manifest="manifest.parquet"):
    params = {
        "seed": 0,
        "dataset": "ds",
        "source": {"kind": kind, "path": "x"},
        "fingerprints": fp,
        "cache": {"shards": 2, **PROFILE},
        "stage_version": 1,
    }
    return fingerprint_dataset.main(
        [
            "--params",
            json.dumps(params),
            "--manifest",
            str(root / manifest),
            "--cache-dir",
            str(cache),
            "--items-dir",
            str(root / "items"),
            "--fingerprints",
            str(root / "out" / "fingerprints.parquet"),
            "--duplicates",
            str(root / "out" / "duplicates.parquet"),
        ]
    )


def test_stage_groups_jittered_and_turned_copies(tmp_path):
    items = {
        "ds/table/a": cache_arrays(TABLE, 1),
        "ds/table/b_copy": cache_arrays(jittered(TABLE, 7), 2),
        "ds/table/c_turned": cache_arrays(turned(TABLE), 3),
        "ds/tower/a": cache_arrays(TOWER, 4),
        "ds/chair/a": cache_arrays(CHAIR, 5),
    }
    cache = write_mesh_dataset(tmp_path, items)
    assert run_stage(tmp_path, cache) == 0
    dups = pd.read_parquet(tmp_path / "out" / "duplicates.parquet").set_index("shape_id")
    assert list(dups.columns) == ["group", "group_size", "nearest", "distance", "geometry_distance", "score"]
    for sid in ("ds/table/a", "ds/table/b_copy", "ds/table/c_turned"):
        assert dups.loc[sid, "group"] == "ds/table/a" and dups.loc[sid, "group_size"] == 3
        assert dups.loc[sid, "score"] <= 1
    for sid in ("ds/tower/a", "ds/chair/a"):
        assert dups.loc[sid, "group"] == sid and dups.loc[sid, "group_size"] == 1 and dups.loc[sid, "score"] > 1
    fps = pd.read_parquet(tmp_path / "out" / "fingerprints.parquet")
    assert fps["shape_id"].tolist() == sorted(items)
    assert all(len(v) == N_VIEWS and all(len(h) == 16 for h in v) for v in fps["view_hashes"])
    assert all(len(h) == GEOMETRY_BITS // 4 for h in fps["geometry_hash"])
    meta = pq.read_schema(tmp_path / "out" / "duplicates.parquet").metadata
    assert b"pipeline3d.duplicate_rule" in meta

    # manifest row order does not matter: same bytes
    outputs = [tmp_path / "out" / "duplicates.parquet", tmp_path / "out" / "fingerprints.parquet"]
    first = [p.read_bytes() for p in outputs]
    pd.read_parquet(tmp_path / "manifest.parquet").iloc[::-1].to_parquet(tmp_path / "manifest2.parquet")
    assert run_stage(tmp_path, cache, manifest="manifest2.parquet") == 0
    assert [p.read_bytes() for p in outputs] == first


def test_stage_skips_items_the_cache_rejected_and_refuses_foreign_ones(tmp_path, capsys):
    items = {"ds/a/1": cache_arrays(TOWER, 1), "ds/b/2": cache_arrays(CHAIR, 2)}
    cache = write_mesh_dataset(tmp_path, items, manifest_order=["ds/a/1", "ds/b/2", "ds/c/rejected"])
    assert run_stage(tmp_path, cache) == 0
    assert "ds/c/rejected" in capsys.readouterr().err
    assert len(pd.read_parquet(tmp_path / "out" / "duplicates.parquet")) == 2
    pd.DataFrame({"shape_id": ["ds/a/1"], "kind": "mesh", "label": 0, "source_split": ""}).to_parquet(
        tmp_path / "manifest.parquet"
    )
    assert run_stage(tmp_path, cache) == 1
    assert "another manifest" in capsys.readouterr().err


def test_stage_errors_name_the_problem(tmp_path, capsys):
    cache = write_mesh_dataset(tmp_path, {"ds/a/1": cache_arrays(TOWER, 1)})
    pd.DataFrame({"id": ["ds/a/1"]}).to_parquet(tmp_path / "manifest.parquet")
    assert run_stage(tmp_path, cache) == 1
    err = capsys.readouterr().err
    assert "manifest.parquet: manifest lacks columns" in err and "shape_id" in err
    write_mesh_dataset(tmp_path, {"ds/a/1": cache_arrays(TOWER, 1)})
    assert run_stage(tmp_path, cache, fp={**FP_CFG, "views": N_VIEWS + 1}) == 1
    assert "fingerprints.views = 7" in capsys.readouterr().err


def test_stage_on_images(tmp_path):
    rng = np.random.default_rng(6)

    def png(pixels):
        buf = io.BytesIO()
        Image.fromarray(pixels).save(buf, format="PNG")
        return np.frombuffer(buf.getvalue(), np.uint8)

    base = np.kron(rng.random((8, 8)) * 255, np.ones((8, 8))).astype(np.uint8)
    noisy = np.clip(base + rng.normal(0, 2, base.shape), 0, 255).astype(np.uint8)
    images = {
        "img/x/1": png(base),
        "img/x/2": png(noisy),
        "img/y/3": png(np.kron(rng.random((8, 8)) * 255, np.ones((8, 8))).astype(np.uint8)),
    }
    with ItemStoreWriter(tmp_path / "items" / "items.h5", "img", "image") as w:
        for sid, data in images.items():
            w.add(sid, image_bytes=data)
    pd.DataFrame({"shape_id": list(images), "kind": "image", "label": 0, "source_split": ""}).to_parquet(
        tmp_path / "manifest.parquet"
    )
    assert run_stage(tmp_path, tmp_path / "no-cache", kind="image") == 0
    dups = pd.read_parquet(tmp_path / "out" / "duplicates.parquet").set_index("shape_id")
    assert dups["group"].tolist() == ["img/x/1", "img/x/1", "img/y/3"]
    assert dups["geometry_distance"].isna().all()
    fps = pd.read_parquet(tmp_path / "out" / "fingerprints.parquet")
    assert fps["geometry_hash"].isna().all() and all(len(v) == 1 for v in fps["view_hashes"])


def test_views_of_one_object_share_a_group():
    """Images of the same object must never straddle splits, even when their pixels differ a lot."""
    from pipeline3d.data.near_duplicates import DuplicateRule, duplicates_table, find_near_duplicates, link_same_source

    rng = np.random.default_rng(0)
    codes = rng.integers(0, 2**63, size=(4, 1), dtype=np.uint64)  # four unrelated hashes
    result = find_near_duplicates(codes, DuplicateRule(views=1, threshold=0.0))
    assert len(set(result.root.tolist())) == 4
    linked = link_same_source(result, ["chair/a", None, "chair/a", "table/b"])
    table = duplicates_table(["i0", "i1", "i2", "i3"], linked)
    assert table["group"].tolist() == ["i0", "i1", "i0", "i3"]
    assert table["group_size"].tolist() == [2, 1, 2, 1]
