"""Exact kNN for the difficulty bands: our blocked kNN against scikit-learn's BallTree (and brute force).

Input: N random embeddings (default 50k x 768, float32, seeded through ``rng_for``), cosine similarity, k
neighbours, self excluded. BallTree has no cosine metric, so it gets the L2-normalised vectors in float64 (euclidean
distance on unit vectors ranks exactly like cosine similarity); it queries k + 1 and drops the item itself.

At this size a BallTree query visits nearly the whole tree (768 dimensions defeat its bounds), and querying all 50k
rows would take most of an hour. So the tree is built once on all N rows and queried with a seeded subset of rows
(default 500); its full-run time is *extrapolated* as build + N x (measured time per query), and reported as such.
Ours runs on the same subset and on all N rows, measured. Optional: scikit-learn's ``NearestNeighbors(algorithm="brute",
metric="cosine")`` on all rows, measured.

Each method runs in its own child process (same seeded data), so its peak RSS (``ru_maxrss``) is its own; the
figure reported is the peak minus the RSS right after the embeddings were created. Neighbour sets are compared row
by row on the subset (ours vs BallTree) and on all rows (ours vs brute force); a differing row is counted as a tie
when the differing neighbours' scores are equal within 1e-12 in float64.

    .venv/bin/python benchmarks/bench_knn.py [--n 50000] [--dim 768] [--k 50] [--queries 500] [--no-brute]
                                             [--out benchmarks/results/knn.json]

``--engines`` (issue 14): the candidate engines side by side in one process, on the same data: faiss (today's
``pipeline3d.embed.knn``) and the torch engine it replaced (``knn.py`` at TORCH_ENGINE_COMMIT, read with
``git show``), interleaved over ``--repeats``, per case N:identity (``self``, or G classes: row % G). Both must
give bit-identical rows and scores; the median times give the ratio. faiss alone (its own top k + 1, no float64
certification) is timed too, with how many of its neighbour sets equal the exact ones.

    .venv/bin/python benchmarks/bench_knn.py --engines [--cases 20000:self,50000:self,20000:200,20000:50]
                                             [--repeats 5] [--threads 2] [--out benchmarks/results/knn_engines.json]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import resource
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_cache import machine  # noqa: E402
from pipeline3d.io.atomic import write_json  # noqa: E402
from pipeline3d.rng import rng_for  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TARGET_RATIO = 20.0
TIE_TOL = 1e-12
# knn.py before issue 14 (torch float32 candidates): the engine faiss replaced, for --engines
TORCH_ENGINE_COMMIT = "623bc95385aaf4f86d9478471e707905e220a124"


def embeddings(n: int, dim: int, seed: int) -> np.ndarray:
    """Seeded float32 normals, drawn in slices so no float64 copy of the whole matrix exists."""
    x = np.empty((n, dim), dtype=np.float32)
    for lo in range(0, n, 4096):
        rng = rng_for(seed, "bench_knn", f"rows{lo}")
        x[lo : lo + 4096] = rng.standard_normal((min(4096, n - lo), dim), dtype=np.float32)
    return x


def query_subset(n: int, m: int, seed: int) -> np.ndarray:
    return np.sort(rng_for(seed, "bench_knn", "queries").choice(n, size=min(m, n), replace=False)).astype(np.int64)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


# -- children: one method each ------------------------------------------------------------------------------------


def run_child(args: argparse.Namespace) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    from sklearn.neighbors import BallTree, NearestNeighbors

    from pipeline3d.embed.knn import knn

    # imports and data first: the timings and the RSS increase are the method's alone
    x = embeddings(args.n, args.dim, args.seed)
    subset = query_subset(args.n, args.queries, args.seed)
    base = peak_rss_mb()
    out: dict = {"method": args.child, "threads": args.threads, "nice": os.nice(0)}
    start = time.perf_counter()
    cpu0 = time.process_time()
    if args.child in ("ours_all", "ours_subset"):
        res = knn(
            x,
            args.k,
            rows=None if args.child == "ours_all" else subset,
            block_size=args.block_size,
            db_block_size=args.db_block_size,
        )
        rows, scores = res.rows, res.scores
        out["n_rescanned"] = res.n_rescanned
    elif args.child == "balltree_subset":
        unit = x.astype(np.float64)
        unit /= np.linalg.norm(unit, axis=1, keepdims=True)
        tree = BallTree(unit, leaf_size=args.leaf_size)
        out["build_s"] = time.perf_counter() - start
        q0 = time.perf_counter()
        dist, idx = tree.query(unit[subset], k=args.k + 1)
        out["query_s"] = time.perf_counter() - q0
        if not (idx[:, 0] == subset).all():
            raise RuntimeError("BallTree did not return each query as its own nearest item")
        rows, scores = idx[:, 1:], 1.0 - dist[:, 1:] ** 2 / 2.0
    elif args.child == "sklearn_brute_all":
        model = NearestNeighbors(n_neighbors=args.k + 1, algorithm="brute", metric="cosine", n_jobs=args.threads)
        x64 = x.astype(np.float64)  # float64 like BallTree: a float32 reference would blur near-ties
        dist, idx = model.fit(x64).kneighbors(x64)
        # drop the item itself (wherever a float32 tie put it); keep k
        keep = idx != np.arange(args.n)[:, None]
        rows = np.stack([r[m][: args.k] for r, m in zip(idx, keep)])
        scores = np.stack([1.0 - d[m][: args.k] for d, m in zip(dist, keep)])
    else:
        raise ValueError(args.child)
    out["wall_s"] = time.perf_counter() - start
    out["cpu_s"] = time.process_time() - cpu0
    out["peak_rss_mb"] = peak_rss_mb()
    out["rss_increase_mb"] = out["peak_rss_mb"] - base
    np.save(Path(args.workdir) / f"{args.tag}_rows.npy", rows)
    np.save(Path(args.workdir) / f"{args.tag}_scores.npy", scores)
    return out


def spawn(
    args: argparse.Namespace,
    tag: str,
    child: str,
    workdir: Path,
    threads: int,
    block_size: int | None = None,
    db_block_size: int | None = None,
) -> dict:
    block_size = args.block_size if block_size is None else block_size
    db_block_size = args.db_block_size if db_block_size is None else db_block_size
    cmd = [
        sys.executable,
        __file__,
        "--child",
        child,
        "--tag",
        tag,
        "--workdir",
        str(workdir),
        "--n",
        str(args.n),
        "--dim",
        str(args.dim),
        "--k",
        str(args.k),
        "--queries",
        str(args.queries),
        "--seed",
        str(args.seed),
        "--threads",
        str(threads),
        "--block-size",
        str(block_size),
        "--db-block-size",
        str(db_block_size),
        "--leaf-size",
        str(args.leaf_size),
    ]
    logging.info("running %s (%d threads)", tag, threads)
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{tag} failed:\n{done.stderr[-4000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    logging.info("%s: %.1f s wall, peak RSS +%.0f MB", tag, result["wall_s"], result["rss_increase_mb"])
    return result


# -- comparison -----------------------------------------------------------------------------------------------------


def compare(ours_rows, ours_scores, ref_rows, ref_scores) -> dict:
    """Rows whose neighbour sets are equal, differ only inside ties, or really differ."""
    same = ties = 0
    differ = []
    max_score_diff = 0.0
    for i, (a, b) in enumerate(zip(ours_rows, ref_rows)):
        if set(a.tolist()) == set(b.tolist()):
            same += 1
            max_score_diff = max(max_score_diff, float(np.abs(ours_scores[i] - ref_scores[i]).max()))
            continue
        # sets differ: a tie if the boundary scores agree and every differing item sits at the boundary score
        boundary = min(ours_scores[i][-1], ref_scores[i][-1])
        only = [
            s
            for row, sc, other in ((a, ours_scores[i], b), (b, ref_scores[i], a))
            for item, s in zip(row, sc)
            if item not in set(other.tolist())
        ]
        if all(abs(s - boundary) <= TIE_TOL for s in only):
            ties += 1
        else:
            differ.append(i)
    return {
        "rows": len(ours_rows),
        "identical_sets": same,
        "tie_only_differences": ties,
        "real_differences": len(differ),
        "first_differing_rows": differ[:10],
        "max_abs_score_diff_on_identical_rows": max_score_diff,
    }


# -- side by side: the kNN engine of issue 14 (faiss) against the torch engine it replaced -----------------------


def load_torch_engine(workdir: Path, commit: str = TORCH_ENGINE_COMMIT):
    """``pipeline3d.embed.knn`` as of ``commit`` (torch float32 candidates), imported from ``git show``."""
    text = subprocess.run(
        ["git", "-C", str(ROOT), "show", f"{commit}:src/pipeline3d/embed/knn.py"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    path = workdir / "knn_torch_engine.py"
    path.write_text(text)
    spec = importlib.util.spec_from_file_location("pipeline3d.embed._knn_torch_engine", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is created
    spec.loader.exec_module(module)
    return module


def same_sets(a: np.ndarray, b: np.ndarray) -> int:
    """Rows whose neighbour sets are equal."""
    return int((np.sort(a, axis=1) == np.sort(b, axis=1)).all(axis=1).sum())


def faiss_alone(x: np.ndarray, k: int) -> np.ndarray:
    """faiss's own answer (IndexFlatIP on unit float32 rows, k + 1, the item itself dropped): the issue's figure."""
    import faiss

    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    index = faiss.IndexFlatIP(x.shape[1])
    index.add(unit)
    _, idx = index.search(unit, k + 1)
    keep = idx != np.arange(len(x))[:, None]
    keep[keep.all(axis=1), -1] = False  # the item itself was not returned (float32 ties): drop the last
    return idx[keep].reshape(len(x), k)


def engines(args: argparse.Namespace) -> dict:
    """Both engines in this process on the same data, interleaved (torch first on even repeats, faiss first on odd
    ones) so that load on the shared machine hits both alike; faiss alone once per repeat as a reference."""
    import faiss
    import torch

    from pipeline3d.embed import knn as faiss_engine

    torch.set_num_threads(args.threads)
    faiss.omp_set_num_threads(args.threads)  # for faiss_alone; knn() sets it from torch's count itself
    cases = []
    with tempfile.TemporaryDirectory(prefix="bench_knn_") as tmp:
        torch_engine = load_torch_engine(Path(tmp), args.torch_commit)
        warm = embeddings(2000, args.dim, args.seed + 1)
        for module in (torch_engine, faiss_engine):
            module.knn(warm, args.k)
        for case in args.cases.split(","):
            n_text, _, groups = case.partition(":")
            n, identity = int(n_text), None
            if groups and groups != "self":
                identity = np.arange(int(n_text)) % int(groups)
            x = embeddings(n, args.dim, args.seed)
            times: dict[str, list[float]] = {"torch": [], "faiss": [], "faiss_alone": []}
            cpu: dict[str, list[float]] = {name: [] for name in times}
            load: list[float] = []
            results = {}
            for rep in range(args.repeats):
                order = ["torch", "faiss"] if rep % 2 == 0 else ["faiss", "torch"]
                for name in order + (["faiss_alone"] if identity is None else []):
                    load.append(os.getloadavg()[0])
                    start, cpu0 = time.perf_counter(), time.process_time()
                    if name == "faiss_alone":
                        results[name] = faiss_alone(x, args.k)
                    else:
                        module = torch_engine if name == "torch" else faiss_engine
                        results[name] = module.knn(x, args.k, identity=identity)
                    times[name].append(time.perf_counter() - start)
                    cpu[name].append(time.process_time() - cpu0)
                    logging.info(
                        "n=%d identity=%s %s: %.2f s, CPU %.2f s (load %.2f)",
                        n,
                        groups or "self",
                        name,
                        times[name][-1],
                        cpu[name][-1],
                        load[-1],
                    )
            t, f = results["torch"], results["faiss"]
            row = {
                "n": n,
                "dim": args.dim,
                "k": args.k,
                "identity": groups or "self",
                "threads": args.threads,
                "repeats": args.repeats,
                "times_s": {name: v for name, v in times.items() if v},
                "median_s": {name: float(np.median(v)) for name, v in times.items() if v},
                "cpu_s": {name: v for name, v in cpu.items() if v},
                "median_cpu_s": {name: float(np.median(v)) for name, v in cpu.items() if v},
                "ratio_torch_over_faiss_median": float(np.median(times["torch"]) / np.median(times["faiss"])),
                "ratio_torch_over_faiss_cpu_median": float(np.median(cpu["torch"]) / np.median(cpu["faiss"])),
                "bitwise_identical": bool(np.array_equal(t.rows, f.rows) and np.array_equal(t.scores, f.scores)),
                "same_neighbour_sets": same_sets(t.rows, f.rows),
                "rows": n,
                "rescanned": {"torch": t.n_rescanned, "faiss": f.n_rescanned},
                "loadavg_1min_during": [min(load), max(load)],
            }
            if "faiss_alone" in results:
                row["faiss_alone_same_sets_as_exact"] = same_sets(results["faiss_alone"], f.rows)
            logging.info("%s", json.dumps(row))
            cases.append(row)
    return {
        "faiss": faiss.__version__,
        "torch": torch.__version__,
        "torch_engine_commit": args.torch_commit,
        "cases": cases,
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=50000)
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--k", type=int, default=50)
    ap.add_argument("--queries", type=int, default=500, help="BallTree query rows (its full run is extrapolated)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--block-size", type=int, default=1024)
    ap.add_argument("--db-block-size", type=int, default=16384)
    ap.add_argument("--leaf-size", type=int, default=40, help="BallTree leaf size (scikit-learn's default)")
    ap.add_argument("--no-brute", action="store_true", help="skip scikit-learn brute force on all rows")
    ap.add_argument("--no-single-thread", action="store_true", help="skip ours on all rows with one thread")
    ap.add_argument(
        "--engines",
        action="store_true",
        help="only the side-by-side of the faiss and torch candidate engines, in this process",
    )
    ap.add_argument(
        "--cases",
        default="20000:self,50000:self,20000:200,20000:50",
        help="--engines: N:identity, identity 'self' or G (row %% G: G classes)",
    )
    ap.add_argument("--repeats", type=int, default=5, help="--engines: runs of each engine per case")
    ap.add_argument("--torch-commit", default=TORCH_ENGINE_COMMIT, help="--engines: knn.py of the torch engine")
    ap.add_argument("--out", type=Path, help="default benchmarks/results/knn.json (knn_engines.json for --engines)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--workdir", help=argparse.SUPPRESS)
    ap.add_argument("--tag", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(run_child(args)))
        return 0

    logging.basicConfig(level=logging.INFO, format="%(asctime)s | %(message)s")
    results_dir = ROOT / "benchmarks" / "results"
    if args.engines:
        uptime = subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()
        record = {"machine": machine(), "uptime_start": uptime} | engines(args)
        record["uptime_end"] = subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()
        write_json(args.out or results_dir / "knn_engines.json", record)
        logging.info("wrote %s", args.out or results_dir / "knn_engines.json")
        return 0
    record = {
        "machine": machine(),
        "started_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "config": {
            "n": args.n,
            "dim": args.dim,
            "k": args.k,
            "metric": "cosine",
            "balltree_queries": args.queries,
            "seed": args.seed,
            "threads": args.threads,
            "block_size": args.block_size,
            "db_block_size": args.db_block_size,
            "balltree_leaf_size": args.leaf_size,
        },
    }
    with tempfile.TemporaryDirectory(prefix="bench_knn_") as tmp:
        work = Path(tmp)
        runs = {
            "balltree_subset": spawn(args, "balltree_subset", "balltree_subset", work, 1),  # single-threaded
            "ours_subset": spawn(args, "ours_subset", "ours_subset", work, args.threads),
            "ours_all": spawn(args, "ours_all", "ours_all", work, args.threads),
        }
        if not args.no_single_thread and args.threads > 1:
            runs["ours_all_1thread"] = spawn(args, "ours_all_1thread", "ours_all", work, 1)
        # memory follows the tile size: the same search with 8x smaller tiles
        runs["ours_all_small_tiles"] = spawn(
            args,
            "ours_all_small_tiles",
            "ours_all",
            work,
            args.threads,
            block_size=args.block_size // 2,
            db_block_size=args.db_block_size // 4,
        )
        runs["ours_all_small_tiles"]["tile"] = [args.block_size // 2, args.db_block_size // 4]
        if not args.no_brute:
            runs["sklearn_brute_all"] = spawn(args, "sklearn_brute_all", "sklearn_brute_all", work, args.threads)

        def load(name):
            return np.load(work / f"{name}_rows.npy"), np.load(work / f"{name}_scores.npy")

        subset = query_subset(args.n, args.queries, args.seed)
        ours_rows, ours_scores = load("ours_all")
        bt_rows, bt_scores = load("balltree_subset")
        sub_rows, sub_scores = load("ours_subset")
        checks = {
            "ours_subset_vs_ours_all_bitwise": bool(
                np.array_equal(sub_rows, ours_rows[subset]) and np.array_equal(sub_scores, ours_scores[subset])
            ),
            "ours_vs_balltree_on_subset": compare(ours_rows[subset], ours_scores[subset], bt_rows, bt_scores),
        }
        if "ours_all_1thread" in runs:
            one_rows, one_scores = load("ours_all_1thread")
            checks["ours_1thread_vs_2thread_bitwise"] = bool(
                np.array_equal(one_rows, ours_rows) and np.array_equal(one_scores, ours_scores)
            )
        small_rows, small_scores = load("ours_all_small_tiles")
        checks["ours_small_tiles_vs_default_bitwise"] = bool(
            np.array_equal(small_rows, ours_rows) and np.array_equal(small_scores, ours_scores)
        )
        if "sklearn_brute_all" in runs:
            checks["ours_vs_sklearn_brute_all"] = compare(ours_rows, ours_scores, *load("sklearn_brute_all"))

    bt = runs["balltree_subset"]
    per_query = bt["query_s"] / len(subset)
    bt_full = bt["build_s"] + per_query * args.n
    ours_all = runs["ours_all"]["wall_s"]
    speed = {
        "balltree_build_s": bt["build_s"],
        "balltree_s_per_query": per_query,
        "balltree_all_rows_s_EXTRAPOLATED": bt_full,
        "ours_all_rows_s": ours_all,
        "ratio_all_rows_balltree_extrapolated_over_ours": bt_full / ours_all,
        "ratio_subset_balltree_query_only_over_ours": bt["query_s"] / runs["ours_subset"]["wall_s"],
        "ratio_subset_balltree_build_and_query_over_ours": bt["wall_s"] / runs["ours_subset"]["wall_s"],
        "target_ratio": TARGET_RATIO,
        "note": (
            f"BallTree was built on all {args.n} rows and queried with {len(subset)} of them; its all-rows time "
            f"is build + {args.n} x measured seconds per query (extrapolated, not run). BallTree queries are "
            f"single-threaded; ours used {args.threads} thread(s)."
        ),
    }
    if "ours_all_1thread" in runs:
        one = runs["ours_all_1thread"]["wall_s"]
        speed["ours_all_rows_1thread_s"] = one
        speed["ratio_all_rows_balltree_extrapolated_over_ours_1thread"] = bt_full / one
    if "sklearn_brute_all" in runs:
        speed["sklearn_brute_all_rows_s"] = runs["sklearn_brute_all"]["wall_s"]
        speed["ratio_sklearn_brute_over_ours"] = runs["sklearn_brute_all"]["wall_s"] / ours_all
    record |= {"runs": runs, "speed": speed, "checks": checks, "machine_end_loadavg": os.getloadavg()}
    out = args.out or results_dir / "knn.json"
    write_json(out, record)
    logging.info("speed: %s", json.dumps(speed, indent=1))
    logging.info("checks: %s", json.dumps(checks, indent=1))
    logging.info("wrote %s", out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
