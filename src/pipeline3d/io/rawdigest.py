"""A cheap digest of a raw input folder's listing, so editing files inside it reruns ingest.

Snakemake tracks a directory input by the directory itself, not by what is inside, so a file added or replaced
in a subfolder would go unnoticed. Ingest carries this digest in its params instead: any added, removed, resized
or rewritten file (size or mtime) changes it. Only the listing is read (stat calls, no file contents), so it
costs about a second per few hundred thousand files, once per Snakemake invocation.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


def listing_digest(root: str | os.PathLike) -> str:
    """sha256 over the sorted (relative path, size, mtime_ns) of every file below ``root``; "" if not a folder."""
    root = Path(root)
    if not root.is_dir():
        return ""
    entries = []
    stack = [root]
    while stack:
        folder = stack.pop()
        with os.scandir(folder) as it:
            for entry in it:
                if entry.is_dir(follow_symlinks=False):
                    stack.append(Path(entry.path))
                else:
                    st = entry.stat(follow_symlinks=False)
                    rel = os.path.relpath(entry.path, root)
                    entries.append(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}")
    digest = hashlib.sha256()
    for line in sorted(entries):
        digest.update(line.encode("utf-8", "surrogateescape") + b"\n")
    return digest.hexdigest()[:16]
