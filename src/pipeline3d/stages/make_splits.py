"""Split families of one dataset: ttv, kfold, unpaired, fewshot, qg, episodes (see pipeline3d.data.splits).

Near-duplicate groups from fingerprint_dataset are the unit of assignment everywhere; every random choice is a
seeded hash of a stable id, so the splits do not depend on manifest row order.
"""

from __future__ import annotations

import sys

from ..data import splits
from ._cli import parser, start

STAGE = "make_splits"


def main(argv: list[str] | None = None) -> int:
    p = parser(STAGE, __doc__)
    p.add_argument("--manifest", required=True, help="ingest manifest.parquet")
    p.add_argument("--duplicates", required=True, help="fingerprint duplicates.parquet")
    p.add_argument("--out-dir", required=True, help="results/splits/<dataset>")
    p.add_argument("--families", nargs="+", default=None, choices=splits.FAMILIES,
                   help="which split families to write (default: every family whose keys --params holds)")
    args = p.parse_args(argv)
    params, logger = start(STAGE, args)
    try:
        splits.run(params, args.manifest, args.duplicates, args.out_dir, args.families)
    except (ValueError, OSError) as exc:
        logger.error("%s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
