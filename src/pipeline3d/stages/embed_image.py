"""Stage embed_image: the command line of ``pipeline3d.jobs.embed_image`` (its docstring says what it computes)."""

from __future__ import annotations

import json
import sys

from ..embed.backbones import EMBEDDING_ERRORS
from ..jobs import embed_image as job
from ._cli import arg, run_stage

STAGE = "embed_image"
OPTIONS = [
    arg("--inputs", "JSON: manifest + items (image) or manifest + index + shards"),
    arg("--out", "output embeddings parquet"),
]


def body(params: dict, args, log) -> int:
    return job.run(params, json.loads(args.inputs), args.out, log)


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
