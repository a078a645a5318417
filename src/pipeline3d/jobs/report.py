"""The report job: every metrics JSON -> the paper tables, summary.md, metrics.jsonl and the plots."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from ..io.atomic import write_text
from ..report import build
from ..report.collect import metrics_lines


def run(params: Mapping[str, Any], inputs: Any, out_dir: str, plots_dir: str, log: logging.Logger) -> None:
    """Build every table from ``inputs`` (kind -> metrics JSON paths) and write them; a malformed metrics file is a
    ValueError naming it, raised before anything is written."""
    if not isinstance(inputs, dict):
        raise ValueError(f"--inputs must be a JSON object, got {type(inputs).__name__}")
    report = build.build(inputs, params)
    lines = metrics_lines(inputs)
    for name, n in report.counts.items():
        log.info("inputs %-15s %d file(s)", name, n)
    for name, table in report.tables.items():
        log.info("table %-10s %d row(s)", name, table.n_rows)
    written = build.write(report, str(params.get("title") or "pipeline3d results"), out_dir, plots_dir)
    write_text(f"{out_dir}/metrics.jsonl", lines)
    log.info(
        "wrote %d files to %s and %s (+ metrics.jsonl, %d records)", len(written), out_dir, plots_dir, lines.count("\n")
    )
