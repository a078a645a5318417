"""Stage align_text3d: one K-fold job of the text-3D alignment (HSE text-to-3D style).

Trains a projection MLP from frozen shape-encoder vectors into an open_clip text space, the text tower's last
``trainable_blocks`` blocks and a learnable InfoNCE temperature on the folds other than ``fold``, validating on
``fold`` (text->mesh and mesh->text Recall@1/5/10; the best mean R@5 is kept). Writes projection.safetensors,
text_tower.safetensors (only the unfrozen text weights), head.json and metrics.json. Resumable (state in
--state-dir); exit 75 after SIGTERM/SIGUSR1 with a checkpoint written.
"""

from __future__ import annotations

import sys

from ..jobs import align_text3d as job
from ._cli import arg, run_training_stage

OUTPUTS = [
    arg("--projection", "projection MLP (.safetensors)"),
    arg("--text-tower", "the unfrozen text-tower weights (.safetensors)"),
    arg("--head-json", "architecture, provenance and checksums (.json)"),
    arg("--metrics", "validation metrics (.json)"),
]


def main(argv: list[str] | None = None) -> int:
    return run_training_stage("align_text3d", __doc__, OUTPUTS, job.stage, summary=job.summary, argv=argv)


if __name__ == "__main__":
    sys.exit(main())
