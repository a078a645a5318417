"""Stage train_promptsg: PromptSG end to end on a trainable backbone's tokens, one (dataset, variant).

Params: {"seed", "dataset", "variant", "method", "kind": shape | image, "promptsg": <defaults>, "variant_settings":
<overrides>, "text": <embed.text section>, "stage_version"; shapes: "tokens"; images: "image" (embed.image)}.
Inputs: {"manifest", "ttv", "qg"; shapes: "index", "shards", "weights", "encoder_json", optional
"shape_embeddings"; images: "store", optional "image_embeddings"} (the embeddings are the raw floor). Writes
--model-dir (backbone + head files; load with ``pipeline3d.load_promptsg``) and --metrics (qg Rank@1/5/10 + mAP
over the query/gallery splits, with the raw-embedding floor and, for shapes, the descriptor floor). Resumable
(state in --state-dir); exit 75 after SIGTERM/SIGUSR1 with a checkpoint written. See ``pipeline3d.jobs.promptsg``
for the model, losses and protocol.
"""

from __future__ import annotations

import sys

from ..jobs import promptsg as job
from ._cli import arg, run_training_stage

OUTPUTS = [
    arg("--model-dir", "output folder: encoder.{safetensors,json} + head.{safetensors,json}"),
    arg("--metrics", "output: metrics JSON"),
]


def main(argv: list[str] | None = None) -> int:
    return run_training_stage(
        "train_promptsg", __doc__, OUTPUTS, job.stage, errors=(ValueError,), required=job.REQUIRED_INPUTS, argv=argv
    )


if __name__ == "__main__":
    sys.exit(main())
