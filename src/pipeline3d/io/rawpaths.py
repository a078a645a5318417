"""A dataset entry's raw inputs (paths only) and the check that they exist before anything runs.

Kept free of heavy imports: the Snakefile calls it on every parse.
"""

from __future__ import annotations

import os
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

from .h5clouds import scanobjectnn_files


def raw_paths(ds: Mapping[str, Any]) -> list[str]:
    """A dataset entry's ``path`` as a list (the config allows one path or a list of them)."""
    return [ds["path"]] if isinstance(ds["path"], str) else list(ds["path"])


def raw_inputs(ds: Mapping[str, Any]) -> list[str]:
    """The files (or folders) ingest reads: the h5 pair of the variant for ScanObjectNN, else each ``path``."""
    if ds["kind"] == "pointcloud" and ds["format"] == "scanobjectnn":
        return [f for root in raw_paths(ds) for f in scanobjectnn_files(root, ds["variant"])]
    return [str(Path(root)) for root in raw_paths(ds)]


def raw_input_problems(datasets: Mapping[str, Mapping[str, Any]], produced: Collection[str] = ()) -> list[str]:
    """One line per raw input that is missing or unreadable, naming the dataset and the path.

    ``produced``: paths the workflow itself writes (the demo generator's outputs), which need not exist yet.
    """

    def within(path: str, root: str) -> bool:
        path, root = os.path.normpath(path), os.path.normpath(root)
        return path == root or path.startswith(root + os.sep)

    def made_here(path: str) -> bool:  # the workflow writes it, or writes something inside it
        return any(within(p, path) for p in produced)

    problems = []
    for name, ds in datasets.items():
        roots = [r for r in raw_paths(ds) if not made_here(r)]
        missing_roots = [r for r in roots if not os.path.exists(r)]
        problems += [f"datasets.{name}.path: {r} does not exist" for r in missing_roots]
        for path in raw_inputs(ds):
            if made_here(path) or any(within(path, r) for r in missing_roots):
                continue
            if not os.path.exists(path):  # a file a format expects inside an existing folder
                problems.append(
                    f"datasets.{name}.path: {path} does not exist (expected in a {ds['format']} "
                    f"folder of variant {ds.get('variant')})"
                )
            elif not os.access(path, os.R_OK) or (os.path.isdir(path) and not os.access(path, os.X_OK)):
                problems.append(f"datasets.{name}.path: {path} is not readable")
    return problems
