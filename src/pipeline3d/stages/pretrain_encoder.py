"""Stage pretrain_encoder: one pretraining method (mixed corpus, objective) -> encoder.safetensors + encoder.json.

Resumable: state lives in --state-dir (undeclared in the rule, so Snakemake keeps it); a rerun continues from the
last checkpoint when the config is unchanged. SIGTERM/SIGUSR1 (SLURM preemption or time limit) checkpoint and exit
with 75, and the rerun resumes. Under torchrun/srun every rank runs this module; rank 0 writes the outputs.
"""

from __future__ import annotations

import sys

from ..jobs import pretrain as job
from ._cli import arg, run_training_stage

OUTPUTS = [
    arg("--weights", "output: encoder weights (.safetensors)"),
    arg("--encoder-json", "output: encoder description (.json)"),
    arg("--train-log", "output: the training curve (JSON lines)"),
]


def main(argv: list[str] | None = None) -> int:
    return run_training_stage(
        "pretrain_encoder", __doc__, OUTPUTS, job.stage, workers=job.loader_workers, errors=(ValueError,), argv=argv
    )


if __name__ == "__main__":
    sys.exit(main())
