"""Parquet tables read back with every page's CRC checked (``write_parquet`` stores one per page)."""

from __future__ import annotations

import os

import pyarrow as pa
import pyarrow.parquet as pq

from .integrity import IntegrityError


def read_table(path: str | os.PathLike, **kwargs) -> pa.Table:
    """``pyarrow.parquet.read_table`` with page checksums verified; a damaged file raises ``IntegrityError``."""
    try:
        return pq.read_table(path, page_checksum_verification=True, **kwargs)
    except FileNotFoundError:
        raise
    except (OSError, pa.ArrowException) as exc:
        raise IntegrityError(f"{path}: parquet table fails its checksum or cannot be read ({exc})") from exc


def read_parquet(path: str | os.PathLike, columns: list[str] | None = None):
    """A pandas DataFrame of ``path`` (pandas' own dtype mapping), page checksums verified."""
    return read_table(path, columns=columns).to_pandas()
