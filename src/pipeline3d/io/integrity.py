"""The error every reader raises for stored data that fails its checksum (HDF5 stores, parquet tables, weights)."""

from __future__ import annotations


class IntegrityError(ValueError):
    """Stored data that fails its checksum or cannot be read back: the message names the file and what was read."""
