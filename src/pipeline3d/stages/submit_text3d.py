"""Stage submit_text3d: rank the test split with the best K-fold text-3D alignment.

Picks the fold whose model has the best validation mean R@5 (ties: the lowest fold), rebuilds it (base text tower +
its saved unfrozen weights + projection) and writes two rankings of the test split (ttv split "test"):
text->mesh (query_id, query_text, rank_1..rank_k shape ids) and mesh->text (query_id = shape id, rank_1..rank_k
caption ids), k = min(10, gallery size), plus test Recall@1/3/5/10 both ways in metrics.json.
"""

from __future__ import annotations

import json
import sys

from ..jobs import submit_text3d as job
from ._cli import arg, run_stage

STAGE = "submit_text3d"
OPTIONS = [
    arg("--inputs", "JSON: the rule's named inputs (name -> path or paths)"),
    arg("--text2mesh", "text->mesh ranking (.csv)"),
    arg("--mesh2text", "mesh->text ranking (.csv)"),
    arg("--metrics", "test metrics (.json)"),
]


def body(params: dict, args, log) -> None:
    job.write_submission(params, json.loads(args.inputs), args.text2mesh, args.mesh2text, args.metrics, log)


def main(argv: list[str] | None = None) -> int:
    return run_stage(STAGE, __doc__, OPTIONS, body, threads="torch", argv=argv)


if __name__ == "__main__":
    sys.exit(main())
