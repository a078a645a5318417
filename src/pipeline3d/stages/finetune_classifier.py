"""Stage finetune_classifier: one few-shot job (dataset, method, K, seed) -> metrics.json.

The metrics JSON holds the protocol (all knobs), the seeds, test accuracy, mean class accuracy and per-class
accuracy, the selected step, the accuracy on the job's own training shapes, and the code version. Resumable like
pretraining (state in --state-dir); exit 75 after SIGTERM/SIGUSR1 with a checkpoint written. The descriptor row
trains no network (nothing to resume).
"""

from __future__ import annotations

import sys

from ..finetune_rows import DESCRIPTOR
from ..jobs import descriptor, finetune
from ._cli import run_metrics_job


def job(params, files, state_dir, log):
    if params.get("row_kind") == DESCRIPTOR:  # the hand-crafted floor: no training loop
        return descriptor.run(params, files, log=log), None
    return finetune.run(params, files, state_dir, log=log)


def summary(metrics: dict) -> str:
    test = metrics["test"]
    return (f"test accuracy {test['accuracy']:.4f} (mean class accuracy {test['mean_class_accuracy']:.4f}) over "
            f"{test['n']} shapes")


def main(argv: list[str] | None = None) -> int:
    return run_metrics_job("finetune_classifier", __doc__, job, summary, argv)


if __name__ == "__main__":
    sys.exit(main())
