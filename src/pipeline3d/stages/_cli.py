"""Shared command-line plumbing for the stage modules."""

from __future__ import annotations

import argparse
import json
import logging
import sys

from ..log import log_stage_end, log_stage_start, setup_logging


def parser(stage: str, doc: str | None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"python -m pipeline3d.stages.{stage}", description=doc)
    p.add_argument("--params", required=True, help="canonical JSON of the stage's config slice (from the rule)")
    return p


def start(stage: str, args: argparse.Namespace) -> tuple[dict, logging.Logger]:
    """Set up logging, log the stage header and return the decoded params."""
    setup_logging()
    logger = logging.getLogger(f"pipeline3d.{stage}")
    try:
        params = json.loads(args.params)
    except json.JSONDecodeError as exc:
        logger.error("--params is not valid JSON: %s", exc)
        sys.exit(2)
    paths = {k: v for k, v in vars(args).items() if k != "params"}
    log_stage_start(logger, stage, args.params, **paths)
    return params, logger


def arg(flag: str, help: str, **kwargs) -> tuple[str, dict]:  # noqa: A002 - argparse's own name
    """One command-line option of a stage (required unless ``default`` or ``required=False`` is given)."""
    kwargs.setdefault("required", "default" not in kwargs)
    return flag, {"help": help, **kwargs}


# How a stage's --threads (the rule's threads) are spent: all on torch's intra-op pool, or one thread for torch
# (byte-identical float results whatever the CPU count) and the rest on DataLoader workers (``args.workers``).
THREAD_POLICIES = {
    "torch": "CPUs of the job (torch threads)",
    "workers": "CPUs of the job: one for torch (byte-identical results), the rest tokenize in workers",
}


def run_stage(
    stage: str,
    doc: str | None,
    options: list[tuple[str, dict]],
    body,
    *,
    errors: tuple[type[BaseException], ...] = (ValueError,),
    error_code: int = 1,
    threads: str | None = None,
    argv: list[str] | None = None,
) -> int:
    """The whole ``main()`` of a stage: parse ``--params`` and ``options`` (``arg(...)`` tuples), set up logging and
    the stage header, then ``body(params, args, log)``, which returns the exit code (None: 0).

    ``threads`` (a ``THREAD_POLICIES`` key) adds ``--threads`` and sets torch's threads by that policy first.

    An expected error (``errors``: bad input, a message naming the file / key / problem) is logged and exits with
    ``error_code``, having written nothing; anything else is a bug and keeps its traceback.
    """
    p = parser(stage, doc)
    if threads is not None:
        options = [*options, arg("--threads", THREAD_POLICIES[threads], type=int, default=1)]
    for flag, kwargs in options:
        p.add_argument(flag, **kwargs)
    args = p.parse_args(argv)
    params, log = start(stage, args)
    if threads is not None:
        args.workers = max(0, args.threads - 1) if threads == "workers" else 0
        set_compute_threads(args.threads, args.workers)
    try:
        code = body(params, args, log)
    except errors as exc:
        log.error("%s", f"missing params/inputs key {exc}" if isinstance(exc, KeyError) else exc)
        code = error_code
    return log_stage_end(log, stage, code)


def training_parser(stage: str, doc: str | None) -> argparse.ArgumentParser:
    """The parser of a training stage: --inputs (the rule's named inputs as JSON), --state-dir, --threads."""
    p = parser(stage, doc)
    p.add_argument("--inputs", required=True, help="JSON: the rule's named inputs (name -> path or paths)")
    p.add_argument("--state-dir", required=True, help="resume state (undeclared in the rule, so it survives)")
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="CPUs of the job (the rule's threads): its DataLoader workers, the rest for torch",
    )
    return p


def set_compute_threads(cpus: int, workers: int) -> int:
    """torch's intra-op threads on a job that holds ``cpus`` CPUs, ``workers`` of them for DataLoader workers (the
    rules ask SLURM for compute threads + workers; under --cores the CPUs may be capped below that)."""
    import torch

    threads = max(1, int(cpus) - int(workers))
    torch.set_num_threads(threads)
    return threads


def run_training_stage(
    stage: str,
    doc: str | None,
    outputs: list[tuple[str, dict]],
    job,
    *,
    summary=None,
    workers=lambda params: 0,
    errors: tuple[type[BaseException], ...] = (ValueError, PermissionError),
    required: tuple[str, ...] = (),
    argv: list[str] | None = None,
) -> int:
    """The whole ``main()`` of a resumable training stage.

    Options: --params, --inputs (JSON), --state-dir, --threads and ``outputs`` (``arg(...)`` tuples; their values
    reach the job as ``out``, a dict keyed by option dest). Torch gets ``threads - workers(params)`` intra-op threads.
    ``job(params, files, state_dir, out, log) -> (metrics | None, result | None)``: the job writes its own artefacts
    (weights, descriptions). Metrics None means the job ends without a metrics JSON: ``result.exit_code`` is the
    exit (75 after SIGTERM/SIGUSR1 with a checkpoint written, logged). Otherwise the metrics get the protocol (the
    params), the code version and the wall time, are written atomically to ``out["metrics"]``, and
    ``summary(metrics)`` is logged. An expected error (``errors``: bad input, named; a backend refusing an array;
    an input named in ``required`` missing from --inputs) is logged and exits 1, the metrics unwritten.
    """
    import time
    from pathlib import Path

    from ..io.atomic import write_json
    from ..jobs.provenance import provenance

    p = training_parser(stage, doc)
    for flag, kwargs in outputs:
        p.add_argument(flag, **kwargs)
    args = p.parse_args(argv)
    params, log = start(stage, args)
    set_compute_threads(args.threads, workers(params))
    out = {dest: getattr(args, dest) for dest in (flag.lstrip("-").replace("-", "_") for flag, _ in outputs)}
    started = time.time()
    try:
        files = json.loads(args.inputs)
        missing = sorted(set(required) - set(files))
        if missing:
            raise ValueError(f"--inputs lacks {missing}")
        metrics, result = job(params, files, Path(args.state_dir), out, log)
    except (*errors, ValueError) as exc:
        log.error("%s", exc)
        return log_stage_end(log, stage, 1)
    if metrics is None:
        if result.interrupted:
            log.warning("interrupted at step %d; checkpoint saved, rerun to resume", result.steps)
        return log_stage_end(log, stage, result.exit_code)
    metrics |= provenance(params, started)
    write_json(out["metrics"], metrics)
    if summary is not None:
        log.info("%s", summary(metrics))
    return log_stage_end(log, stage, 0)
