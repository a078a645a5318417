"""Stage embed_text: the command line of ``pipeline3d.jobs.embed_text`` (its docstring says what it computes)."""

from __future__ import annotations

import json
import sys

from ..embed.backbones import EMBEDDING_ERRORS
from ..jobs import embed_text as job
from ._cli import arg, run_stage

STAGE = "embed_text"
OPTIONS = [
    arg("--inputs", "JSON: {manifest}"),
    arg("--out", "output embeddings parquet"),
    arg("--cache-dir", "text-vector cache shared by jobs (undeclared in the rule)"),
]


def body(params: dict, args, log) -> int:
    return job.run(params, json.loads(args.inputs), args.out, args.cache_dir, log)


def main(argv: list[str] | None = None) -> int:
    return run_stage(
        STAGE,
        job.__doc__,
        OPTIONS,
        body,
        errors=EMBEDDING_ERRORS,
        threads="torch",
        argv=argv,
    )


if __name__ == "__main__":
    sys.exit(main())
