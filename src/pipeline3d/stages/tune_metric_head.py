"""Stage tune_metric_head: the command line of ``pipeline3d.jobs.tune_metric_head`` (what it searches and how it
resumes is described there)."""

from __future__ import annotations

import json
import sys

from ..jobs import tune_metric_head as job
from ._cli import arg, run_stage

STAGE = "tune_metric_head"
OPTIONS = [
    arg("--inputs", "JSON: the rule's named inputs (name -> path)"),
    arg("--study", "Optuna SQLite study (undeclared; survives reruns)"),
    arg("--best", "output: best params JSON"),
]


def body(params: dict, args, log) -> int:
    return job.write_best(params, json.loads(args.inputs), args.study, args.best, log)


def main(argv: list[str] | None = None) -> int:
    return run_stage(STAGE, job.__doc__, OPTIONS, body, threads="torch", argv=argv)


if __name__ == "__main__":
    sys.exit(main())
