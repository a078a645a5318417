"""Stage index_cache: deep-validate a dataset's cache shards and write index.parquet and rejects.parquet.

``index.parquet``: shape_id, shard (int), shard_file (file name), row; sorted by shape_id.
``rejects.parquet``: the shapes the shard jobs could not cache (source = shape id, stage "cache", reason, detail).
Any invalid shard (truncated, unfinished, foreign, other profile/dataset/shard count, misplaced ids) is an error
naming the file and the reason (exit 1), and the file is moved aside (``.invalid``) so that the next run of the
workflow rebuilds it; nothing is checked or moved while Snakemake merely parses (``-n`` has no side effects).
"""

from __future__ import annotations

import sys

from ._cli import arg, run_stage

STAGE = "index_cache"
OPTIONS = [
    arg("--shards", "every shard-NNNN.h5 of the dataset", nargs="+"),
    arg("--out", "output index.parquet"),
    arg("--rejects", "output rejects.parquet"),
]


def index_shards(params: dict, args, log) -> None:
    from ..data.cache.index import InvalidShards, build_index
    from ..io.atomic import write_parquet
    from ..io.shards import quarantine

    try:
        index, rejects = build_index(args.shards, params["dataset"], params["cache"])
    except InvalidShards as exc:  # damaged files go aside, so the next run rebuilds them
        moved = [f"moved {path} to {quarantine(path)}: run the workflow again to rebuild it" for path in exc.damaged]
        raise ValueError("\n".join([str(exc), *moved])) from exc
    write_parquet(args.out, index)
    write_parquet(args.rejects, rejects)
    log.info(
        "done: %d shapes in %d shards -> %s; %d rejects -> %s",
        len(index),
        len(args.shards),
        args.out,
        len(rejects),
        args.rejects,
    )


def main(argv: list[str] | None = None) -> int:
    return run_stage(STAGE, __doc__, OPTIONS, index_shards, argv=argv)


if __name__ == "__main__":
    sys.exit(main())
