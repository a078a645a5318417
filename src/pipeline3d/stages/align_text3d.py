"""Stage align_text3d: one K-fold job of the text-3D alignment (HSE text-to-3D style).

Trains a projection MLP from frozen shape-encoder vectors into an open_clip text space, the text tower's last
``trainable_blocks`` blocks and a learnable InfoNCE temperature on the folds other than ``fold``, validating on
``fold`` (text->mesh and mesh->text Recall@1/5/10; the best mean R@5 is kept). Writes projection.safetensors,
text_tower.safetensors (only the unfrozen text weights), head.json and metrics.json. Resumable (state in
--state-dir); exit 75 after SIGTERM/SIGUSR1 with a checkpoint written.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

from ..io.atomic import write_json
from ..jobs import align_text3d
from ..log import git_describe
from ..embed.text3d_alignment import save_alignment
from ._cli import start, training_parser


def main(argv: list[str] | None = None) -> int:
    p = training_parser("align_text3d", __doc__)
    p.add_argument("--projection", required=True, help="projection MLP (.safetensors)")
    p.add_argument("--text-tower", required=True, help="the unfrozen text-tower weights (.safetensors)")
    p.add_argument("--head-json", required=True, help="architecture, provenance and checksums (.json)")
    p.add_argument("--metrics", required=True, help="validation metrics (.json)")
    args = p.parse_args(argv)
    params, log = start("align_text3d", args)
    torch.set_num_threads(max(1, args.threads))
    started = time.time()
    try:
        run, result = align_text3d.run(params, json.loads(args.inputs), Path(args.state_dir), log=log)
        if run is None:
            if result.interrupted:
                log.warning("interrupted at step %d; checkpoint saved, rerun to resume", result.steps)
            return result.exit_code
        save_alignment(run.model, run.backbone, args.projection, args.text_tower, args.head_json,
                       projection_config=run.projection_config, text_config=params["text"], seed=int(params["seed"]),
                       extra={"dataset": params["dataset"], "method": params["method"], "fold": int(params["fold"]),
                              "best_step": run.metrics["best_step"], "val": run.metrics["val"],
                              "git": git_describe()})
    except ValueError as exc:
        log.error("%s", exc)
        return 1
    metrics = run.metrics | {"protocol": params, "git": git_describe(), "seconds": round(time.time() - started, 1)}
    write_json(args.metrics, metrics)
    val = metrics["val"]
    log.info("fold %d: best step %d | val t2m R@5 %.4f | m2t R@5 %.4f | temperature %.4f", metrics["fold"],
             metrics["best_step"], val["t2m"]["R@5"], val["m2t"]["R@5"], metrics["temperature"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
