"""Logging set-up shared by the stages (logging only; print is block-buffered under redirection)."""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

from . import __version__
from .config import cfg_hash

FORMAT = "%(asctime)s | %(levelname)s | %(name)s | %(message)s"


def setup_logging(level: int = logging.INFO) -> None:
    logging.basicConfig(level=level, format=FORMAT, stream=sys.stderr, force=True)


# The checkout this code runs from (an editable install); in an installed package git finds nothing: "unknown".
CHECKOUT = Path(__file__).resolve().parents[2]


def git_describe() -> str:
    try:
        out = subprocess.run(
            ["git", "describe", "--always", "--dirty", "--tags"],
            cwd=CHECKOUT,
            capture_output=True,
            text=True,
            timeout=10,
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


# A stage's lifecycle in its log (read back by pipeline3d.status): the header names the process (host, pid, SLURM job
# id or "-"), the last line of a stage that returned says how it ended. A stage killed by a signal (time limit,
# out of memory, SIGKILL) writes no end line: a start without an end is either still running or was killed.
START_LINE = "stage %s | cfg_hash %s | pipeline3d %s | git %s"
PROCESS_LINE = "host %s | pid %d | slurm_job %s | python %s"
END_LINE = "stage %s end | exit %s"
_unended: dict[str, logging.Logger] = {}  # stages of this process that logged a start and no end yet
_atexit_registered = False


def log_stage_start(logger: logging.Logger, stage: str, params_json: str, **paths) -> None:
    """The first lines of every stage log: what ran, with which config, on what (host, pid, SLURM job)."""
    global _atexit_registered
    logger.info(START_LINE, stage, cfg_hash(params_json), __version__, git_describe())
    logger.info("config %s", params_json)
    logger.info(PROCESS_LINE, platform.node(), os.getpid(), slurm_job_id() or "-", platform.python_version())
    for name, value in paths.items():
        logger.info("%s: %s", name, value)
    _unended[stage] = logger
    if not _atexit_registered and _is_stage_program():
        atexit.register(_end_at_exit)
        _atexit_registered = True


def log_stage_end(logger: logging.Logger, stage: str, code: int | None) -> int:
    """The last line of a stage log: its exit code (None counts as 0). Returns the code, so that a stage's
    ``main`` can end in ``return log_stage_end(log, stage, code)``."""
    code = 0 if code is None else int(code)
    logger.info(END_LINE, stage, code)
    _unended.pop(stage, None)
    return code


def slurm_job_id() -> str | None:
    """This process's SLURM job as ``squeue`` names it: ``<id>``, or ``<array id>_<task>`` in an array job."""
    env = os.environ
    if env.get("SLURM_ARRAY_JOB_ID") and env.get("SLURM_ARRAY_TASK_ID"):
        return f"{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"
    return env.get("SLURM_JOB_ID") or None


def _is_stage_program() -> bool:
    """This process runs a pipeline3d module as its program (``python -m pipeline3d.stages.x``), not a test or a
    notebook that calls a stage's ``main`` in-process (an exit hook there would write into someone else's stderr)."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    return bool(spec and str(spec.name).startswith("pipeline3d."))


def _end_at_exit() -> None:
    """Safety net run at interpreter exit for a stage whose code path did not call log_stage_end: an uncaught
    exception ends with ``exit 1``; otherwise the code is not visible here (``sys.exit(n)``): ``exit ?``."""
    crashed = getattr(sys, "last_value", None) is not None
    for stage, logger in list(_unended.items()):
        with contextlib.suppress(Exception):  # never fail an exit over a log line
            logger.info(END_LINE, stage, 1 if crashed else "?")
    _unended.clear()


class Progress:
    """A log line every ``every`` items or every ``seconds`` seconds, whichever comes first."""

    def __init__(self, logger: logging.Logger, total: int, what: str, every: int = 1000, seconds: float = 60.0):
        self.logger, self.total, self.what = logger, total, what
        self.every, self.seconds = every, seconds
        self.start = self.last = time.monotonic()
        self.done = 0

    def step(self, n: int = 1) -> None:
        self.done += n
        now = time.monotonic()
        if self.done % self.every == 0 or now - self.last >= self.seconds or self.done == self.total:
            rate = self.done / max(now - self.start, 1e-9)
            eta = (self.total - self.done) / max(rate, 1e-9)
            self.logger.info("%s %d/%d | %.2f/s | eta %.0fs", self.what, self.done, self.total, rate, eta)
            self.last = now


def dumps(obj) -> str:
    return json.dumps(obj, sort_keys=True)
