"""Stage train_metric_head: a projection head over one embedding space, trained with band-negative triplets.

Params: {"seed", "space", "head": <metric_head config minus optuna>, "tuned": bool, "stage_version"}.
Inputs: {"embeddings", "difficulty", "manifest", "ttv", "qg", optional "best"}; with "best" (the tuner's best.json)
its parameters override the head settings (lr, margin, out_dim ...). Writes the head (--head safetensors,
--head-json description) and --metrics (qg Rank@1/5/10 + mAP for the projected and the raw embeddings, val
retrieval against val + train, the bandit's pulls and mean rewards). Resumable (--state-dir); exit 75 after
SIGTERM/SIGUSR1 with a checkpoint written.
"""

from __future__ import annotations

import sys

from ..jobs import metric_head as job
from ._cli import arg, run_training_stage

OUTPUTS = [
    arg("--head", "output: head weights (safetensors)"),
    arg("--head-json", "output: head description (JSON)"),
    arg("--metrics", "output: metrics JSON"),
]


def main(argv: list[str] | None = None) -> int:
    return run_training_stage("train_metric_head", __doc__, OUTPUTS, job.stage, summary=job.summary, argv=argv)


if __name__ == "__main__":
    sys.exit(main())
