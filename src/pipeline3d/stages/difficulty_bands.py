"""Stage difficulty_bands: the command line of ``pipeline3d.jobs.difficulty_bands`` (its docstring says what it computes)."""

from __future__ import annotations

import json
import sys

import torch

from ..jobs import difficulty_bands as job
from ._cli import arg, run_stage

STAGE = "difficulty_bands"
OPTIONS = [arg("--inputs", "JSON: embeddings, manifest, ttv (+ duplicates)"),
           arg("--threads", "CPUs of the job (torch threads)", type=int, default=1),
           arg("--out", "output bands parquet")]


def body(params: dict, args, log) -> int:
    torch.set_num_threads(max(1, args.threads))
    return job.run(params, json.loads(args.inputs), args.out, log)


def main(argv: list[str] | None = None) -> int:
    return run_stage(STAGE, job.__doc__, OPTIONS, body, errors=(ValueError, KeyError), argv=argv)


if __name__ == "__main__":
    sys.exit(main())
