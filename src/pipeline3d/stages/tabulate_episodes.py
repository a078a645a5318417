"""Stage tabulate_episodes: every episode metrics JSON of a dataset -> the N-way K-shot table (markdown + CSV)."""

from __future__ import annotations

import sys

from ..io.atomic import write_text
from ..report.episodes_table import load_rows, query_target, summarize, to_csv, to_markdown
from ._cli import arg, run_stage

STAGE = "tabulate_episodes"
OPTIONS = [
    arg("--metrics", "every episode metrics JSON of the dataset", nargs="+"),
    arg("--table", "output Markdown table"),
    arg("--csv", "output CSV"),
]


def tabulate(params: dict, args, log) -> None:
    rows = load_rows(args.metrics)
    table = summarize(rows, params["methods"])  # the config's method order
    title = f"N-way K-shot episodes: {params['dataset']}"
    write_text(args.table, to_markdown(table, title, query_target(rows)))
    write_text(args.csv, to_csv(table))
    log.info(
        "%d episode jobs -> %d table rows (%d skipped)", len(rows), len(table), int((table["skipped"] != "").sum())
    )


def main(argv: list[str] | None = None) -> int:
    return run_stage(STAGE, __doc__, OPTIONS, tabulate, argv=argv)


if __name__ == "__main__":
    sys.exit(main())
