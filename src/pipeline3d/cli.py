"""The `pipeline3d` command: small maintenance tools around the workflow.

  pipeline3d check-config config/config.yaml     validate a config (errors name the key)
  pipeline3d check-cache results/cache/<ds> [--fix]   deep-validate cache shards; --fix moves bad ones aside
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _check_config(args: argparse.Namespace) -> int:
    from .config import ConfigError, load

    try:
        load(args.path)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 1
    print(f"{args.path}: ok")
    return 0


def _check_cache(args: argparse.Namespace) -> int:
    from .io.shards import quarantine, validate_shard

    shards = sorted(Path(args.cache_dir).glob("shard-*.h5"))
    if not shards:
        print(f"{args.cache_dir}: no shards found", file=sys.stderr)
        return 1
    bad = 0
    for path in shards:
        reason = validate_shard(path, dataset=Path(args.cache_dir).name, shard=int(path.stem.split("-")[1]),
                                deep=True)
        if reason is None:
            print(f"{path}: ok")
            continue
        bad += 1
        if args.fix:
            print(f"{path}: INVALID ({reason}); moved to {quarantine(path)}")
        else:
            print(f"{path}: INVALID ({reason})")
    return 1 if bad and not args.fix else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pipeline3d", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("check-config", help="validate a config file")
    p.add_argument("path")
    p.set_defaults(func=_check_config)
    p = sub.add_parser("check-cache", help="deep-validate the shards of one cache folder")
    p.add_argument("cache_dir")
    p.add_argument("--fix", action="store_true", help="move invalid shards aside so the workflow rebuilds them")
    p.set_defaults(func=_check_cache)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
