"""One unpaired split as its own shard file holding only the arrays its primitive may see (spec section 10.3).

train_mesh -> mesh arrays, train_pc -> point-cloud arrays, train_udf -> grid arrays, eval -> everything; see
pipeline3d.data.unpaired_store.
"""

from __future__ import annotations

import sys

from ..data.unpaired_store import materialize
from ..io.cache_schema import profile_of
from ._cli import arg, run_stage

STAGE = "materialize_unpaired"
OPTIONS = [
    arg("--split", "train_mesh | train_pc | train_udf | eval"),
    arg("--unpaired", "splits unpaired.parquet"),
    arg("--index", "cache index.parquet"),
    arg("--shards", "every cache shard of the dataset", nargs="+"),
    arg("--out", "output store (.h5)"),
]


def write_store(params: dict, args, log) -> None:
    n = materialize(
        args.split,
        args.unpaired,
        args.index,
        args.shards,
        args.out,
        dataset=params["dataset"],
        cache_profile=profile_of(params["cache"]) if "cache" in params else None,
        compression=params.get("cache", {}).get("compression", "gzip"),
    )
    log.info("wrote %s with %d shapes", args.out, n)


def main(argv: list[str] | None = None) -> int:
    return run_stage(STAGE, __doc__, OPTIONS, write_store, errors=(ValueError, OSError, KeyError), argv=argv)


if __name__ == "__main__":
    sys.exit(main())
