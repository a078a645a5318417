"""Stage embed_text: the command line of ``pipeline3d.jobs.embed_text`` (its docstring says what it computes)."""

from __future__ import annotations

import json
import sys

import torch

from ..embed.backbones import MissingWeightsError, WeightsLoadError
from ..jobs import embed_text as job
from ._cli import arg, run_stage

STAGE = "embed_text"
OPTIONS = [arg("--inputs", "JSON: {manifest}"),
           arg("--threads", "CPUs of the job (torch threads)", type=int, default=1),
           arg("--out", "output embeddings parquet"),
           arg("--cache-dir", "text-vector cache shared by jobs (undeclared in the rule)")]


def body(params: dict, args, log) -> int:
    torch.set_num_threads(max(1, args.threads))
    return job.run(params, json.loads(args.inputs), args.out, args.cache_dir, log)


def main(argv: list[str] | None = None) -> int:
    return run_stage(STAGE, job.__doc__, OPTIONS, body, errors=(ValueError, KeyError, MissingWeightsError, WeightsLoadError), argv=argv)


if __name__ == "__main__":
    sys.exit(main())
