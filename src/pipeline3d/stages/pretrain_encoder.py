"""Stage pretrain_encoder: one pretraining method (mixed corpus, objective) -> encoder.safetensors + encoder.json.

Resumable: state lives in --state-dir (undeclared in the rule, so Snakemake keeps it); a rerun continues from the
last checkpoint when the config is unchanged. SIGTERM/SIGUSR1 (SLURM preemption or time limit) checkpoint and exit
with 75, and the rerun resumes. Under torchrun/srun every rank runs this module; rank 0 writes the outputs.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

from ..io.atomic import atomic_path
from ..jobs import pretrain
from ._cli import set_compute_threads, start, training_parser


def main(argv: list[str] | None = None) -> int:
    p = training_parser("pretrain_encoder", __doc__)
    p.add_argument("--weights", required=True)
    p.add_argument("--encoder-json", required=True)
    p.add_argument("--train-log", required=True)
    args = p.parse_args(argv)
    params, log = start("pretrain_encoder", args)
    set_compute_threads(args.threads, pretrain.method_train_knobs(params)["num_workers"])
    state = Path(args.state_dir)
    metrics = state / "train_log.jsonl"
    try:
        result = pretrain.run(params, json.loads(args.inputs), state, weights=args.weights,
                              encoder_json=args.encoder_json, metrics_path=metrics, log=log)
    except ValueError as exc:
        log.error("%s", exc)
        return 1
    if result.interrupted:
        log.warning("interrupted at step %d; checkpoint saved, rerun to resume", result.steps)
        return result.exit_code
    if result.is_main:
        with atomic_path(args.train_log) as tmp:
            shutil.copyfile(metrics, tmp)
        log.info("done: %d steps, final loss %.5f", result.steps, result.final_loss or float("nan"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
