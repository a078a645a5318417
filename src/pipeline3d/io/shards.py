"""Cache shards: HDF5 files of fixed-shape per-shape arrays, one shape per chunk, for random access.

A shard is written to a temporary file and renamed into place only when complete; its attributes carry the
schema version, dataset, shard number and cache profile (with a hash). Every array chunk and the file's metadata
carry checksums (``pipeline3d.io.h5integrity``). ``validate_shard`` detects truncated, incomplete and foreign files
(``deep``: also any stored byte that fails its checksum); readers refuse them. A reader that meets damaged data moves
the shard aside (``.invalid``) and raises an error naming the file, the shape and the array, so the next run of the
workflow rebuilds it.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import h5py
import numpy as np

from ..versions import CACHE_SCHEMA_VERSION
from .atomic import atomic_path
from .cache_schema import ARRAYS, PRIMITIVE_ARRAYS, array_spec, kind_arrays
from .h5integrity import (
    CHECKSUM,
    LIBVER,
    READ_ERRORS,
    IntegrityError,
    check_attrs,
    damaged_datasets,
    ids_digest,
    read_failure,
    read_ids,
    seal_attrs,
)

FORMAT = "pipeline3d-cache"
# cache.compression -> h5py (filter, level). gzip at level 1: as small as lzf's output or smaller and as fast to read
# (BENCHMARKS.md), and zlib's output is a function of its input. lzf's is not: liblzf leaves its hash table
# uninitialised, so a shard written twice from the same arrays can differ in bytes (never in values).
CODECS = {"none": (None, None), "gzip": ("gzip", 1), "lzf": ("lzf", None)}

# Arrays a fast codec barely shrinks (float32 coordinates, normals, exact distances: 0-9% smaller with lzf, measured on
# SHREC'07); the codec only costs time there (~1 ms/shape). Grids, hit flags and the mostly-zero ray answers
# shrink 2-70x.
INCOMPRESSIBLE = frozenset({"pc_xyz", "pc_normal", "pool_xyz", "pool_dist_mesh", "pool_dist_pc", "ray_dir"})


def array_codecs(codec: str) -> dict[str, str]:
    """``cache.compression`` applied to the arrays it shrinks; the others are stored uncompressed."""
    return {key: "none" if key in INCOMPRESSIBLE else codec for key in ARRAYS}


def profile_hash(profile: dict) -> str:
    return hashlib.sha256(json.dumps(profile, sort_keys=True).encode()).hexdigest()[:16]


def shard_of(shape_id: str, n_shards: int) -> int:
    """Shard assignment by a stable hash of the shape id (independent of list position)."""
    return int.from_bytes(hashlib.sha256(shape_id.encode()).digest()[:8], "little") % n_shards


class ShardWriter:
    """Write rows (one shape each) into a new shard; atomic: nothing appears at ``path`` unless closed cleanly."""

    def __init__(
        self,
        path,
        *,
        dataset: str,
        shard: int,
        n_shards: int,
        kind: str,
        profile: dict,
        compression: str | dict[str, str] = "gzip",
        keys: tuple[str, ...] | None = None,
    ):
        self.path = Path(path)
        self.dataset, self.shard, self.n_shards, self.kind, self.profile = dataset, shard, n_shards, kind, profile
        # ``keys`` restricts the shard to a subset (per-primitive stores physically lack the other arrays).
        self.keys = tuple(kind_arrays(kind, profile) if keys is None else keys)
        # one filter for every array, or {array: filter} (arrays it does not name are stored uncompressed)
        self.compression = compression
        codecs = set(compression.values()) if isinstance(compression, dict) else {compression}
        if codecs - set(CODECS):
            raise ValueError(
                f"unknown shard compression {sorted(codecs - set(CODECS))} (cache.compression: one of {sorted(CODECS)})"
            )
        self._ids: list[str] = []
        self.failed: list[tuple[str, str, str]] = []  # shapes that could not be cached: (shape_id, reason, detail)

    def __enter__(self) -> "ShardWriter":
        self._ctx = atomic_path(self.path)
        self._h5 = h5py.File(self._ctx.__enter__(), "w", libver=LIBVER)
        # handles stay open: re-opening a dataset per row costs more than the write itself (~3x with lzf)
        self._datasets = {}
        for key in self.keys:
            shape, dtype = array_spec(key, self.profile)
            codec = self.compression.get(key, "none") if isinstance(self.compression, dict) else self.compression
            compression, level = CODECS[codec]
            self._datasets[key] = self._h5.create_dataset(
                key,
                shape=(0, *shape),
                maxshape=(None, *shape),
                dtype=dtype,
                chunks=(1, *shape),
                compression=compression,
                compression_opts=level,
                **CHECKSUM,
            )
        return self

    def append(self, shape_id: str, arrays: dict[str, np.ndarray]) -> None:
        missing = set(self.keys) - set(arrays)
        extra = set(arrays) - set(self.keys)
        if missing or extra:
            raise ValueError(f"{shape_id}: cache arrays mismatch (missing {sorted(missing)}, extra {sorted(extra)})")
        row = len(self._ids)
        values = {key: np.asarray(arrays[key]) for key in self.keys}
        for key, value in values.items():  # check every array before writing any: no half-written rows
            expected = self._datasets[key].shape[1:]
            if value.shape != expected:
                raise ValueError(f"{shape_id}: array {key} has shape {value.shape}, expected {expected}")
        for key, value in values.items():
            ds = self._datasets[key]
            ds.resize(row + 1, axis=0)
            ds[row] = value.astype(ds.dtype, copy=False)
        self._ids.append(shape_id)

    def record_failure(self, shape_id: str, reason: str, detail: str) -> None:
        """Note a shape of this shard that could not be cached (stored in the ``failed`` attribute)."""
        self.failed.append((shape_id, reason, detail))

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None:
                self._h5.create_dataset(
                    "shape_id", data=np.array(self._ids, dtype=object), dtype=h5py.string_dtype("utf-8")
                )
                self._h5.attrs.update(
                    format=FORMAT,
                    schema_version=CACHE_SCHEMA_VERSION,
                    dataset=self.dataset,
                    shard=self.shard,
                    n_shards=self.n_shards,
                    kind=self.kind,
                    profile=json.dumps(self.profile, sort_keys=True),
                    profile_hash=profile_hash(self.profile),
                    n_rows=len(self._ids),
                    arrays=json.dumps(list(self.keys)),
                    failed=json.dumps(self.failed),
                    ids_sha256=ids_digest(self._ids),
                )
                # Written last: a file without it was never finished.
                self._h5.attrs["complete"] = 1
                seal_attrs(self._h5)
        finally:
            self._h5.close()
            self._ctx.__exit__(exc_type, exc, tb)


def validate_shard(
    path, *, dataset: str | None = None, shard: int | None = None, profile: dict | None = None, deep: bool = False
) -> str | None:
    """Return None if ``path`` is a complete shard matching the expectations, else the reason it is not."""
    path = Path(path)
    if not path.exists():
        return "missing"
    try:
        with h5py.File(path, "r") as h5:
            a = h5.attrs
            check_attrs(h5, path)
            if a.get("format") != FORMAT:
                return "foreign file (not a pipeline3d cache shard)"
            if int(a.get("schema_version", -1)) != CACHE_SCHEMA_VERSION:
                return f"schema version {a.get('schema_version')} != {CACHE_SCHEMA_VERSION}"
            if int(a.get("complete", 0)) != 1:
                return "incomplete (writer did not finish)"
            if dataset is not None and a.get("dataset") != dataset:
                return f"belongs to dataset {a.get('dataset')!r}, not {dataset!r}"
            if shard is not None and int(a.get("shard", -1)) != shard:
                return f"is shard {a.get('shard')}, not {shard}"
            if profile is not None and a.get("profile_hash") != profile_hash(profile):
                return "built with a different cache profile"
            n = int(a["n_rows"])
            keys = json.loads(a["arrays"])
            if h5["shape_id"].shape[0] != n:
                return "row count does not match shape ids"
            for key in keys:
                if key not in h5 or h5[key].shape[0] != n:
                    return f"array {key} missing or has the wrong row count"
            if deep:  # every chunk of every array read back against its checksum, and the ids against theirs
                damaged = damaged_datasets(h5, path)
                if damaged:
                    return "damaged: " + "; ".join(d.split(": ", 1)[1] for d in damaged)
                read_ids(h5, path)
    except IntegrityError as exc:
        return f"damaged: {str(exc).split(': ', 1)[1]}"
    except (OSError, RuntimeError, KeyError, ValueError) as exc:
        return f"unreadable ({type(exc).__name__}: {exc})"
    return None


class ShardReader:
    """Random access to rows of one shard, restricted to the arrays a primitive may see."""

    def __init__(self, path, primitive: str = "all"):
        self.path = Path(path)
        reason = validate_shard(self.path)
        if reason:
            raise ValueError(f"{self.path}: invalid cache shard: {reason}")
        self._h5 = h5py.File(self.path, "r")
        self.attrs = dict(self._h5.attrs)
        self.profile = json.loads(self.attrs["profile"])
        present = json.loads(self.attrs["arrays"])
        self.allowed = tuple(k for k in PRIMITIVE_ARRAYS[primitive] if k in present)
        try:
            self.shape_ids = read_ids(self._h5, self.path)
        except IntegrityError as exc:
            self._h5.close()
            raise self._damaged(exc) from exc
        # handles opened once: an h5py group lookup (~90 us) costs more than reading a row (measured)
        self._datasets = {key: self._h5[key] for key in self.allowed}

    def __len__(self) -> int:
        return len(self.shape_ids)

    def read(self, row: int, keys=None) -> dict[str, np.ndarray]:
        keys = self.allowed if keys is None else tuple(keys)
        for key in keys:
            if key not in self.allowed:
                if key in ARRAYS:
                    raise PermissionError(f"array {key!r} is not visible to this reader ({self.path.name})")
                raise KeyError(f"unknown cache array {key!r}")
        out, key = {}, None
        try:  # one handler per row, and the message built only on a failure: this is the loaders' hot path
            for key in keys:
                out[key] = self._datasets[key][row]
        except READ_ERRORS as exc:
            what = f"shape {self.shape_ids[row]} (row {row}): array {key}"
            raise self._damaged(read_failure(self.path, what, exc)) from exc
        return out

    def _damaged(self, exc: IntegrityError) -> IntegrityError:
        """Move the damaged file aside (never trusted again; the workflow's next run rebuilds it) and say so."""
        try:
            moved = f"moved to {quarantine(self.path)}"
        except FileNotFoundError:  # another reader (a DataLoader worker) got there first
            moved = "moved aside"
        return IntegrityError(f"{exc}; {moved}: run the workflow again to rebuild it")

    def close(self) -> None:
        self._h5.close()

    def __enter__(self) -> "ShardReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def shard_failures(path) -> list[tuple[str, str, str]]:
    """The (shape_id, reason, detail) of the shapes a shard job could not cache (``[]`` if none recorded)."""
    with h5py.File(path, "r") as h5:
        raw = h5.attrs.get("failed", "[]")
    return [tuple(item) for item in json.loads(raw)]


def quarantine(path) -> Path:
    """Move an invalid shard aside (never delete data silently) so the workflow rebuilds it."""
    path = Path(path)
    target = path.with_name(path.name + ".invalid")
    os.replace(path, target)
    return target
