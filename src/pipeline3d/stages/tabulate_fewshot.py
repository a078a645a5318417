"""Stage tabulate_fewshot: every fine-tune metrics JSON of a dataset -> the few-shot table (markdown + CSV)."""

from __future__ import annotations

import sys

from ..io.atomic import write_text
from ..report.fewshot_table import load_rows, summarize, to_csv, to_markdown
from ._cli import arg, run_stage

STAGE = "tabulate_fewshot"
OPTIONS = [
    arg("--metrics", "every fine-tune metrics JSON of the dataset", nargs="+"),
    arg("--table", "output Markdown table"),
    arg("--csv", "output CSV"),
]


def tabulate(params: dict, args, log) -> None:
    rows = load_rows(args.metrics)
    table = summarize(rows, params["methods"])  # the config's method order
    write_text(args.table, to_markdown(table, f"Few-shot classification: {params['dataset']}"))
    write_text(args.csv, to_csv(table))
    log.info("%d jobs -> %d table rows", len(rows), len(table))


def main(argv: list[str] | None = None) -> int:
    return run_stage(STAGE, __doc__, OPTIONS, tabulate, errors=(), argv=argv)


if __name__ == "__main__":
    sys.exit(main())
