"""Stage difficulty_bands: the command line of ``pipeline3d.jobs.difficulty_bands`` (its docstring says what it
computes)."""

from __future__ import annotations

import json
import sys

from ..jobs import difficulty_bands as job
from ._cli import arg, run_stage

STAGE = "difficulty_bands"
OPTIONS = [arg("--inputs", "JSON: embeddings, manifest, ttv (+ duplicates)"), arg("--out", "output bands parquet")]


def body(params: dict, args, log) -> int:
    return job.run(params, json.loads(args.inputs), args.out, log)


def main(argv: list[str] | None = None) -> int:
    return run_stage(STAGE, job.__doc__, OPTIONS, body, errors=(ValueError, KeyError), threads="torch", argv=argv)


if __name__ == "__main__":
    sys.exit(main())
