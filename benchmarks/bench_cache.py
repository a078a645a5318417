"""Cache throughput on real meshes: the shard builder end to end, 1 vs 2 single-threaded workers, per grid mode.

Input: the 114 SHREC'07 watertight meshes (``<repo>/../shared/data/shrec07_watertight``), parsed and cleaned by
ingest's own loader (``pipeline3d.io.meshes.load_mesh``) into an item store. Each worker is a fresh process pinned
to one CPU (``os.sched_setaffinity``) with BLAS/OpenMP capped at one thread, and runs the real shard job
(``pipeline3d.jobs.build_cache_shard.build_shard``: item-store load + compute + shard write) over *all* shapes into
its own shard file, so 1 and 2 workers do the same work per worker and the ratio measures scaling, not load
balance. Reported per mode: seconds per shape by stage (mean over shapes), shapes/s, peak RSS per worker
(``resource.getrusage``) and the 2-worker/1-worker throughput ratio. ``--engines`` adds engine comparisons on a
subset (our BVH vs fcpw vs trimesh closest point, Morton vs input query order, uniform vs near-surface query cost,
point BVH vs pykdtree vs cKDTree, our EDT vs the edt package vs scipy's, our BVH vs fcpw vs Embree rays, shard
codecs per array, narrowband accuracy). ``--ab GIT_REF`` times ``cache_mesh`` of GIT_REF's cache package against
the working tree's, interleaved shape by shape in one process (the robust before/after on a shared machine).

    .venv/bin/python benchmarks/bench_cache.py [--modes edt narrowband exact] [--limit N] [--engines]
                                                [--ab GIT_REF] [--no-workers]
                                                [--out benchmarks/results/bench_cache.json]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import resource
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / ".." / "shared" / "data" / "shrec07_watertight"
STAGES = ("load", "prepare", "sample", "pool", "grid", "rays", "pc_rays", "write")
TARGETS = {"edt": 0.08, "narrowband": 0.18}  # s/shape, one single-threaded worker per core
RSS_TARGET_MB = 1500
SCALING_TARGET = 1.7
CACHE = {
    "shards": 1,
    "pc_points": 2048,
    "pt_pool": 20000,
    "pt_surface_ratio": 0.5,
    "pt_surface_sigma": 0.02,
    "n_views": 20,
    "rays_per_view": 400,
    "camera_radius": 2.2,
    "pc_grid": 64,
    "pc_dilate": 1,
    "df_grid": 64,
    "df_dilate": 1,
    "grid_mode": "edt",
    "band_voxels": 3,
    "voxel_pool_dist": False,
    "compression": "gzip",
    "threads": 1,
}


def machine() -> dict:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "nproc": os.cpu_count(),
        "cpu": model,
        "python": platform.python_version(),
        "date": str(date.today()),
        "loadavg_start": os.getloadavg(),
    }


# The 30 meshes of shared/reference/cache-performance.md (paths inside pybullet_data), to compare with its anchors.
ANCHOR_SET = (
    "random_urdfs/525/525.obj",
    "random_urdfs/100/100.obj",
    "toys/concave_box.obj",
    "random_urdfs/200/200.obj",
    "duck_vhacd.obj",
    "random_urdfs/000/000.obj",
    "random_urdfs/700/700.obj",
    "random_urdfs/350/350.obj",
    "random_urdfs/025/025.obj",
    "random_urdfs/400/400.obj",
    "objects/mug.obj",
    "bunny.obj",
    "torus/torus_textured.obj",
    "racecar/meshes/left_front_wheel.obj",
    "sphere_smooth.obj",
    "kuka_iiwa/meshes/link_3.obj",
    "teddy2_VHACD_CHs.obj",
    "lego/lego.obj",
    "aliengo/meshes/trunk.obj",
    "kuka_iiwa/meshes/link_0.obj",
    "duck.obj",
    "laikago/chassis_mod.obj",
    "a1/meshes/calf.obj",
    "franka_panda/meshes/visual/hand.obj",
    "soccerball.obj",
    "laikago/chassis.obj",
    "franka_panda/meshes/visual/link3.obj",
    "mini_cheetah/meshes/mini_lower_link.obj",
    "mini_cheetah/meshes/mini_body.obj",
    "a1/meshes/trunk.obj",
)


def mesh_files(data: Path, anchor: bool) -> list[Path]:
    """SHREC'07 (ModelNet layout .off) by default; with ``anchor``, the reference study's 30 pybullet_data meshes."""
    if anchor:
        return [data / rel for rel in ANCHOR_SET]
    return sorted(data.glob("*/*/*.off"))


def build_inputs(workdir: Path, limit: int | None, data: Path = DATA, anchor: bool = False) -> tuple[Path, Path, int]:
    import numpy as np  # noqa: F401  (after the thread caps)
    import pandas as pd

    from pipeline3d.io.itemstore import ItemStoreWriter
    from pipeline3d.io.meshes import load_mesh

    files = mesh_files(data, anchor)[:limit]
    if not files or not all(f.exists() for f in files):
        raise SystemExit(f"meshes missing under {data}")
    ids = []
    with ItemStoreWriter(workdir / "items.h5", "bench", "mesh") as writer:
        for path in files:
            mesh = load_mesh(path.read_bytes(), path.suffix[1:], 10_000_000)
            sid = f"bench/{path.parent.relative_to(data).as_posix() or 'root'}/{path.stem}"
            writer.add(sid, vertices=mesh.vertices, faces=mesh.faces)
            ids.append(sid)
    pd.DataFrame({"shape_id": ids}).to_parquet(workdir / "manifest.parquet")
    return workdir / "manifest.parquet", workdir / "items.h5", len(ids)


def _worker(cpu: int, cache: dict, manifest: str, items: str, out: str, queue) -> None:
    os.sched_setaffinity(0, {cpu})
    import logging

    start = time.perf_counter()
    import numpy as np

    from pipeline3d.data.cache.build import CacheProfile, cache_mesh
    from pipeline3d.jobs.build_cache_shard import build_shard

    imported = time.perf_counter() - start
    # Once per process, not per shape: load the compiled kernels from numba's on-disk cache (a shard job of a real
    # data set pays this once for hundreds of shapes). Done on a tetrahedron, reported as warm_s.
    start = time.perf_counter()
    tetra = np.array([[1, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1]], dtype=np.float64) / np.sqrt(3)
    cache_mesh(
        tetra, np.array([[0, 1, 2], [0, 3, 1], [0, 2, 3], [1, 3, 2]]), "warm-up", 0, CacheProfile.from_config(cache)
    )
    warmed = time.perf_counter() - start
    params = {"seed": 0, "dataset": "bench", "cache": cache}
    logger = logging.getLogger("bench")
    begin, usage = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
    n_ok, failures, seconds = build_shard(params, 0, manifest, items, out, logger)
    wall = time.perf_counter() - begin
    end = resource.getrusage(resource.RUSAGE_SELF)
    cpu_s = (end.ru_utime - usage.ru_utime) + (end.ru_stime - usage.ru_stime)
    queue.put(
        {
            "cpu": cpu,
            "wall": wall,
            "cpu_s": cpu_s,
            "import_s": imported,
            "warm_s": warmed,
            "n": n_ok + len(failures),
            "failed": len(failures),
            "seconds": seconds,
            "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "bytes": os.path.getsize(out),
            "path": str(out),
        }
    )


def run_workers(n_workers: int, cache: dict, manifest: Path, items: Path, workdir: Path) -> list[dict]:
    load_before = os.getloadavg()[0]
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    cpus = sorted(os.sched_getaffinity(0))[:n_workers]
    procs = [
        ctx.Process(
            target=_worker,
            args=(
                cpu,
                cache,
                str(manifest),
                str(items),
                str(workdir / f"w{n_workers}-{cpu}-{cache['grid_mode']}.h5"),
                queue,
            ),
        )
        for cpu in cpus
    ]
    for p in procs:
        p.start()
    results = [queue.get() for _ in procs]
    for p in procs:
        p.join()
        if p.exitcode:
            raise SystemExit(f"worker exited with {p.exitcode}")
    for r in results:
        r["loadavg_1min"] = (load_before, os.getloadavg()[0])  # before / after the run (includes our workers)
    return sorted(results, key=lambda r: r["cpu"])


def read_ms_per_shape(path: Path, passes: int = 3) -> float:
    """CPU ms to read one shape's row of every array back (shuffled rows, file in the page cache; best pass)."""
    import h5py
    import numpy as np

    with h5py.File(path, "r") as h5:
        keys = [k for k in json.loads(h5.attrs["arrays"])]
        n = int(h5.attrs["n_rows"])
        order = np.random.default_rng(0).permutation(n)
        best = float("inf")
        for _ in range(passes):
            start = time.process_time()
            for row in order:
                for key in keys:
                    h5[key][row]
            best = min(best, time.process_time() - start)
    return 1000 * best / n


def summarise(mode: str, one: list[dict], two: list[dict]) -> dict:
    w1 = one[0]
    per_stage = {k: w1["seconds"].get(k, 0.0) / w1["n"] for k in STAGES}
    per_shape = w1["wall"] / w1["n"]
    thr1 = w1["n"] / w1["wall"]
    thr2 = sum(r["n"] for r in two) / max(r["wall"] for r in two)
    return {
        "mode": mode,
        "shapes": w1["n"],
        "failed": w1["failed"],
        "s_per_shape_1w": per_shape,
        "cpu_s_per_shape_1w": w1["cpu_s"] / w1["n"],
        "stage_s_per_shape": per_stage,
        "throughput_1w": thr1,
        "throughput_2w": thr2,
        "ratio_2w_1w": thr2 / thr1,
        "max_rss_mb": max(r["max_rss_mb"] for r in one + two),
        "shard_mb_per_shape": w1["bytes"] / w1["n"] / 1e6,
        "import_s": w1["import_s"],
        "warm_s": w1["warm_s"],
        "target_s_per_shape": TARGETS.get(mode),
        "loadavg_1min_1w": w1["loadavg_1min"],
        "loadavg_1min_2w": two[0]["loadavg_1min"],
        "workers_1": one,
        "workers_2": two,
    }


def table(rows: list[dict]) -> str:
    head = (
        "| grid mode | s/shape (1 worker) | CPU s/shape | "
        + " | ".join(STAGES)
        + " | shapes/s 1w | shapes/s 2w | 2w/1w | load avg 1w / 2w | peak RSS/worker | target s/shape |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        stages = " | ".join(f"{1000 * r['stage_s_per_shape'][k]:.1f}" for k in STAGES)
        target = r["target_s_per_shape"]
        if target is None:
            verdict = "-"
        else:  # judged on both the wall and the (more robust) CPU time per shape
            met = [r["s_per_shape_1w"] <= target, r["cpu_s_per_shape_1w"] <= target]
            verdict = f"{target:.2f} ({'met' if all(met) else 'CPU only' if met[1] else 'NOT met'})"
        load = f"{max(r['loadavg_1min_1w']):.1f} / {max(r['loadavg_1min_2w']):.1f}"
        lines.append(
            f"| {r['mode']} | {r['s_per_shape_1w']:.3f} | {r['cpu_s_per_shape_1w']:.3f} | {stages} | "
            f"{r['throughput_1w']:.2f} | {r['throughput_2w']:.2f} | {r['ratio_2w_1w']:.2f} | {load} | "
            f"{r['max_rss_mb']:.0f} MB | {verdict} |"
        )
    return "\n".join(lines) + "\n\n(stage columns: ms per shape, 1 worker)"


def engines(manifest: Path, items: Path, n_shapes: int) -> dict:
    """Engine comparisons on a subset (single CPU, process time, engines interleaved shape by shape): the choices
    made in ``pipeline3d.data.cache`` against their alternatives, with the accuracy of each against its oracle."""
    os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    import edt
    import h5py
    import numpy as np
    import trimesh
    from pykdtree.kdtree import KDTree
    from scipy import ndimage

    from pipeline3d.data.cache import grids
    from pipeline3d.data.cache.build import CacheProfile, cache_mesh, point_tree
    from pipeline3d.data.cache.distances import FcpwMeshDistance, MeshDistance, NearestPoint, morton_order
    from pipeline3d.data.cache.normalize import normalize_mesh
    from pipeline3d.data.cache.rays import EmbreeRayCaster, MeshRayCaster, camera_rays
    from pipeline3d.data.cache.sampling import SurfaceSampler, query_pool
    from pipeline3d.data.cache.voxel_walk import dilate, voxelize
    from pipeline3d.io.cache_schema import profile_of
    from pipeline3d.io.itemstore import ItemStore
    from pipeline3d.io.shards import ShardWriter, array_codecs

    store = ItemStore(items)
    rows = list(range(0, len(store), max(1, len(store) // n_shapes)))[:n_shapes]
    acc: dict[str, list[float]] = {}

    def clock(name, fn):
        t = time.process_time()
        out = fn()
        acc.setdefault(name, []).append(time.process_time() - t)
        return out

    # the compiled kernels load (or compile) on first use: not part of any per-shape cost
    warm_v, warm_f = normalize_mesh(*store.mesh(rows[0]))
    cache_mesh(warm_v, warm_f, "warm-up", 0, CacheProfile.from_config(CACHE))

    errors = {
        "bvh_minus_fcpw_max": -np.inf,
        "bvh_minus_fcpw_min": np.inf,
        "trimesh_vs_bvh_max_abs": 0.0,
        "embree_vs_bvh_hit_disagree": 0,
        "embree_vs_bvh_t_max_abs": 0.0,
        "fcpw_vs_bvh_hit_disagree": 0,
        "point_tree_vs_pykdtree_max_abs": 0.0,
        "point_tree_vs_ckdtree_max_abs": 0.0,
        "squared_edt_vs_scipy_max_abs": 0.0,
        "edt_pkg_vs_scipy_max_abs": 0.0,
        "narrowband_max_abs_outside_band": 0.0,
        "narrowband_mean_abs_outside_band": [],
    }
    cache_rows = []
    for row in rows:
        rng = np.random.default_rng(row)
        vertices, faces = normalize_mesh(*store.mesh(row))
        sampler = SurfaceSampler(vertices, faces)
        near, _ = sampler.sample(10000, rng)
        pool = query_pool(near, 10000, 0.02, rng, rng)
        reference = clock("fcpw BVH build", lambda: FcpwMeshDistance(vertices, faces))
        distance = clock("BVH build (bvh.TriangleBVH, used)", lambda: MeshDistance(vertices, faces))
        order = clock("morton sort 20k", lambda: morton_order(pool))
        sorted_pool = pool[order]
        clock("fcpw 20k pool, input order", lambda: reference.distances_sorted(pool))
        clock("BVH 20k pool, input order", lambda: distance.distances_sorted(pool))
        fcpw = clock("fcpw 20k pool, Morton order", lambda: reference.distances_sorted(sorted_pool))
        exact = clock("BVH 20k pool, Morton order (used)", lambda: distance.distances_sorted(sorted_pool))
        errors["bvh_minus_fcpw_max"] = max(errors["bvh_minus_fcpw_max"], float((exact - fcpw).max()))
        errors["bvh_minus_fcpw_min"] = min(errors["bvh_minus_fcpw_min"], float((exact - fcpw).min()))
        for half, part in (("uniform", pool[:10000]), ("near-surface", pool[10000:])):
            part = part[morton_order(part)]
            clock(f"fcpw 10k {half} half, Morton order", lambda: reference.distances_sorted(part))
            clock(f"BVH 10k {half} half, Morton order", lambda: distance.distances_sorted(part))
        pc = sampler.sample(2048, rng)[0]
        tree = clock("cKDTree build (tuned: 32-point leaves)", lambda: point_tree(pc))
        d_ck, _ = clock("cKDTree 20k pool, Morton order", lambda: tree.query(sorted_pool, workers=1))
        kd = clock("pykdtree build", lambda: KDTree(pc, leafsize=16))
        d_pk, _ = clock("pykdtree 20k pool, Morton order", lambda: kd.query(sorted_pool, k=1))
        nearest = clock("point BVH build (bvh.PointTree, used)", lambda: NearestPoint(pc))
        d_pt, _ = clock("point BVH 20k pool, Morton order (used)", lambda: nearest.query(sorted_pool))
        errors["point_tree_vs_pykdtree_max_abs"] = max(
            errors["point_tree_vs_pykdtree_max_abs"], float(np.abs(d_pt - d_pk).max())
        )
        errors["point_tree_vs_ckdtree_max_abs"] = max(
            errors["point_tree_vs_ckdtree_max_abs"], float(np.abs(d_pt - d_ck).max())
        )
        mesh = trimesh.Trimesh(vertices, faces, process=False)
        few = sorted_pool[::40]  # 500 queries: trimesh is far too slow for 20k
        _, d_tm, _ = clock("trimesh closest_point, 500 queries", lambda: trimesh.proximity.closest_point(mesh, few))
        errors["trimesh_vs_bvh_max_abs"] = max(
            errors["trimesh_vs_bvh_max_abs"], float(np.abs(d_tm - exact[::40]).max())
        )
        origins, dirs = camera_rays(20, 400, 2.2, rng)
        embree = clock("Embree scene build (embreex)", lambda: EmbreeRayCaster(vertices, faces, sampler.face_normals))
        hit, t, _ = clock("Embree 8000 rays", lambda: embree.cast(origins, dirs))
        fcpw_caster = MeshRayCaster(vertices, faces, sampler.face_normals, bvh=reference)
        hit_f, _, _ = clock("fcpw 8000 rays on its BVH, incl. extraction", lambda: fcpw_caster.cast(origins, dirs))
        caster = MeshRayCaster(vertices, faces, sampler.face_normals, bvh=distance)
        hit_b, t_b, _ = clock("BVH 8000 rays on the pool's BVH (used)", lambda: caster.cast(origins, dirs))
        errors["embree_vs_bvh_hit_disagree"] += int((hit_b != hit).sum())
        errors["fcpw_vs_bvh_hit_disagree"] += int((hit_b != hit_f).sum())
        both = (hit_b > 0) & (hit > 0)
        if both.any():
            errors["embree_vs_bvh_t_max_abs"] = max(
                errors["embree_vs_bvh_t_max_abs"], float(np.abs(t_b[both] - t[both]).max())
            )
        occ = dilate(voxelize(sampler.sample(2048, rng)[0], 64), 1)
        want = clock("64^3 EDT, scipy distance_transform_edt", lambda: ndimage.distance_transform_edt(~occ, 2 / 64))
        got = clock(
            "64^3 EDT, edt package",
            lambda: (
                np.sqrt(edt.edtsq((~occ).view(np.uint8), black_border=False, parallel=1), dtype=np.float64) * (2 / 64)
            ),
        )
        errors["edt_pkg_vs_scipy_max_abs"] = max(errors["edt_pkg_vs_scipy_max_abs"], float(np.abs(got - want).max()))
        got = clock("64^3 EDT, grids.squared_edt (used)", lambda: np.sqrt(grids.squared_edt(occ)) * (2 / 64))
        errors["squared_edt_vs_scipy_max_abs"] = max(
            errors["squared_edt_vs_scipy_max_abs"], float(np.abs(got - want).max())
        )
        full = clock("grid 64^3 exact", lambda: grids.exact_grid(distance, 64))
        band, _ = clock("grid 64^3 narrowband", lambda: grids.narrowband_grid(distance, 64, 3))
        clock("grid 64^3 edt (2048-point sample)", lambda: grids.edt_grid(sampler.sample(2048, rng)[0], 64, 1))
        outside = full > 3 * (2 / 64)
        diff = np.abs(band - full)[outside]
        errors["narrowband_max_abs_outside_band"] = max(errors["narrowband_max_abs_outside_band"], float(diff.max()))
        errors["narrowband_mean_abs_outside_band"].append(float(diff.mean()))
        cache_rows.append(cache_mesh(*store.mesh(row), store.shape_ids[row], 0, CacheProfile.from_config(CACHE)))
    errors["narrowband_mean_abs_outside_band"] = float(np.mean(errors["narrowband_mean_abs_outside_band"]))
    errors["narrowband_documented_bound"] = grids.narrowband_bound(64)

    shard_write = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, codec in (
            ("lzf on every array", "lzf"),
            ("lzf where it shrinks (used)", array_codecs("lzf")),
            ("none", "none"),
        ):
            path = Path(tmp) / "s.h5"
            start = time.process_time()
            with ShardWriter(
                path, dataset="b", shard=0, n_shards=1, kind="mesh", profile=profile_of(CACHE), compression=codec
            ) as writer:
                n = 0
                for _ in range(4):  # 4 x the subset: enough rows to time
                    for arrays in cache_rows:
                        writer.append(f"b/{n}", arrays)
                        n += 1
            with h5py.File(path, "r") as h5:
                stored = sum(h5[k].id.get_storage_size() for k in cache_rows[0])
            shard_write[name] = {
                "ms_per_shape": 1000 * (time.process_time() - start) / n,
                "mb_per_shape": stored / n / 1e6,
            }
    timings = {k: 1000 * float(np.mean(v)) for k, v in acc.items()}
    return {"shapes": len(rows), "ms_mean": timings, "accuracy": errors, "shard_write": shard_write}


def load_cache_package(ref: str, dest: Path):
    """``pipeline3d.data.cache`` as of git ``ref``, imported as ``pipeline3d.data.cache_ab`` (its relative imports
    resolve to the working tree's other modules, so only the cache package differs)."""
    import importlib.util
    import subprocess

    import pipeline3d.data

    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", ref, "src/pipeline3d/data/cache"], check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    folder = dest / "src" / "pipeline3d" / "data" / "cache"
    spec = importlib.util.spec_from_file_location(
        "pipeline3d.data.cache_ab", folder / "__init__.py", submodule_search_locations=[str(folder)]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    pipeline3d.data.cache_ab = module
    return importlib.import_module("pipeline3d.data.cache_ab.build")


def ab(ref: str, items: Path, mode: str) -> dict:
    """Interleaved A/B of ``cache_mesh`` (compute only, no load/write): git ``ref``'s cache package against the
    working tree's, alternating which runs first shape by shape, in one process pinned to one CPU, so background
    load hits both alike. Reports CPU ms per shape and per stage, the per-shape time ratio, and the largest
    difference of every array between the two versions."""
    os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    import numpy as np

    from pipeline3d.data.cache import build as new
    from pipeline3d.data.cache.normalize import normalize_mesh  # noqa: F401  (imported before the old copy)
    from pipeline3d.io.itemstore import ItemStore

    store = ItemStore(items)
    cache = {**CACHE, "grid_mode": mode}
    with tempfile.TemporaryDirectory() as tmp:
        versions = {"before": load_cache_package(ref, Path(tmp)), "after": new}
        for build in versions.values():  # compiled kernels load (or compile) on first use
            build.cache_mesh(*store.mesh(0), "warm-up", 0, build.CacheProfile.from_config(cache))
        cpu = {k: [] for k in versions}
        stages: dict[str, dict[str, list[float]]] = {k: {} for k in versions}
        max_diff: dict[str, float] = {}
        for row in range(len(store)):
            vertices, faces = store.mesh(row)
            out = {}
            for name in ("before", "after") if row % 2 == 0 else ("after", "before"):
                build = versions[name]
                timer = build.StageTimer()
                start = time.process_time()
                out[name] = build.cache_mesh(
                    vertices, faces, store.shape_ids[row], 0, build.CacheProfile.from_config(cache), timer
                )
                cpu[name].append(time.process_time() - start)
                for stage, seconds in timer.seconds.items():
                    stages[name].setdefault(stage, []).append(seconds)
            for key, before in out["before"].items():
                diff = np.abs(before.astype(np.float64) - out["after"][key].astype(np.float64))
                max_diff[key] = max(max_diff.get(key, 0.0), float(diff.max()) if diff.size else 0.0)
    ratio = np.array(cpu["after"]) / np.array(cpu["before"])
    return {
        "ref": ref,
        "mode": mode,
        "shapes": len(cpu["after"]),
        "loadavg_end": os.getloadavg(),
        "cpu_ms_per_shape": {k: 1000 * float(np.mean(v)) for k, v in cpu.items()},
        "stage_wall_ms_per_shape": {k: {s: 1000 * float(np.mean(x)) for s, x in v.items()} for k, v in stages.items()},
        "ratio_after_before": {
            "mean_of_shapes": float(ratio.mean()),
            "median": float(np.median(ratio)),
            "of_means": float(np.mean(cpu["after"]) / np.mean(cpu["before"])),
        },
        "max_abs_diff": max_diff,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--modes", nargs="+", default=["edt", "narrowband", "exact"])
    ap.add_argument("--limit", type=int, default=None, help="only the first N meshes")
    ap.add_argument("--data", type=Path, default=DATA, help="mesh folder (default: shared/data/shrec07_watertight)")
    ap.add_argument(
        "--anchor",
        action="store_true",
        help="use the 30 pybullet_data meshes of cache-performance.md; --data = a pybullet_data folder",
    )
    ap.add_argument(
        "--compression",
        nargs="*",
        default=["gzip", "lzf", "none"],
        help="edt runs with each (1 worker); give none to skip",
    )
    ap.add_argument("--engines", action="store_true", help="also run the engine comparisons")
    ap.add_argument("--engine-shapes", type=int, default=12)
    ap.add_argument(
        "--ab",
        metavar="GIT_REF",
        default=None,
        help="interleaved A/B of cache_mesh: GIT_REF's cache package against the working tree's, per mode",
    )
    ap.add_argument("--no-workers", action="store_true", help="skip the end-to-end worker runs (only --engines / --ab)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "bench_cache.json"))
    args = ap.parse_args(argv)
    if args.no_workers:
        args.compression = []

    from pipeline3d.data.cache.threads import thread_env

    os.environ.update(thread_env(1))  # inherited by the spawned workers
    result = {
        "machine": machine(),
        "profile": CACHE,
        "modes": [],
        "compression": [],
        "meshes": "cache-performance.md anchor set (pybullet_data)" if args.anchor else str(args.data),
    }
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        manifest, items, n = build_inputs(workdir, args.limit, args.data, args.anchor)
        print(f"{n} meshes -> item store; machine: {result['machine']}", flush=True)
        for mode in [] if args.no_workers else args.modes:
            cache = {**CACHE, "grid_mode": mode}
            one = run_workers(1, cache, manifest, items, workdir)
            two = run_workers(2, cache, manifest, items, workdir)
            result["modes"].append(summarise(mode, one, two))
            print(f"{mode}: {result['modes'][-1]['s_per_shape_1w']:.3f} s/shape", flush=True)
        for comp in args.compression:
            w = run_workers(1, {**CACHE, "compression": comp}, manifest, items, workdir)[0]
            result["compression"].append(
                {
                    "compression": comp,
                    "write_ms_per_shape": 1000 * w["seconds"]["write"] / w["n"],
                    "mb_per_shape": w["bytes"] / w["n"] / 1e6,
                    "read_ms_per_shape": read_ms_per_shape(Path(w["path"])),
                    "s_per_shape": w["wall"] / w["n"],
                }
            )
        if args.engines:
            result["engines"] = engines(manifest, items, args.engine_shapes)
        if args.ab:
            result["ab"] = [ab(args.ab, items, mode) for mode in args.modes]
    result["machine"]["loadavg_end"] = os.getloadavg()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print()
    if result["modes"]:
        print(table(result["modes"]))
        print()
    for c in result["compression"]:
        print(
            f"compression {c['compression']}: write {c['write_ms_per_shape']:.1f} ms/shape, "
            f"read {c['read_ms_per_shape']:.2f} ms/shape, {c['mb_per_shape']:.2f} MB/shape, "
            f"total {c['s_per_shape']:.3f} s/shape"
        )
    if "engines" in result:
        print()
        for k, v in result["engines"]["ms_mean"].items():
            print(f"| {k} | {v:.1f} ms |")
        for k, v in result["engines"]["shard_write"].items():
            print(f"| shard write, {k} | {v['ms_per_shape']:.1f} ms | {v['mb_per_shape']:.2f} MB/shape |")
        print(json.dumps(result["engines"]["accuracy"], indent=2))
    for r in result.get("ab", []):
        print(
            f"\nA/B {r['ref']} -> working tree, {r['mode']}, {r['shapes']} shapes (CPU ms/shape, compute only): "
            f"{r['cpu_ms_per_shape']['before']:.1f} -> {r['cpu_ms_per_shape']['after']:.1f}, ratio "
            f"{r['ratio_after_before']['of_means']:.3f} (median per shape {r['ratio_after_before']['median']:.3f})"
        )
        print(
            "  stages (wall ms): "
            + "; ".join(
                f"{s} {r['stage_wall_ms_per_shape']['before'][s]:.1f} -> {v:.1f}"
                for s, v in r["stage_wall_ms_per_shape"]["after"].items()
            )
        )
        print("  arrays that differ (max abs): " + json.dumps({k: v for k, v in r["max_abs_diff"].items() if v}))
    print(f"\nJSON: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
