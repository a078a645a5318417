"""Stage embed_image: the command line of ``pipeline3d.jobs.embed_image`` (its docstring says what it computes)."""

from __future__ import annotations

import json
import sys

import torch

from ..embed.backbones import MissingWeightsError, WeightsLoadError
from ..jobs import embed_image as job
from ._cli import arg, run_stage

STAGE = "embed_image"
OPTIONS = [arg("--inputs", "JSON: manifest + items (image) or manifest + index + shards"),
           arg("--threads", "CPUs of the job (torch threads)", type=int, default=1),
           arg("--out", "output embeddings parquet")]


def body(params: dict, args, log) -> int:
    torch.set_num_threads(max(1, args.threads))
    return job.run(params, json.loads(args.inputs), args.out, log)


def main(argv: list[str] | None = None) -> int:
    return run_stage(STAGE, job.__doc__, OPTIONS, body, errors=(ValueError, KeyError, MissingWeightsError, WeightsLoadError), argv=argv)


if __name__ == "__main__":
    sys.exit(main())
