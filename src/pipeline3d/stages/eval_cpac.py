"""Stage eval_cpac: the command line of ``pipeline3d.jobs.eval_cpac`` (its docstring says what it computes)."""

from __future__ import annotations

import json
import sys

import torch

from ..jobs import eval_cpac as job
from ._cli import arg, run_stage

STAGE = "eval_cpac"
OPTIONS = [arg("--inputs", "JSON: manifest, unpaired, ttv, index, shards, weights, encoder_json"),
           arg("--threads", "CPUs of the job (torch threads)", type=int, default=1),
           arg("--metrics", "output metrics JSON")]


def body(params: dict, args, log) -> None:
    torch.set_num_threads(max(1, args.threads))
    job.write_metrics(params, json.loads(args.inputs), args.metrics, log)


def main(argv: list[str] | None = None) -> int:
    return run_stage(STAGE, job.__doc__, OPTIONS, body, errors=(ValueError, KeyError, PermissionError), argv=argv)


if __name__ == "__main__":
    sys.exit(main())
