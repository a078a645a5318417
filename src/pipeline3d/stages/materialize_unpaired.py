"""One unpaired split as its own shard file holding only the arrays its primitive may see (spec section 10.3).

train_mesh -> mesh arrays, train_pc -> point-cloud arrays, train_udf -> grid arrays, eval -> everything; see
pipeline3d.data.unpaired_store.
"""

from __future__ import annotations

import sys

from ..io.cache_schema import profile_of
from ..data.unpaired_store import materialize
from ._cli import parser, start

STAGE = "materialize_unpaired"


def main(argv: list[str] | None = None) -> int:
    p = parser(STAGE, __doc__)
    p.add_argument("--split", required=True, help="train_mesh | train_pc | train_udf | eval")
    p.add_argument("--unpaired", required=True, help="splits unpaired.parquet")
    p.add_argument("--index", required=True, help="cache index.parquet")
    p.add_argument("--shards", required=True, nargs="+", help="every cache shard of the dataset")
    p.add_argument("--out", required=True, help="output store (.h5)")
    args = p.parse_args(argv)
    params, logger = start(STAGE, args)
    try:
        n = materialize(args.split, args.unpaired, args.index, args.shards, args.out, dataset=params["dataset"],
                        cache_profile=profile_of(params["cache"]) if "cache" in params else None,
                        compression=params.get("cache", {}).get("compression", "gzip"))
    except (ValueError, OSError, KeyError) as exc:
        logger.error("%s", exc)
        return 1
    logger.info("wrote %s with %d shapes", args.out, n)
    return 0


if __name__ == "__main__":
    sys.exit(main())
