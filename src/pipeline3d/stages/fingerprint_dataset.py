"""Perceptual fingerprints of every item and near-duplicate groups (inputs of make_splits).

Mesh and point-cloud datasets are hashed from the cache (depth views from the ray arrays, a rotation-aware
geometry signature from the UDF grid); image datasets from the item store. See pipeline3d.data.fingerprints and
pipeline3d.data.near_duplicates for the hashes and the duplicate rule.
"""

from __future__ import annotations

import sys

from ..data import fingerprint_job
from ._cli import parser, start

STAGE = "fingerprint_dataset"


def main(argv: list[str] | None = None) -> int:
    p = parser(STAGE, __doc__)
    p.add_argument("--manifest", required=True, help="ingest manifest.parquet")
    p.add_argument("--cache-dir", required=True, help="results/cache/<dataset> (index.parquet + shards)")
    p.add_argument("--items-dir", required=True, help="results/ingest/<dataset> (items.h5, used for images)")
    p.add_argument("--fingerprints", required=True, help="output fingerprints.parquet")
    p.add_argument("--duplicates", required=True, help="output duplicates.parquet")
    args = p.parse_args(argv)
    params, logger = start(STAGE, args)
    try:
        table = fingerprint_job.run(params, args.manifest, args.cache_dir, args.items_dir, args.fingerprints,
                                    args.duplicates)
    except (ValueError, OSError) as exc:
        logger.error("%s", exc)
        return 1
    logger.info("wrote %s and %s (%d items)", args.fingerprints, args.duplicates, len(table))
    return 0


if __name__ == "__main__":
    sys.exit(main())
