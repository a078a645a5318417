"""Stage train_retrieval_head: a PromptSG-style instance retrieval head over frozen embeddings.

Params: {"seed", "dataset", "method", "head": <retrieval_head section minus datasets/method>, "text": <embed.text
section>, "stage_version"}. Inputs: {"shape_embeddings" | "image_embeddings", "manifest", "ttv", "qg"}
(+ "index", "shards" of a shape dataset's cache: the descriptor floor). Writes the head
(--head safetensors, --head-json description; load with ``pipeline3d.load_retrieval_head``) and --metrics: qg
Rank@1/5/10 + mAP (mean and std over the query/gallery splits) of the post-BN feature, the pre-BN feature and the
raw embeddings. Resumable (state in --state-dir); exit 75 after SIGTERM/SIGUSR1 with a checkpoint written. See
``pipeline3d.jobs.retrieval_head`` for the model, losses and protocol.
"""

from __future__ import annotations

import sys

from ..jobs import retrieval_head as job
from ._cli import arg, run_training_stage

OUTPUTS = [
    arg("--head", "output: head weights (.safetensors)"),
    arg("--head-json", "output: head description (.json)"),
    arg("--metrics", "output: metrics JSON"),
]


def main(argv: list[str] | None = None) -> int:
    return run_training_stage(
        "train_retrieval_head",
        __doc__,
        OUTPUTS,
        job.stage,
        errors=(ValueError,),
        required=job.REQUIRED_INPUTS,
        argv=argv,
    )


if __name__ == "__main__":
    sys.exit(main())
