"""Lines of code per layer of src/pipeline3d at git revisions, as a Markdown table (BENCHMARKS.md, issue 14).

A layer is a package folder (io, data, tokens, ...) or ``top-level`` for the modules directly in src/pipeline3d;
``workflow`` counts the Snakefile and workflow/rules. Lines are physical lines of tracked .py / .smk files.

    .venv/bin/python benchmarks/layer_lines.py 08869bd HEAD
"""

from __future__ import annotations

import argparse
import subprocess
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "src/pipeline3d/"


def git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, check=True, capture_output=True, text=True).stdout


def layer_of(path: str) -> str | None:
    if path == "Snakefile" or path.startswith("workflow/rules/"):
        return "workflow"
    if not path.startswith(PACKAGE) or not path.endswith(".py"):
        return None
    rest = path[len(PACKAGE) :]
    return rest.split("/", 1)[0] if "/" in rest else "top-level"


def lines_per_layer(rev: str) -> tuple[Counter, Counter]:
    """(lines, files) per layer at ``rev``."""
    lines, files = Counter(), Counter()
    for path in git("ls-tree", "-r", "--name-only", rev).splitlines():
        layer = layer_of(path)
        if layer is not None:
            lines[layer] += git("show", f"{rev}:{path}").count("\n")
            files[layer] += 1
    return lines, files


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("revs", nargs="+", help="git revisions, e.g. 08869bd HEAD")
    args = ap.parse_args(argv)
    counts = {rev: lines_per_layer(rev) for rev in args.revs}
    layers = sorted(set().union(*(c[0] for c in counts.values())))
    print("| layer | " + " | ".join(f"{rev} lines (files)" for rev in args.revs) + " |")
    print("|---|" + "---:|" * len(args.revs))
    for layer in [*layers, "total"]:
        cells = []
        for rev in args.revs:
            lines, files = counts[rev]
            n, f = (sum(lines.values()), sum(files.values())) if layer == "total" else (lines[layer], files[layer])
            cells.append(f"{n} ({f})")
        print(f"| {layer} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
