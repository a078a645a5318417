"""Stage submit_text3d: rank the test split with the best K-fold text-3D alignment.

Picks the fold whose model has the best validation mean R@5 (ties: the lowest fold), rebuilds it (base text tower +
its saved unfrozen weights + projection) and writes two rankings of the test split (ttv split "test"):
text->mesh (query_id, query_text, rank_1..rank_k shape ids) and mesh->text (query_id = shape id, rank_1..rank_k
caption ids), k = min(10, gallery size), plus test Recall@1/3/5/10 both ways in metrics.json.
"""

from __future__ import annotations

import json
import sys
import time

from ..io.atomic import atomic_path, write_json
from ..jobs import submit_text3d
from ..log import git_describe
from ._cli import arg, run_stage

STAGE = "submit_text3d"
OPTIONS = [arg("--inputs", "JSON: the rule's named inputs (name -> path or paths)"),
           arg("--text2mesh", "text->mesh ranking (.csv)"), arg("--mesh2text", "mesh->text ranking (.csv)"),
           arg("--metrics", "test metrics (.json)")]


def submit(params: dict, args, log) -> None:
    started = time.time()
    result = submit_text3d.submit(params, json.loads(args.inputs), log=log)
    for frame, path in ((result.text2mesh, args.text2mesh), (result.mesh2text, args.mesh2text)):
        with atomic_path(path) as tmp:
            frame.to_csv(tmp, index=False, lineterminator="\n")
    metrics = result.metrics | {"protocol": params, "git": git_describe(), "seconds": round(time.time() - started, 1)}
    write_json(args.metrics, metrics)
    test = metrics["test"]
    log.info("fold %d | test t2m R@1/5/10 %.4f/%.4f/%.4f | m2t %.4f/%.4f/%.4f | %d captions x %d shapes",
             metrics["fold"], test["t2m"]["R@1"], test["t2m"]["R@5"], test["t2m"]["R@10"], test["m2t"]["R@1"],
             test["m2t"]["R@5"], test["m2t"]["R@10"], metrics["test_captions"], metrics["test_shapes"])


def main(argv: list[str] | None = None) -> int:
    return run_stage(STAGE, __doc__, OPTIONS, submit, threads="torch", argv=argv)


if __name__ == "__main__":
    sys.exit(main())
