"""Stage build_cache_shard: cache every manifest item whose stable hash puts it in this shard.

Writes one HDF5 shard (``pipeline3d.io.shards``) atomically. A shape that cannot be cached is logged and listed
in the shard's ``failed`` attribute (index_cache turns those into rejects); it never fails the job. The job
fails (exit 2) only for a problem with its inputs: unreadable manifest/item store, the two out of step, a
shard number outside the configured count, or a dataset kind without a cache.

With ``cache.threads == 1`` the job is single-threaded: BLAS/OpenMP pools are capped through the environment
before numpy is imported, and the native engines (fcpw, Embree) run pinned to one CPU (see
``pipeline3d.data.cache.threads``). One such job per core is the fastest layout.
"""

from __future__ import annotations

import os
import sys

from ._cli import arg, run_stage

STAGE = "build_cache_shard"
OPTIONS = [
    arg("--shard", "shard number, e.g. 0003"),
    arg("--manifest", "the dataset's manifest.parquet"),
    arg("--items", "the dataset's items.h5 (pipeline3d.io.itemstore)"),
    arg("--out", "output shard .h5"),
]


def body(params: dict, args, log) -> None:
    from ..data.cache.threads import thread_env  # numpy-free: the limits must be in place before numpy loads

    if "numpy" not in sys.modules:  # only effective before numpy loads (always so when run as a job)
        os.environ.update(thread_env(int(params.get("cache", {}).get("threads", 1))))

    from ..jobs.build_cache_shard import build_shard  # its ShardJobError (bad inputs) is a ValueError

    n_ok, failures, seconds = build_shard(params, int(args.shard), args.manifest, args.items, args.out, log)
    n_total = n_ok + len(failures)
    per_shape = {k: 1000.0 * v / max(n_total, 1) for k, v in sorted(seconds.items())}
    log.info("time per shape (ms): %s", ", ".join(f"{k} {v:.1f}" for k, v in per_shape.items()))
    log.info("done: %d cached, %d failed -> %s", n_ok, len(failures), args.out)


def main(argv: list[str] | None = None) -> int:
    return run_stage(STAGE, __doc__, OPTIONS, body, errors=(ValueError, KeyError, OSError), error_code=2, argv=argv)


if __name__ == "__main__":
    sys.exit(main())
