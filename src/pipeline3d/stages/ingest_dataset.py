"""Stage ingest_dataset: one raw dataset (folder, archive, h5 files, image tar) -> manifest, rejects, item store.

Hostile or broken input never fails the job: refused archives, members and items become rows of the rejects
table (see ``pipeline3d.io.rejects.REASONS``). The job fails (exit 2) only for a configuration problem such as
a missing input path or a format that does not fit the kind.
"""

from __future__ import annotations

import sys

from ._cli import parser, start

STAGE = "ingest_dataset"


def main(argv: list[str] | None = None) -> int:
    p = parser(STAGE, __doc__)
    p.add_argument("--manifest", required=True, help="output manifest.parquet")
    p.add_argument("--rejects", required=True, help="output rejects.parquet")
    p.add_argument("--items", required=True, help="output items.h5 (pipeline3d.io.itemstore)")
    args = p.parse_args(argv)
    params, logger = start(STAGE, args)

    from ..data.ingest import IngestConfigError, run_ingest

    try:
        result = run_ingest(params, args.manifest, args.rejects, args.items, logger)
    except (IngestConfigError, FileNotFoundError) as exc:
        logger.error("ingest of %r failed: %s", params.get("dataset"), exc)
        return 2
    logger.info("done: %d items in %s, %d rejects in %s", len(result.rows), args.manifest, len(result.rejects),
                args.rejects)
    return 0


if __name__ == "__main__":
    sys.exit(main())
