"""The `pipeline3d` command: small maintenance tools around the workflow.

pipeline3d check-config config/config.yaml     validate a config (errors name the key)
pipeline3d check-cache results/cache/<ds> [--fix]   deep-validate cache shards; --fix moves bad ones aside
pipeline3d verify [results] [--move-aside]    read every output back against its checksums; list the damaged
pipeline3d status [target] [--directory D] [--configfile F] [--profile P] [--json]   jobs per rule by state
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
        reason = validate_shard(path, dataset=Path(args.cache_dir).name, shard=int(path.stem.split("-")[1]), deep=True)
        if reason is None:
            print(f"{path}: ok")
            continue
        bad += 1
        if args.fix:
            print(f"{path}: INVALID ({reason}); moved to {quarantine(path)}")
        else:
            print(f"{path}: INVALID ({reason})")
    return 1 if bad and not args.fix else 0


def _verify(args: argparse.Namespace) -> int:
    from .io.shards import quarantine
    from .verify import verify

    results = Path(args.results)
    if not results.is_dir():
        print(f"{results}: no such results folder", file=sys.stderr)
        return 2
    report = verify(results)
    for path, problem in sorted(report.damaged.items()):
        moved = f" -> moved to {quarantine(path).name}" if args.move_aside else ""
        print(f"DAMAGED {path}: {problem}{moved}")
    print(f"checked {len(report.checked)} files under {results}: {len(report.damaged)} damaged")
    if report.damaged and args.move_aside:
        # Snakemake rebuilds a missing output only when something asks for it: name them all as targets.
        names = " ".join(str(path) for path in sorted(report.damaged))
        print(
            f"rebuild them (and what depends on them) with your usual command plus these targets, e.g.\n"
            f"  snakemake --cores all all {names}"
        )
    return 1 if report.damaged else 0


def _status(args: argparse.Namespace) -> int:
    import json
    import os

    from .status import StatusError, collect, render_table

    try:
        status = collect(args.directory, args.target, configfiles=args.configfile or (), profiles=args.profile or ())
    except StatusError as exc:
        print(exc, file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(status.to_dict(), indent=1))
    else:
        print(render_table(status, colour=sys.stdout.isatty() and "NO_COLOR" not in os.environ))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="pipeline3d", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("check-config", help="validate a config file")
    p.add_argument("path")
    p.set_defaults(func=_check_config)
    p = sub.add_parser("check-cache", help="deep-validate the shards of one cache folder")
    p.add_argument("cache_dir")
    p.add_argument("--fix", action="store_true", help="move invalid shards aside so the workflow rebuilds them")
    p.set_defaults(func=_check_cache)
    p = sub.add_parser("verify", help="read every output of a results tree back against its checksums")
    p.add_argument("results", nargs="?", default="results")
    p.add_argument(
        "--move-aside",
        action="store_true",
        help="rename damaged files to <name>.invalid so the workflow's next run rebuilds them",
    )
    p.set_defaults(func=_verify)
    p = sub.add_parser(
        "status", help="per rule: jobs done / running / queued / failed / pending (see pipeline3d.status)"
    )
    p.add_argument("target", nargs="?", default="all", help="Snakemake target rule or file (default: all)")
    p.add_argument("--directory", "-d", default=".", help="workflow directory (default: the current one)")
    p.add_argument("--configfile", action="append", help="passed to snakemake (repeatable)")
    p.add_argument("--profile", action="append", help="passed to snakemake (repeatable)")
    p.add_argument("--json", action="store_true", help="machine-readable output: counts and every job")
    p.set_defaults(func=_status)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
