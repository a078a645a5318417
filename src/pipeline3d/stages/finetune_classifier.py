"""Stage finetune_classifier: one few-shot job (dataset, method, K, seed) -> metrics.json.

The metrics JSON holds the protocol (all knobs), the seeds, test accuracy, mean class accuracy and per-class
accuracy, the selected step, and the code version. Resumable like pretraining (state in --state-dir); exit 75
after SIGTERM/SIGUSR1 with a checkpoint written.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

from ..io.atomic import write_json
from ..finetune_rows import DESCRIPTOR
from ..jobs import descriptor, finetune
from ..log import git_describe
from ._cli import start, training_parser


def main(argv: list[str] | None = None) -> int:
    p = training_parser("finetune_classifier", __doc__)
    p.add_argument("--metrics", required=True)
    args = p.parse_args(argv)
    params, log = start("finetune_classifier", args)
    torch.set_num_threads(max(1, args.threads))
    started = time.time()
    try:
        files = json.loads(args.inputs)
        if params.get("row_kind") == DESCRIPTOR:  # the hand-crafted floor: no training loop, nothing to resume
            metrics, result = descriptor.run(params, files, log=log), None
        else:
            metrics, result = finetune.run(params, files, Path(args.state_dir), log=log)
    except ValueError as exc:
        log.error("%s", exc)
        return 1
    if metrics is None:
        if result.interrupted:
            log.warning("interrupted at step %d; checkpoint saved, rerun to resume", result.steps)
        return result.exit_code
    metrics |= {"protocol": params, "git": git_describe(), "seconds": round(time.time() - started, 1)}
    write_json(args.metrics, metrics)
    log.info("test accuracy %.4f (mean class accuracy %.4f) over %d shapes", metrics["test"]["accuracy"],
             metrics["test"]["mean_class_accuracy"], metrics["test"]["n"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
