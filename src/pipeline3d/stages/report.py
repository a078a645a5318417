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

from ..jobs import report as job
from ._cli import arg, run_stage

OPTIONS = [
    arg("--inputs", "JSON: input name -> list of metrics JSON paths"),
    arg("--out-dir", "tables and summary.md (results/tables)"),
    arg("--plots-dir", "PNG plots (results/plots)"),
    arg("--threads", "unused (plotting is single-threaded)", type=int, default=1),
]


def body(params: dict, args, log) -> None:
    job.run(params, json.loads(args.inputs), args.out_dir, args.plots_dir, log)


def main(argv: list[str] | None = None) -> int:
    return run_stage("report", __doc__, OPTIONS, body, argv=argv)


if __name__ == "__main__":
    sys.exit(main())
