"""Perceptual fingerprints of every item and near-duplicate groups (inputs of make_splits).

Mesh and point-cloud datasets are hashed from the cache (depth views from the ray arrays, a rotation-aware
geometry signature from the UDF grid); image datasets from the item store. See pipeline3d.data.fingerprints and
pipeline3d.data.near_duplicates for the hashes and the duplicate rule.
"""

from __future__ import annotations

import sys

from ..jobs import fingerprint_dataset as job
from ._cli import arg, run_stage

STAGE = "fingerprint_dataset"
OPTIONS = [
    arg("--manifest", "ingest manifest.parquet"),
    arg("--cache-dir", "results/cache/<dataset> (index.parquet + shards)"),
    arg("--items-dir", "results/ingest/<dataset> (items.h5, used for images)"),
    arg("--fingerprints", "output fingerprints.parquet"),
    arg("--duplicates", "output duplicates.parquet"),
]


def fingerprint(params: dict, args, log) -> None:
    table = job.run(params, args.manifest, args.cache_dir, args.items_dir, args.fingerprints, args.duplicates)
    log.info("wrote %s and %s (%d items)", args.fingerprints, args.duplicates, len(table))


def main(argv: list[str] | None = None) -> int:
    return run_stage(STAGE, __doc__, OPTIONS, fingerprint, errors=(ValueError, OSError), argv=argv)


if __name__ == "__main__":
    sys.exit(main())
