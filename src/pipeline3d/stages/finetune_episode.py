"""Stage finetune_episode: one N-way K-shot episode (dataset, method, setting, fold) -> metrics.json.

The metrics JSON holds the protocol (all knobs), the episode (setting, way, shot, fold, support and query counts,
query shapes per class), test accuracy, mean class accuracy and per-class accuracy over the episode's N classes,
and the code version; for a setting the dataset cannot fill, only why it was skipped. Resumable like pretraining
(state in --state-dir); exit 75 after SIGTERM/SIGUSR1 with a checkpoint written.
"""

from __future__ import annotations

import sys

from ..jobs import episodes as job
from ..jobs.finetune import loader_workers
from ._cli import arg, run_training_stage


def main(argv: list[str] | None = None) -> int:
    return run_training_stage(
        "finetune_episode",
        __doc__,
        [arg("--metrics", "output: metrics JSON")],
        job.stage,
        summary=job.summary,
        workers=loader_workers,
        argv=argv,
    )


if __name__ == "__main__":
    sys.exit(main())
