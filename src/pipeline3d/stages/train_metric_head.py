"""Stage train_metric_head: a projection head over one embedding space, trained with band-negative triplets.

Params: {"seed", "space", "head": <metric_head config minus optuna>, "tuned": bool, "stage_version"}.
Inputs: {"embeddings", "difficulty", "manifest", "ttv", "qg", optional "best"}; with "best" (the tuner's best.json)
its parameters override the head settings (lr, margin, out_dim ...). Writes the head (--head safetensors,
--head-json description) and --metrics (qg Rank@1/5/10 + mAP for the projected and the raw embeddings, val
retrieval against val + train, the bandit's pulls and mean rewards). Resumable (--state-dir); exit 75 after
SIGTERM/SIGUSR1 with a checkpoint written.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

from ..io.atomic import write_json
from ..jobs import metric_head
from ..log import git_describe
from ._cli import start, training_parser


def main(argv: list[str] | None = None) -> int:
    p = training_parser("train_metric_head", __doc__)
    p.add_argument("--head", required=True, help="output: head weights (safetensors)")
    p.add_argument("--head-json", required=True, help="output: head description (JSON)")
    p.add_argument("--metrics", required=True, help="output: metrics JSON")
    args = p.parse_args(argv)
    params, log = start("train_metric_head", args)
    torch.set_num_threads(max(1, args.threads))
    started = time.time()
    try:
        files = json.loads(args.inputs)
        metrics, objective, result, data = metric_head.run(params, files, Path(args.state_dir), log=log)
    except ValueError as exc:
        log.error("%s", exc)
        return 1
    if metrics is None:
        if result.interrupted:
            log.warning("interrupted at step %d; checkpoint saved, rerun to resume", result.steps)
        return result.exit_code
    git = git_describe()
    metric_head.export(objective, data, metrics["head"], args.head, args.head_json,
                       {"space": params["space"], "seed": int(params["seed"]), "steps": result.steps,
                        "tuned": metrics["tuned"], "git": git})
    metrics |= {"protocol": params, "git": git, "seconds": round(time.time() - started, 1)}
    write_json(args.metrics, metrics)
    if "test_qg" in metrics:
        proj, raw = metrics["test_qg"]["projected"], metrics["test_qg"]["raw"]
        log.info("test qg mAP %.4f (raw %.4f) | Rank@1 %.4f (raw %.4f)", proj["mAP"], raw["mAP"], proj["rank@1"],
                 raw["rank@1"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
