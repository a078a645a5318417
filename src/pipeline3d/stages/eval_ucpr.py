"""Stage eval_ucpr: the command line of ``pipeline3d.jobs.eval_ucpr`` (its docstring says what it computes)."""

from __future__ import annotations

import json
import sys

from ..jobs import eval_ucpr as job
from ._cli import arg, run_stage

STAGE = "eval_ucpr"
OPTIONS = [
    arg("--inputs", "JSON: manifest, unpaired, ttv, index, shards, weights, encoder_json"),
    arg("--metrics", "output metrics JSON"),
]


def body(params: dict, args, log) -> int:
    return job.run(params, json.loads(args.inputs), args.metrics, log, workers=args.workers)


def main(argv: list[str] | None = None) -> int:
    return run_stage(STAGE, job.__doc__, OPTIONS, body, errors=(ValueError, KeyError), threads="workers", argv=argv)


if __name__ == "__main__":
    sys.exit(main())
