"""Stage finetune_classifier: one few-shot job (dataset, method, K, seed) -> metrics.json.

The metrics JSON holds the protocol (all knobs), the seeds, test accuracy, mean class accuracy and per-class
accuracy, the selected step, the accuracy on the job's own training shapes, and the code version. Resumable like
pretraining (state in --state-dir); exit 75 after SIGTERM/SIGUSR1 with a checkpoint written. The descriptor row
trains no network (nothing to resume).
"""

from __future__ import annotations

import sys

from ..jobs import finetune as job
from ._cli import arg, run_training_stage


def main(argv: list[str] | None = None) -> int:
    return run_training_stage(
        "finetune_classifier",
        __doc__,
        [arg("--metrics", "output: metrics JSON")],
        job.stage,
        summary=job.summary,
        workers=job.loader_workers,
        argv=argv,
    )


if __name__ == "__main__":
    sys.exit(main())
