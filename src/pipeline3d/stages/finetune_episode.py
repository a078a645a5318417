"""Stage finetune_episode: one N-way K-shot episode (dataset, method, setting, fold) -> metrics.json.

The metrics JSON holds the protocol (all knobs), the episode (setting, way, shot, fold, support and query counts,
query shapes per class), test accuracy, mean class accuracy and per-class accuracy over the episode's N classes,
and the code version; for a setting the dataset cannot fill, only why it was skipped. Resumable like pretraining
(state in --state-dir); exit 75 after SIGTERM/SIGUSR1 with a checkpoint written.
"""

from __future__ import annotations

import sys

from ..jobs import episodes
from ._cli import run_metrics_job


def job(params, files, state_dir, log):
    return episodes.run(params, files, state_dir, log=log)


def summary(metrics: dict) -> str:
    if "test" not in metrics:
        return f"{metrics['setting']} fold {metrics['fold']}: skipped ({metrics.get('skipped')})"
    test = metrics["test"]
    return (f"{metrics['setting']} fold {metrics['fold']}: test accuracy {test['accuracy']:.4f} (mean class accuracy "
            f"{test['mean_class_accuracy']:.4f}) over {test['n']} query shapes")


def main(argv: list[str] | None = None) -> int:
    return run_metrics_job("finetune_episode", __doc__, job, summary, argv)


if __name__ == "__main__":
    sys.exit(main())
