"""Integrity of the HDF5 files the pipeline writes and reads back (cache shards, unpaired stores, item stores).

Two HDF5 features, chosen over a sha256 per row because they cost nothing extra on the read path (measured in
BENCHMARKS.md, bench_tokens) and are checked by HDF5 itself on every read:

- ``fletcher32`` on every chunked dataset: each chunk carries a Fletcher-32 checksum, verified whenever the chunk is
  read; a flipped byte anywhere in array data fails the read.
- ``libver=LIBVER`` on write: version-2 object headers, B-trees and superblock, whose checksums cover the file's
  metadata, attributes included (a flipped byte in a shard's profile or row count fails the open).

Two parts of a file no HDF5 checksum covers get our own sha256, written by the writer and compared by readers:
the variable-length ``shape_id`` strings (a global heap; ``ids_sha256``) and the attributes once there are more than
eight (HDF5 then keeps them in a fractal heap whose blocks carry no checksum; ``attrs_sha256``, set by
``seal_attrs`` after the last attribute is written). A sweep of single-byte flips over a shard is in
tests/unit/test_fault_injection.py. HDF5 reports a failed checksum as a bare ``OSError``; ``reading`` turns
it into an ``IntegrityError`` naming the file, the shape and the array.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from pathlib import Path
from typing import Iterable, Iterator

import h5py

from .integrity import IntegrityError

LIBVER = ("v110", "latest")
READ_ERRORS = (OSError, RuntimeError)  # h5py raises either for a failed check, depending on where it failed
CHECKSUM = {"fletcher32": True}


def ids_digest(ids: Iterable[str]) -> str:
    digest = hashlib.sha256()
    for sid in ids:
        digest.update(sid.encode("utf-8") + b"\n")
    return digest.hexdigest()


def attrs_digest(attrs) -> str:
    """sha256 of every attribute but ``attrs_sha256`` itself, values normalised to JSON (numpy scalars included)."""

    def plain(value):
        if isinstance(value, bytes):
            return value.decode("utf-8", "surrogateescape")
        if hasattr(value, "tolist"):  # numpy scalars and arrays
            return value.tolist()
        return value

    values = {key: plain(attrs[key]) for key in attrs if key != "attrs_sha256"}
    return hashlib.sha256(json.dumps(values, sort_keys=True, default=str).encode()).hexdigest()


def seal_attrs(h5: h5py.File) -> None:
    """Record the digest of the file's attributes (call after the last attribute is written)."""
    h5.attrs["attrs_sha256"] = attrs_digest(h5.attrs)


def check_attrs(h5: h5py.File, path: Path | str) -> None:
    """Raise ``IntegrityError`` if the attributes differ from the digest the writer sealed (files without one pass)."""
    expected = h5.attrs.get("attrs_sha256")
    if expected is not None and attrs_digest(h5.attrs) != expected:
        raise IntegrityError(
            f"{path}: the file's attributes do not match their checksum (attrs_sha256): the file is damaged"
        )


def read_ids(h5: h5py.File, path: Path | str) -> list[str]:
    """The ``shape_id`` dataset, checked against the ``ids_sha256`` attribute when the file has one."""
    with reading(path, "the shape ids"):
        ids = [s.decode() if isinstance(s, bytes) else str(s) for s in h5["shape_id"][:]]
    expected = h5.attrs.get("ids_sha256")
    if expected is not None and ids_digest(ids) != expected:
        raise IntegrityError(f"{path}: the shape ids do not match their checksum (ids_sha256): the file is damaged")
    return ids


@contextlib.contextmanager
def reading(path: Path | str, what: str) -> Iterator[None]:
    """Turn HDF5's read failures (a failed checksum, a broken filter) into an error naming ``path`` and ``what``."""
    try:
        yield
    except READ_ERRORS as exc:
        raise read_failure(path, what, exc) from exc


def read_failure(path: Path | str, what: str, exc: BaseException) -> IntegrityError:
    return IntegrityError(f"{path}: {what}: stored data fails its checksum or cannot be read ({exc})")


def damaged_datasets(h5: h5py.File, path: Path | str) -> list[str]:
    """Read every dataset of ``h5`` in full, chunk by chunk (so every checksum is verified); one line per failure."""
    problems: list[str] = []

    def visit(name: str, obj) -> None:
        if not isinstance(obj, h5py.Dataset):
            return
        try:
            if obj.chunks is None:
                obj[()]
            else:
                for sel in obj.iter_chunks():
                    obj[sel]
        except (OSError, RuntimeError) as exc:
            problems.append(f"{path}: array {name}: stored data fails its checksum or cannot be read ({exc})")

    try:
        h5.visititems(visit)
    except (OSError, RuntimeError) as exc:
        problems.append(f"{path}: file structure: metadata fails its checksum or cannot be read ({exc})")
    return problems
