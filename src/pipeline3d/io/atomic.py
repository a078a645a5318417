"""Atomic file writes.

A file is written to a temporary name in the same directory and moved into place with ``os.replace`` only after
the writer finished, so a killed job never leaves a file that looks complete. A job killed with SIGKILL cannot
delete its temporary file; the next write of the same output removes it (one writer per output, as Snakemake
schedules them).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Iterator

_UMASK = os.umask(0)
os.umask(_UMASK)


def stale_temps(path: str | os.PathLike) -> list[Path]:
    """Temporary files ``atomic_path`` left beside ``path`` (``.<name>.<random chars>.tmp<suffix>``)."""
    final = Path(path)
    pattern = re.compile(rf"\.{re.escape(final.name)}\.[A-Za-z0-9_]+\.tmp.*")
    if not final.parent.is_dir():
        return []
    return sorted(p for p in final.parent.iterdir() if pattern.fullmatch(p.name))


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it onto ``path``, on error delete it."""
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    for stale in stale_temps(final):  # left by a killed writer of this output
        with contextlib.suppress(FileNotFoundError):
            stale.unlink()
    fd, tmp_name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=f".tmp{suffix}", dir=final.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    # mkstemp creates 0600; give the final file the usual permissions (shared cluster storage).
    os.chmod(tmp, 0o666 & ~_UMASK)
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, final)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | os.PathLike, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, obj) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def write_parquet(path: str | os.PathLike, table, metadata: dict[str, str] | None = None) -> None:
    """Write a pandas DataFrame or pyarrow Table atomically, with optional key-value metadata.

    Written deterministically (no pandas index, fixed row-group size) so the same rows give the same bytes.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not isinstance(table, pa.Table):
        table = pa.Table.from_pandas(table, preserve_index=False)
    if metadata:
        merged = dict(table.schema.metadata or {})
        merged.update({k.encode(): v.encode() for k, v in metadata.items()})
        table = table.replace_schema_metadata(merged)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, row_group_size=65536, write_page_checksum=True)  # read_table verifies
