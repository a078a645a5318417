"""Wall time of `snakemake -n all` on a dataset of 50,000 shapes (ingest done, 64 cache shards).

The DAG has one job per shard, not per shape, so planning should stay in seconds at ShapeNet scale (target < 10 s
on 2 cores). The same set-up is tested for job counts in tests/workflow/test_dryrun.py.

    .venv/bin/python benchmarks/bench_dryrun.py [--shapes 50000] [--shards 64] [--repeat 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from smk import copy_repo, job_counts, run_snakemake, write_big_manifest_workdir  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", type=int, default=50_000)
    ap.add_argument("--shards", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        workdir = copy_repo(Path(tmp) / "repo")
        write_big_manifest_workdir(workdir, n_shapes=args.shapes, shards=args.shards)
        times = []
        for _ in range(args.repeat):
            start = time.perf_counter()
            result = run_snakemake(workdir, "-n", "all")
            times.append(time.perf_counter() - start)
            if result.returncode != 0:
                print(result.tail(), file=sys.stderr)
                return 1
        jobs = sum(job_counts(result.output).values())
    print(
        f"dry-run | {args.shapes} shapes | {args.shards} shards | {jobs} jobs | "
        f"median {statistics.median(times):.2f} s | min {min(times):.2f} s | max {max(times):.2f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
