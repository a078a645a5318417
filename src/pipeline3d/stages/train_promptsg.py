"""Stage train_promptsg: PromptSG end to end on a pretrained 3D encoder's tokens, one (dataset, variant).

Params: {"seed", "dataset", "variant", "method", "promptsg": <defaults>, "variant_settings": <overrides>, "tokens",
"text": <embed.text section>, "stage_version"}. Inputs: {"manifest", "ttv", "qg", "index", "shards", "weights",
"encoder_json", optional "shape_embeddings" (the raw floor)}. Writes --model-dir (encoder + head files; load with
``pipeline3d.embed.promptsg.load_promptsg``) and --metrics (qg Rank@1/5/10 + mAP over the query/gallery splits,
with the raw-embedding and descriptor floors). Resumable (state in --state-dir); exit 75 after SIGTERM/SIGUSR1
with a checkpoint written. See ``pipeline3d.jobs.promptsg`` for the model, losses and protocol.
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
