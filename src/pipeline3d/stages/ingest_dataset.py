"""Stage ingest_dataset: one raw dataset (folder, archive, h5 files, image tar) -> manifest, rejects, item store.

Hostile or broken input never fails the job: refused archives, members and items become rows of the rejects
table (see ``pipeline3d.io.rejects.REASONS``). The job fails (exit 2) only for a configuration problem such as
a missing input path or a format that does not fit the kind.
"""

from __future__ import annotations

import sys

from ._cli import arg, run_stage

STAGE = "ingest_dataset"
OPTIONS = [
    arg("--manifest", "output manifest.parquet"),
    arg("--rejects", "output rejects.parquet"),
    arg("--items", "output items.h5 (pipeline3d.io.itemstore)"),
]


def ingest(params: dict, args, log) -> None:
    from ..data.ingest import IngestConfigError, run_ingest

    try:
        result = run_ingest(params, args.manifest, args.rejects, args.items, log)
    except (IngestConfigError, FileNotFoundError) as exc:
        raise _ConfigProblem(f"ingest of {params.get('dataset')!r} failed: {exc}") from exc
    log.info(
        "done: %d items in %s, %d rejects in %s", len(result.rows), args.manifest, len(result.rejects), args.rejects
    )


class _ConfigProblem(Exception):
    """A configuration problem (exit 2), as opposed to bad data (which becomes rejects)."""


def main(argv: list[str] | None = None) -> int:
    return run_stage(STAGE, __doc__, OPTIONS, ingest, errors=(_ConfigProblem,), error_code=2, argv=argv)


if __name__ == "__main__":
    sys.exit(main())
