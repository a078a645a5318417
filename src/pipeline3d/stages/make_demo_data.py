"""Generate the demo data set (meshes, partial scans, depth images) procedurally from the seed; no downloads."""

from __future__ import annotations

import sys
import time

from ..data.demo import STAGE, DemoConfig, write_demo
from ._cli import arg, run_stage

OPTIONS = [
    arg("--meshes", "output .tar.gz in ShapeNetCore.v2 layout"),
    arg("--scans-train", "output ScanObjectNN-style training h5"),
    arg("--scans-test", "output ScanObjectNN-style test h5"),
    arg("--images", "output tar of <key>.png + <key>.json depth views"),
]


def make_demo(params: dict, args, log) -> None:
    cfg = DemoConfig.from_params(params)  # a ValueError names the bad key
    began = time.monotonic()
    counts = write_demo(cfg, args.meshes, args.scans_train, args.scans_test, args.images, log)
    log.info("done in %.1fs | %s", time.monotonic() - began, " | ".join(f"{k} {v}" for k, v in counts.items()))


def main(argv: list[str] | None = None) -> int:
    return run_stage(STAGE, __doc__, OPTIONS, make_demo, argv=argv)


if __name__ == "__main__":
    sys.exit(main())
