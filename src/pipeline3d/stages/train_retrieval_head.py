"""Stage train_retrieval_head: a PromptSG-style instance retrieval head over frozen shape embeddings.

Params: {"seed", "dataset", "method", "head": <retrieval_head section minus datasets/method>, "text": <embed.text
section>, "stage_version"}. Inputs: {"shape_embeddings", "manifest", "ttv", "qg"}. Writes the head
(--head safetensors, --head-json description; load with ``jobs.retrieval_head.load_retrieval_head``) and
--metrics: qg Rank@1/5/10 + mAP (mean and std over the query/gallery splits) of the post-BN feature, the pre-BN
feature and the raw embeddings. Resumable (state in --state-dir); exit 75 after SIGTERM/SIGUSR1 with a checkpoint
written. See ``pipeline3d.jobs.retrieval_head`` for the model, losses and protocol.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

from ..io.atomic import write_json
from ..jobs import retrieval_head
from ..log import git_describe
from ._cli import start, training_parser


def main(argv: list[str] | None = None) -> int:
    p = training_parser("train_retrieval_head", __doc__)
    p.add_argument("--head", required=True, help="output: head weights (.safetensors)")
    p.add_argument("--head-json", required=True, help="output: head description (.json)")
    p.add_argument("--metrics", required=True, help="output: metrics JSON")
    args = p.parse_args(argv)
    params, log = start("train_retrieval_head", args)
    torch.set_num_threads(max(1, args.threads))
    started = time.time()
    try:
        files = json.loads(args.inputs)
        missing = sorted({"shape_embeddings", "manifest", "ttv", "qg"} - set(files))
        if missing:
            raise ValueError(f"--inputs lacks {missing}")
        metrics, model, description, result = retrieval_head.run(params, files, Path(args.state_dir), log=log)
    except (ValueError, json.JSONDecodeError) as exc:
        log.error("%s", exc)
        return 1
    if metrics is None:
        if result.interrupted:
            log.warning("interrupted at step %d; checkpoint saved, rerun to resume", result.steps)
        return result.exit_code
    description["git"] = git_describe()
    retrieval_head.save_retrieval_head(model, description, args.head, args.head_json)
    metrics |= {"protocol": params, "git": description["git"], "seconds": round(time.time() - started, 1)}
    write_json(args.metrics, metrics)
    log.info("wrote %s, %s and %s", args.head, args.head_json, args.metrics)
    return 0


if __name__ == "__main__":
    sys.exit(main())
