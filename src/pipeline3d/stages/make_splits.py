"""Split families of one dataset: ttv, kfold, unpaired, fewshot, qg, episodes (see pipeline3d.data.splits).

Near-duplicate groups from fingerprint_dataset are the unit of assignment everywhere; every random choice is a
seeded hash of a stable id, so the splits do not depend on manifest row order.
"""

from __future__ import annotations

import sys

from ..data import splits
from ._cli import arg, run_stage

STAGE = "make_splits"
OPTIONS = [
    arg("--manifest", "ingest manifest.parquet"),
    arg("--duplicates", "fingerprint duplicates.parquet"),
    arg("--out-dir", "results/splits/<dataset>"),
    arg(
        "--families",
        "which split families to write (default: every family whose keys --params holds)",
        nargs="+",
        default=None,
        choices=splits.FAMILIES,
    ),
]


def make_splits(params: dict, args, log) -> None:
    splits.run(params, args.manifest, args.duplicates, args.out_dir, args.families)


def main(argv: list[str] | None = None) -> int:
    return run_stage(STAGE, __doc__, OPTIONS, make_splits, errors=(ValueError, OSError), argv=argv)


if __name__ == "__main__":
    sys.exit(main())
