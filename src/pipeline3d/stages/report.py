"""Stage report: every metrics JSON -> the paper tables (markdown, CSV, LaTeX), summary.md and the plots.

Outputs, always all written (a section without inputs says "no results"): <out-dir>/{fewshot,ucpr,cpac,retrieval,
text3d}.{md,csv,tex}, <out-dir>/summary.md, <out-dir>/metrics.jsonl (every metrics JSON of the run, one line each,
without its wall-clock "seconds"), <plots-dir>/{fewshot_accuracy,recall_at_k}.png. Rows are sorted by a
fixed key and nothing time-dependent is written, so the same metrics give byte-identical files (see
pipeline3d.report.build for the conventions). A malformed metrics JSON is an error naming the file (exit 1).

params: {"datasets", "finetune": {"datasets", "methods", "k", "seeds"}, "title", "stage_version"};
inputs: {"finetune", "ucpr", "cpac", "metric_heads", "retrieval_heads", "align"}: lists of metrics JSON paths.
"""

from __future__ import annotations

import json
import sys

from ..io.atomic import write_text
from ..report import build
from ..report.collect import read_metrics
from ._cli import parser, start


def metrics_lines(inputs: dict) -> str:
    """One JSON line per metrics file (kind, file, content), sorted; timings dropped so reruns give the same bytes."""
    lines = []
    for kind in sorted(inputs):
        for path in sorted(inputs[kind] or []):
            content = {k: v for k, v in read_metrics(path).items() if k != "seconds"}
            lines.append(json.dumps({"kind": kind, "file": path, "metrics": content}, sort_keys=True))
    return "".join(line + "\n" for line in lines)


def main(argv: list[str] | None = None) -> int:
    p = parser("report", __doc__)
    p.add_argument("--inputs", required=True, help="JSON: input name -> list of metrics JSON paths")
    p.add_argument("--out-dir", required=True, help="tables and summary.md (results/tables)")
    p.add_argument("--plots-dir", required=True, help="PNG plots (results/plots)")
    p.add_argument("--threads", type=int, default=1, help="unused (plotting is single-threaded)")
    args = p.parse_args(argv)
    params, log = start("report", args)
    try:
        inputs = json.loads(args.inputs)
        if not isinstance(inputs, dict):
            raise ValueError(f"--inputs must be a JSON object, got {type(inputs).__name__}")
        report = build.build(inputs, params)
        lines = metrics_lines(inputs)
    except json.JSONDecodeError as exc:
        log.error("--inputs is not valid JSON: %s", exc)
        return 1
    except ValueError as exc:
        log.error("%s", exc)
        return 1
    for name, n in report.counts.items():
        log.info("inputs %-15s %d file(s)", name, n)
    for name, table in report.tables.items():
        log.info("table %-10s %d row(s)", name, table.n_rows)
    written = build.write(report, str(params.get("title") or "pipeline3d results"), args.out_dir, args.plots_dir)
    write_text(f"{args.out_dir}/metrics.jsonl", lines)
    log.info("wrote %d files to %s and %s (+ metrics.jsonl, %d records)", len(written), args.out_dir, args.plots_dir,
             lines.count("\n"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
