"""Shared command-line plumbing for the stage modules."""

from __future__ import annotations

import argparse
import json
import logging
import sys

from ..log import log_stage_start, setup_logging


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


def training_parser(stage: str, doc: str | None) -> argparse.ArgumentParser:
    """The parser of a training stage: --inputs (the rule's named inputs as JSON), --state-dir, --threads."""
    p = parser(stage, doc)
    p.add_argument("--inputs", required=True, help="JSON: the rule's named inputs (name -> path or paths)")
    p.add_argument("--state-dir", required=True, help="resume state (undeclared in the rule, so it survives)")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (the rule's threads)")
    return p
