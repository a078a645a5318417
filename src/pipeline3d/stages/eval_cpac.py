"""Stage eval_cpac: the command line of ``pipeline3d.jobs.eval_cpac`` (its docstring says what it computes)."""

from __future__ import annotations

import json
import sys

from ..jobs import eval_cpac as job
from ._cli import arg, run_stage

STAGE = "eval_cpac"
OPTIONS = [
    arg("--inputs", "JSON: manifest, unpaired, ttv, index, shards, weights, encoder_json"),
    arg("--metrics", "output metrics JSON"),
]


def body(params: dict, args, log) -> None:
    job.write_metrics(params, json.loads(args.inputs), args.metrics, log)


def main(argv: list[str] | None = None) -> int:
    return run_stage(
        STAGE, job.__doc__, OPTIONS, body, errors=(ValueError, KeyError, PermissionError), threads="torch", argv=argv
    )


if __name__ == "__main__":
    sys.exit(main())
