"""Generate the demo data set (meshes, partial scans, depth images) procedurally from the seed; no downloads."""

from __future__ import annotations

import sys
import time

from ..data.demo import STAGE, DemoConfig, write_demo
from ._cli import parser, start


def main(argv: list[str] | None = None) -> int:
    p = parser(STAGE, __doc__)
    p.add_argument("--meshes", required=True, help="output .tar.gz in ShapeNetCore.v2 layout")
    p.add_argument("--scans-train", required=True, help="output ScanObjectNN-style training h5")
    p.add_argument("--scans-test", required=True, help="output ScanObjectNN-style test h5")
    p.add_argument("--images", required=True, help="output tar of <key>.png + <key>.json depth views")
    args = p.parse_args(argv)
    params, logger = start(STAGE, args)
    try:
        cfg = DemoConfig.from_params(params)
    except ValueError as exc:
        logger.error("%s", exc)
        return 1
    began = time.monotonic()
    counts = write_demo(cfg, args.meshes, args.scans_train, args.scans_test, args.images, logger)
    logger.info("done in %.1fs | %s", time.monotonic() - began,
                " | ".join(f"{key} {value}" for key, value in counts.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
