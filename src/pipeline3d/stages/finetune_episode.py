"""Stage finetune_episode: one N-way K-shot episode (dataset, method, setting, fold) -> metrics.json.

The metrics JSON holds the protocol (all knobs), the episode (setting, way, shot, fold, support and query counts,
query shapes per class), test accuracy, mean class accuracy and per-class accuracy over the episode's N classes,
and the code version; for a setting the dataset cannot fill, only why it was skipped. Resumable like pretraining
(state in --state-dir); exit 75 after SIGTERM/SIGUSR1 with a checkpoint written.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

from ..io.atomic import write_json
from ..jobs import episodes
from ..log import git_describe
from ._cli import start, training_parser


def main(argv: list[str] | None = None) -> int:
    p = training_parser("finetune_episode", __doc__)
    p.add_argument("--metrics", required=True)
    args = p.parse_args(argv)
    params, log = start("finetune_episode", args)
    torch.set_num_threads(max(1, args.threads))
    started = time.time()
    try:
        metrics, result = episodes.run(params, json.loads(args.inputs), Path(args.state_dir), log=log)
    except ValueError as exc:
        log.error("%s", exc)
        return 1
    if metrics is None:
        if result.interrupted:
            log.warning("interrupted at step %d; checkpoint saved, rerun to resume", result.steps)
        return result.exit_code
    metrics |= {"protocol": params, "git": git_describe(), "seconds": round(time.time() - started, 1)}
    write_json(args.metrics, metrics)
    if "test" in metrics:
        log.info("%s fold %d: test accuracy %.4f (mean class accuracy %.4f) over %d query shapes",
                 metrics["setting"], metrics["fold"], metrics["test"]["accuracy"],
                 metrics["test"]["mean_class_accuracy"], metrics["test"]["n"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
