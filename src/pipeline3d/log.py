"""Logging set-up shared by the stages (logging only; print is block-buffered under redirection)."""

from __future__ import annotations

import json
import logging
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
        out = subprocess.run(["git", "describe", "--always", "--dirty", "--tags"], cwd=CHECKOUT,
                             capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def log_stage_start(logger: logging.Logger, stage: str, params_json: str, **paths) -> None:
    """The first lines of every stage log: what ran, with which config, on what."""
    logger.info("stage %s | cfg_hash %s | pipeline3d %s | git %s", stage, cfg_hash(params_json), __version__,
                git_describe())
    logger.info("config %s", params_json)
    logger.info("host %s | python %s", platform.node(), platform.python_version())
    for name, value in paths.items():
        logger.info("%s: %s", name, value)


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
