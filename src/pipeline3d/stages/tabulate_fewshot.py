"""Stage tabulate_fewshot: every fine-tune metrics JSON of a dataset -> the few-shot table (markdown + CSV)."""

from __future__ import annotations

import sys

from ..io.atomic import write_text
from ..report.fewshot_table import load_rows, summarize, to_csv, to_markdown
from ._cli import parser, start


def main(argv: list[str] | None = None) -> int:
    p = parser("tabulate_fewshot", __doc__)
    p.add_argument("--metrics", nargs="+", required=True)
    p.add_argument("--table", required=True)
    p.add_argument("--csv", required=True)
    args = p.parse_args(argv)
    params, log = start("tabulate_fewshot", args)
    rows = load_rows(args.metrics)
    table = summarize(rows, params["methods"])  # the config's method order
    write_text(args.table, to_markdown(table, f"Few-shot classification: {params['dataset']}"))
    write_text(args.csv, to_csv(table))
    log.info("%d jobs -> %d table rows", len(rows), len(table))
    return 0


if __name__ == "__main__":
    sys.exit(main())
