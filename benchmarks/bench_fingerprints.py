"""Fingerprint and split throughput at ShapeNet scale (synthetic inputs with the default cache profile).

- hashing: seconds per shape for the view phashes (6 of 20 views x 400 rays) and the geometry signatures
  (64^3 UDF -> 16^3 soft occupancy -> 48 symmetry variants), on random-but-plausible arrays;
- search: the exact blocked near-duplicate search over N items (6 view words + geometry), with planted
  near-copies so union-find and the rotation verification have work; wall time and peak allocation;
- splits: every split family for N items with near-duplicate pairs.

    .venv/bin/python benchmarks/bench_fingerprints.py [--n 50000] [--out benchmarks/results/bench_fingerprints.json]
"""

from __future__ import annotations

import argparse
import json
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline3d.data.fingerprints import geometry_hashes, pack_codes, soft_occupancy, symmetry_inverses, view_hash_bits
from pipeline3d.data.near_duplicates import DuplicateRule, GeometryCodes, find_near_duplicates
from pipeline3d.data.splits import build_splits

SPLITS = {
    "train": 0.8,
    "val": 0.1,
    "kfold": 5,
    "unpaired": {"train_mesh": 0.34, "train_pc": 0.33, "train_udf": 0.33},
    "fewshot_k": [1, 5, 10, 20],
    "fewshot_seeds": [0, 1, 2],
    "query_gallery_splits": 10,
    "query_per_class": 1,
}


def bench_hashing(n: int = 200) -> dict:
    rng = np.random.default_rng(0)
    t = rng.uniform(1.4, 3.0, (n, 20 * 400)).astype(np.float32)
    hit = (rng.random((n, 20 * 400)) < 0.3).astype(np.uint8)
    c = (np.arange(64) + 0.5) / 32 - 1
    r = np.sqrt(c[:, None, None] ** 2 + c[None, :, None] ** 2 + c[None, None, :] ** 2)
    udfs = [np.abs(r - rng.uniform(0.3, 0.9)).astype(np.float16) for _ in range(n)]
    start = time.perf_counter()
    for i in range(n):
        view_hash_bits(t[i], hit[i], views=6, rays_per_view=400, camera_radius=2.2, hash_size=8)
    views = (time.perf_counter() - start) / n
    start = time.perf_counter()
    fields = np.stack([soft_occupancy(u) for u in udfs])
    field = (time.perf_counter() - start) / n
    start = time.perf_counter()
    geometry_hashes(fields)
    geometry = (time.perf_counter() - start) / n
    return {
        "views_s": views,
        "soft_occupancy_s": field,
        "geometry_hashes_s": geometry,
        "total_s_per_shape": views + field + geometry,
    }


def bench_search(n: int) -> dict:
    rng = np.random.default_rng(1)
    words = lambda *shape: rng.integers(0, 2**63, shape, dtype=np.int64).view(np.uint64)  # noqa: E731
    view, variants, sym = words(n, 6), words(n, 48, 4), words(n, 4)
    copies = rng.choice(np.arange(1, n), n // 20, replace=False)  # 5% of the items are noisy copies of another

    def noise(*shape):  # sparse bit flips (about 2% of the bits)
        return pack_codes(rng.random((int(np.prod(shape[:-1])), shape[-1] * 64)) < 0.02).reshape(shape)

    view[copies] = view[copies - 1] ^ noise(len(copies), 6)
    variants[copies] = variants[copies - 1] ^ noise(len(copies), 48, 4)
    sym[copies] = sym[copies - 1] ^ noise(len(copies), 4)
    geo = GeometryCodes(np.ascontiguousarray(variants[:, 0]), sym, variants, symmetry_inverses())
    tracemalloc.start()
    start = time.perf_counter()
    res = find_near_duplicates(view, DuplicateRule(views=6, threshold=6, geometry_threshold=12), geo)
    seconds = time.perf_counter() - start
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return {"n": n, "seconds": seconds, "pairs": res.n_pairs, "search_peak_alloc_mb": peak / 2**20}


def bench_splits(n: int) -> dict:
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 55, n)
    ids = [f"ds/c{label:02d}/m{i:06d}" for i, label in enumerate(labels)]
    group = list(ids)
    for i in range(0, n - 1, 20):
        group[i + 1] = group[i]
    items = (
        pd.DataFrame(
            {
                "shape_id": ids,
                "label": labels,
                "label_name": [f"c{x}" for x in labels],
                "source_split": "",
                "group": group,
            }
        )
        .sort_values("shape_id")
        .reset_index(drop=True)
    )
    start = time.perf_counter()
    build_splits(items, {"seed": 0, "dataset": "ds", "source": {"kind": "mesh"}, "splits": SPLITS})
    return {"n": n, "seconds": time.perf_counter() - start}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--n", type=int, default=50000)
    p.add_argument("--out", default="benchmarks/results/bench_fingerprints.json")
    args = p.parse_args()
    result = {"hashing": bench_hashing(), "search": bench_search(args.n), "splits": bench_splits(args.n)}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
