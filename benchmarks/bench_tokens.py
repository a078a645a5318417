"""Cache -> token batch throughput on real meshes, per core: our shards against the reference's storage.

Input: the SHREC'07 watertight meshes (``<repo>/../shared/data/shrec07_watertight``), cached with the real shard
job (``pipeline3d.jobs.build_cache_shard.build_shard``, the default cache profile: 2048 surface points, a 20k query
pool, 20 x 400 rays, 64^3 grids, gzip where it shrinks) into one shard. The same rows are also written in the
reference's storage: one ``np.savez_compressed`` npz per shape with its 18 keys (section 1.1 of the reference study).

Per backend, the same shuffled list of samples goes through the same tokenizer (256 points + 256 rays, Q/A tokens)
and ``collate`` into batches of 32, in one process pinned to one CPU with BLAS/OpenMP/torch at one thread:

* ``ours_cold``: ``ShapeTokenDataset`` with its per-shape cache off: every sample reads its backend's arrays from
  the shard (h5py row reads; the file is in the OS page cache, as the npz files are);
* ``ours_warm``: the default per-process cache of the per-shape arrays, measured after one pass over the shapes
  (what every epoch after the first costs when a worker's shapes fit in ``cache_mb``);
* ``reference``: per sample, ``np.load`` the shape's npz and decompress every key (as the reference's loader does),
  then build the same pools (``Backend.pools_from``) and tokens;
* ``reference_lazy``: the reference's storage read as well as it can be (only the keys the backend needs).

The shard is built with ``voxel_pool_dist`` on, so the voxel backend reads its stored distances; the reference's
storage has no such array, so on that side they are computed by our code (lazily, at the sampled points only, with
the same bits) and the pc rays are the stored ones. The reference's own voxel backend also re-ran a per-ray Python
walk on every load; the cache time the stored array costs is measured here too (``cache_stage_ms``).
Reported: samples/s per core (wall and CPU time), ms per sample, and the ratios to ``reference``.

    .venv/bin/python benchmarks/bench_tokens.py [--limit N] [--samples N] [--backends mesh ...]
                                                 [--out benchmarks/results/tokens.json]
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_cache import CACHE, DATA, build_inputs, machine  # noqa: E402  (shared SHREC input + machine record)

ROOT = Path(__file__).resolve().parents[1]
CACHE_PROFILE = {**CACHE, "voxel_pool_dist": True}
BACKENDS = ("mesh", "pointcloud", "pointcloud_noray", "udfgrid", "voxel")
TOKENS = {"n_point": 256, "n_ray": 256, "qa_tokens": True, "add_eos": True, "drop_ray_prob": 0.0, "eval_seed": 0}
BATCH = 32
TARGET_RATIO = 10.0

# reference npz key -> our cache array (18 keys; df_grid / df_dilate are (1,) int32 parameters)
REFERENCE_KEYS = {
    "pc_xyz": "pc_xyz",
    "pc_n": "pc_normal",
    "pt_xyz_pool": "pool_xyz",
    "pt_dist_pool": "pool_dist_mesh",
    "pt_dist_pc_pool": "pool_dist_pc",
    "pt_dist_udf_pool": "pool_dist_grid",
    "udf_grid": "udf_grid",
    "occ_grid": "occ_grid",
    "ray_o_pool": "ray_origin",
    "ray_d_pool": "ray_dir",
    "ray_hit_pool": "ray_hit_mesh",
    "ray_t_pool": "ray_t_mesh",
    "ray_n_pool": "ray_normal_mesh",
    "ray_hit_pc_pool": "ray_hit_pc",
    "ray_t_pc_pool": "ray_t_pc",
    "ray_n_pc_pool": "ray_normal_pc",
}
OURS_TO_REFERENCE = {ours: ref for ref, ours in REFERENCE_KEYS.items()}


def build_cache(workdir: Path, limit: int | None) -> tuple[Path, list[str], dict[str, float]]:
    from pipeline3d.io.shards import ShardReader
    from pipeline3d.jobs.build_cache_shard import build_shard

    manifest, items, n = build_inputs(workdir, limit, DATA)
    shard = workdir / "shard-0000.h5"
    start = time.perf_counter()
    n_ok, failures, seconds = build_shard(
        {"seed": 0, "dataset": "bench", "cache": CACHE_PROFILE}, 0, manifest, items, shard, logging.getLogger("bench")
    )
    print(f"cached {n_ok} of {n} shapes in {time.perf_counter() - start:.1f} s ({len(failures)} failed)", flush=True)
    with ShardReader(shard, "all") as reader:
        ids = list(reader.shape_ids)
    return shard, ids, {stage: 1000 * s / max(n_ok, 1) for stage, s in seconds.items()}


def rewrite_with_codec(shard: Path, codec: str, out: Path) -> Path:
    """The same rows in a shard written with another ``cache.compression`` (for an interleaved codec A/B)."""
    from pipeline3d.io.shards import ShardReader, ShardWriter, array_codecs

    with ShardReader(shard, "all") as reader:
        attrs = reader.attrs
        with ShardWriter(
            out,
            dataset=str(attrs["dataset"]),
            shard=0,
            n_shards=1,
            kind=str(attrs["kind"]),
            profile=reader.profile,
            compression=array_codecs(codec),
        ) as writer:
            for row, sid in enumerate(reader.shape_ids):
                writer.append(sid, reader.read(row))
    return out


def rewrite_without_checksums(shard: Path, out: Path) -> Path:
    """The same file as shards were written before integrity checks: same chunks and filters, no Fletcher-32, the
    default (v1) metadata format, no ids / attribute digests. The read-cost baseline of the checksums."""
    import h5py

    with h5py.File(shard, "r") as src, h5py.File(out, "w") as dst:
        for name, ds in src.items():
            if ds.chunks is None:
                dst.create_dataset(name, data=ds[()], dtype=ds.dtype)
            else:
                new = dst.create_dataset(
                    name,
                    shape=ds.shape,
                    maxshape=ds.maxshape,
                    dtype=ds.dtype,
                    chunks=ds.chunks,
                    compression=ds.compression,
                    compression_opts=ds.compression_opts,
                )
                for sel in ds.iter_chunks():
                    new[sel] = ds[sel]
        dst.attrs.update({k: v for k, v in src.attrs.items() if k not in ("ids_sha256", "attrs_sha256")})
    return out


def write_reference_npz(shard: Path, out_dir: Path) -> list[Path]:
    """One compressed npz per shape with the reference's 18 keys and dtypes (hit flags float32)."""
    import numpy as np

    from pipeline3d.io.shards import ShardReader

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    with ShardReader(shard, "all") as reader:
        profile = reader.profile
        for row, sid in enumerate(reader.shape_ids):
            arrays = reader.read(row)
            npz = {ref: arrays[ours] for ref, ours in REFERENCE_KEYS.items()}
            for key in ("ray_hit_pool", "ray_hit_pc_pool"):
                npz[key] = npz[key].astype(np.float32)
            npz["df_grid"] = np.array([profile["df_grid"]], dtype=np.int32)
            npz["df_dilate"] = np.array([profile["df_dilate"]], dtype=np.int32)
            assert len(npz) == 18
            path = out_dir / f"{row:05d}.npz"
            np.savez_compressed(path, **npz)
            paths.append(path)
    return paths


class ReferenceStorage:
    """Samples of the reference's storage through the same backend computation and tokenizer."""

    def __init__(self, paths, ids, backend_name: str, profile: dict, lazy: bool):
        from pipeline3d.tokens import get_backend
        from pipeline3d.tokens.layout import TokenConfig

        self.paths, self.ids, self.profile, self.lazy = paths, ids, profile, lazy
        self.backend = get_backend(backend_name)
        self.cfg = TokenConfig.of(TOKENS)
        self.needed = [OURS_TO_REFERENCE[k] for k in self.backend.keys()]

    def item(self, index: int, epoch: int) -> dict:
        import numpy as np

        from pipeline3d.rng import rng_for
        from pipeline3d.tokens.tokenizer import tokenize

        with np.load(self.paths[index]) as npz:
            keys = self.needed if self.lazy else npz.files
            raw = {key: npz[key] for key in keys}  # each access decompresses that member
        arrays = {REFERENCE_KEYS[k]: v for k, v in raw.items() if k in REFERENCE_KEYS}
        pools = self.backend.pools_from(arrays, self.profile)
        rng = rng_for(0, "tokens", f"{self.ids[index]}|e{epoch}|d0")
        feat, type_id, pos = tokenize(pools, self.cfg, rng, train=True)
        return {
            "feat": feat,
            "type_id": type_id,
            "pos": pos,
            "shape_index": np.int64(index),
            "label": np.int64(-1),
            "draw": np.int64(0),
        }


def run(source, order, epoch: int) -> dict:
    """Tokenise ``order`` (shape indices) in batches of BATCH; wall and CPU seconds."""
    from pipeline3d.tokens import collate

    wall, cpu = time.perf_counter(), time.process_time()
    tokens = 0
    for start in range(0, len(order), BATCH):
        batch = collate([source.item(int(i), epoch) for i in order[start : start + BATCH]])
        tokens += int(batch["valid"].sum())
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    n = len(order)
    return {
        "samples": n,
        "wall_s": wall,
        "cpu_s": cpu,
        "samples_per_s": n / wall,
        "samples_per_cpu_s": n / cpu,
        "ms_per_sample": 1000 * wall / n,
        "tokens": tokens,
    }


def median_run(runs: list[dict]) -> dict:
    """The run with the median throughput, plus the rates of every repeat."""
    ranked = sorted(runs, key=lambda r: r["samples_per_s"])
    return {
        **ranked[len(ranked) // 2],
        "repeats_samples_per_s": [r["samples_per_s"] for r in runs],
        "repeats_samples_per_cpu_s": [r["samples_per_cpu_s"] for r in runs],
    }


def bench_backend(
    name: str,
    shard: Path,
    ids: list[str],
    npz_paths: list[Path],
    profile: dict,
    n_samples: int,
    repeats: int,
    codec_shards: dict[str, Path],
) -> dict:
    from pipeline3d.rng import rng_for
    from pipeline3d.tokens import CacheEntry, ShapeTokenDataset

    order = rng_for(0, "bench_tokens", name).integers(0, len(ids), size=n_samples)
    n_ref = max(BATCH, n_samples // 4)  # the reference is slow: a quarter of the samples gives a stable rate
    entries = [CacheEntry(sid, str(shard), row) for row, sid in enumerate(ids)]
    cold = ShapeTokenDataset(entries, name, TOKENS, seed=0, mode="train", cache_mb=0)
    run(cold, order[:BATCH], 0)  # open the shard, first-touch costs
    warm = ShapeTokenDataset(entries, name, TOKENS, seed=0, mode="train", cache_mb=4096)
    run(warm, list(range(len(ids))), 0)  # one pass fills the per-shape cache
    sources = {
        "ours_cold": (cold, order),
        "ours_warm": (warm, order),
        "reference": (ReferenceStorage(npz_paths, ids, name, profile, lazy=False), order[:n_ref]),
        "reference_lazy": (ReferenceStorage(npz_paths, ids, name, profile, lazy=True), order[:n_ref]),
    }
    for codec, path in codec_shards.items():  # the same rows, another codec: cold reads only
        other = ShapeTokenDataset(
            [CacheEntry(sid, str(path), row) for row, sid in enumerate(ids)],
            name,
            TOKENS,
            seed=0,
            mode="train",
            cache_mb=0,
        )
        run(other, order[:BATCH], 0)
        sources[f"ours_cold_{codec}"] = (other, order)
    runs: dict[str, list[dict]] = {variant: [] for variant in sources}
    for _ in range(repeats):  # interleaved, so a load change on a shared machine hits every variant alike
        for variant, (source, samples) in sources.items():
            runs[variant].append(run(source, samples, 1))
    out = {variant: median_run(r) for variant, r in runs.items()}
    ref = out["reference"]
    for variant in [v for v in out if v != "reference"]:
        out[variant]["ratio_to_reference"] = out[variant]["samples_per_s"] / ref["samples_per_s"]
        out[variant]["cpu_ratio_to_reference"] = out[variant]["samples_per_cpu_s"] / ref["samples_per_cpu_s"]
    return out


def table(results: dict) -> str:
    head = (
        "| backend | ours cold samples/s | ours warm samples/s | reference samples/s | reference (needed keys) "
        "samples/s | cold / reference | warm / reference |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for name, r in results.items():
        lines.append(
            f"| {name} | {r['ours_cold']['samples_per_s']:.0f} | {r['ours_warm']['samples_per_s']:.0f} | "
            f"{r['reference']['samples_per_s']:.0f} | {r['reference_lazy']['samples_per_s']:.0f} | "
            f"{r['ours_cold']['ratio_to_reference']:.1f}x (CPU "
            f"{r['ours_cold']['cpu_ratio_to_reference']:.1f}x) | "
            f"{r['ours_warm']['ratio_to_reference']:.1f}x |"
        )
    codecs = sorted({v[len("ours_cold_") :] for r in results.values() for v in r if v.startswith("ours_cold_")})
    if codecs:  # same rows, other shard codecs, read cold in the same interleaved run
        head = "| backend | cold, shard codec as configured | " + " | ".join(f"cold, {c}" for c in codecs) + " |"
        lines += ["", head, "|" + "---|" * (2 + len(codecs))]
        for name, r in results.items():
            cold = r["ours_cold"]["samples_per_s"]
            lines.append(
                f"| {name} | {cold:.0f}/s | "
                + " | ".join(
                    f"{r[f'ours_cold_{c}']['samples_per_s']:.0f}/s (x{r[f'ours_cold_{c}']['samples_per_s'] / cold:.2f})"
                    for c in codecs
                )
                + " |"
            )
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--limit", type=int, default=None, help="first N meshes (default: all)")
    p.add_argument("--samples", type=int, default=2048, help="samples per backend for our storage")
    p.add_argument("--repeats", type=int, default=3, help="interleaved repeats per variant (median reported)")
    p.add_argument("--backends", nargs="+", default=list(BACKENDS), choices=BACKENDS)
    p.add_argument(
        "--compare-codecs",
        nargs="*",
        default=["lzf", "none"],
        help="also read the same rows from shards written with these cache.compression codecs (cold)",
    )
    p.add_argument(
        "--no-unchecked",
        dest="unchecked",
        action="store_false",
        help="skip the baseline without checksums (read as 'ours_cold_unchecked', the same rows)",
    )
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "tokens.json")
    args = p.parse_args()

    from pipeline3d.data.cache.threads import thread_env

    os.environ.update(thread_env(1))  # before numpy / torch load
    cpu = sorted(os.sched_getaffinity(0))[0]
    os.sched_setaffinity(0, {cpu})
    import torch

    torch.set_num_threads(1)
    from pipeline3d.io.atomic import write_json
    from pipeline3d.io.shards import ShardReader

    result = {
        "machine": machine(),
        "pinned_cpu": cpu,
        "tokens": TOKENS,
        "batch": BATCH,
        "cache_profile": CACHE_PROFILE,
        "target_ratio": TARGET_RATIO,
        "samples": args.samples,
        "repeats": args.repeats,
        "backends": {},
    }
    with tempfile.TemporaryDirectory(prefix="bench_tokens_") as tmp:
        workdir = Path(tmp)
        shard, ids, result["cache_stage_ms"] = build_cache(workdir, args.limit)
        npz_paths = write_reference_npz(shard, workdir / "npz")
        codec_shards = {
            codec: rewrite_with_codec(shard, codec, workdir / f"shard-{codec}.h5") for codec in args.compare_codecs
        }
        if args.unchecked:  # the configured codec without the integrity checks: what verification costs on reads
            codec_shards["unchecked"] = rewrite_without_checksums(shard, workdir / "shard-unchecked.h5")
        result["bytes_per_shape_codec"] = {
            codec: path.stat().st_size / len(ids) for codec, path in codec_shards.items()
        }
        npz_bytes = sum(p.stat().st_size for p in npz_paths)
        result["shapes"] = len(ids)
        result["bytes_per_shape"] = {"shard": shard.stat().st_size / len(ids), "reference_npz": npz_bytes / len(ids)}
        with ShardReader(shard, "all") as reader:
            profile = reader.profile
        print(
            f"{len(ids)} shapes; shard {result['bytes_per_shape']['shard'] / 1e6:.2f} MB/shape, npz "
            f"{result['bytes_per_shape']['reference_npz'] / 1e6:.2f} MB/shape; machine {result['machine']}",
            flush=True,
        )
        for name in args.backends:
            result["backends"][name] = bench_backend(
                name, shard, ids, npz_paths, profile, args.samples, args.repeats, codec_shards
            )
            r = result["backends"][name]
            print(
                f"{name}: ours cold {r['ours_cold']['samples_per_s']:.0f}/s, "
                f"warm {r['ours_warm']['samples_per_s']:.0f}/s, reference {r['reference']['samples_per_s']:.0f}/s "
                f"(needed keys only {r['reference_lazy']['samples_per_s']:.0f}/s): "
                f"cold {r['ours_cold']['ratio_to_reference']:.1f}x; cold with "
                + ", ".join(f"{c}: {r[f'ours_cold_{c}']['samples_per_s']:.0f}/s" for c in codec_shards),
                flush=True,
            )
    result["machine"]["loadavg_end"] = os.getloadavg()
    # per backend: is the cold (nothing cached in memory) path >= TARGET_RATIO x the reference's storage?
    result["target_met_cold"] = {
        name: r["ours_cold"]["ratio_to_reference"] >= TARGET_RATIO for name, r in result["backends"].items()
    }
    result["table"] = table(result["backends"])
    write_json(args.out, result)
    print(result["table"])
    print(f"-> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
