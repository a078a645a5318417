"""Stage tabulate_episodes: every episode metrics JSON of a dataset -> the N-way K-shot table (markdown + CSV)."""

from __future__ import annotations

import sys

from ..io.atomic import write_text
from ..report.episodes_table import load_rows, query_target, summarize, to_csv, to_markdown
from ._cli import parser, start


def main(argv: list[str] | None = None) -> int:
    p = parser("tabulate_episodes", __doc__)
    p.add_argument("--metrics", nargs="+", required=True)
    p.add_argument("--table", required=True)
    p.add_argument("--csv", required=True)
    args = p.parse_args(argv)
    params, log = start("tabulate_episodes", args)
    try:
        rows = load_rows(args.metrics)
        table = summarize(rows, params["methods"])  # the config's method order
    except ValueError as exc:
        log.error("%s", exc)
        return 1
    title = f"N-way K-shot episodes: {params['dataset']}"
    write_text(args.table, to_markdown(table, title, query_target(rows)))
    write_text(args.csv, to_csv(table))
    log.info("%d episode jobs -> %d table rows (%d skipped)", len(rows), len(table),
             int((table["skipped"] != "").sum()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
