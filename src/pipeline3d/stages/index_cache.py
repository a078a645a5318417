"""Stage index_cache: deep-validate a dataset's cache shards and write index.parquet and rejects.parquet.

``index.parquet``: shape_id, shard (int), shard_file (file name), row; sorted by shape_id.
``rejects.parquet``: the shapes the shard jobs could not cache (source = shape id, stage "cache", reason, detail).
Any invalid shard (truncated, unfinished, foreign, other profile/dataset/shard count, misplaced ids) is an error
naming the file and the reason (exit 1), and the file is moved aside (``.invalid``) so that the next run of the
workflow rebuilds it; nothing is checked or moved while Snakemake merely parses (``-n`` has no side effects).
"""

from __future__ import annotations

import sys

from ._cli import parser, start

STAGE = "index_cache"


def main(argv: list[str] | None = None) -> int:
    p = parser(STAGE, __doc__)
    p.add_argument("--shards", nargs="+", required=True, help="every shard-NNNN.h5 of the dataset")
    p.add_argument("--out", required=True, help="output index.parquet")
    p.add_argument("--rejects", required=True, help="output rejects.parquet")
    args = p.parse_args(argv)
    params, logger = start(STAGE, args)

    from ..data.cache.index import InvalidShards, build_index
    from ..io.atomic import write_parquet
    from ..io.shards import quarantine

    try:
        index, rejects = build_index(args.shards, params["dataset"], params["cache"])
    except InvalidShards as exc:
        logger.error("%s", exc)
        for path in exc.damaged:
            logger.error("moved %s to %s: run the workflow again to rebuild it", path, quarantine(path))
        return 1
    write_parquet(args.out, index)
    write_parquet(args.rejects, rejects)
    logger.info("done: %d shapes in %d shards -> %s; %d rejects -> %s", len(index), len(args.shards), args.out,
                len(rejects), args.rejects)
    return 0


if __name__ == "__main__":
    sys.exit(main())
