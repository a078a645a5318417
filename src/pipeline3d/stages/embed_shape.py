"""Stage embed_shape: the command line of ``pipeline3d.jobs.embed_shape`` (its docstring says what it computes)."""

from __future__ import annotations

import json
import sys

from ..jobs import embed_shape as job
from ._cli import arg, run_stage

STAGE = "embed_shape"
OPTIONS = [
    arg("--inputs", "JSON: manifest, ttv, index, shards, weights, encoder_json"),
    arg("--out", "output embeddings parquet"),
]


def body(params: dict, args, log) -> int:
    return job.run(params, json.loads(args.inputs), args.out, log, workers=args.workers)


def main(argv: list[str] | None = None) -> int:
    return run_stage(STAGE, job.__doc__, OPTIONS, body, errors=(ValueError, KeyError), threads="workers", argv=argv)


if __name__ == "__main__":
    sys.exit(main())
