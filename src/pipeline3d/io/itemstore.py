"""The item store: validated raw payloads written by ingest, read by cache and fingerprint jobs.

One HDF5 file per dataset. Items are stored as ragged arrays (concatenated values + offsets), in manifest row
order, so a cache job reads exactly the meshes of its shard without re-parsing OBJ files or re-reading a
compressed archive. Layout (attrs: format, version, dataset, kind):

- ``shape_id``                        (N,) utf-8 strings, the manifest's ids in row order
- mesh:        ``vertices`` (ΣV,3) float64, ``faces`` (ΣF,3) int64, ``vertex_offsets``/``face_offsets`` (N+1,)
- pointcloud:  ``points`` (ΣP,3) float32, ``point_offsets`` (N+1,)
- image:       ``image_bytes`` (ΣB,) uint8 (the PNG/JPEG file), ``byte_offsets`` (N+1,)

Every chunk and the file's metadata carry checksums (``pipeline3d.io.h5integrity``); a read that fails one raises
an ``IntegrityError`` naming the file, the item and the field.
"""

from __future__ import annotations

import os
from pathlib import Path

import h5py
import numpy as np

from .atomic import atomic_path
from .h5integrity import CHECKSUM, LIBVER, IntegrityError, check_attrs, ids_digest, read_ids, reading, seal_attrs

FORMAT = "pipeline3d-items"
VERSION = 1

# kind -> ragged fields: (dataset name, offsets name, trailing shape, dtype)
FIELDS = {
    "mesh": [("vertices", "vertex_offsets", (3,), np.float64), ("faces", "face_offsets", (3,), np.int64)],
    "pointcloud": [("points", "point_offsets", (3,), np.float32)],
    "image": [("image_bytes", "byte_offsets", (), np.uint8)],
}


class ItemStoreWriter:
    """Append items one by one; the file appears (atomically) only when the ``with`` block ends cleanly."""

    def __init__(self, path: str | os.PathLike, dataset: str, kind: str):
        if kind not in FIELDS:
            raise ValueError(f"unknown item kind {kind!r}")
        self.path, self.dataset, self.kind = Path(path), dataset, kind
        self._ctx = None
        self._ids: list[str] = []
        self._buffers = {name: [] for name, *_ in FIELDS[kind]}
        self._counts = {name: [0] for name, *_ in FIELDS[kind]}
        self._buffered_bytes = 0  # a running total: summing every buffer on each add is quadratic
        self._h5 = None

    def __enter__(self) -> "ItemStoreWriter":
        self._ctx = atomic_path(self.path)
        tmp = self._ctx.__enter__()
        self._h5 = h5py.File(tmp, "w", libver=LIBVER)
        for name, _, trailing, dtype in FIELDS[self.kind]:
            self._h5.create_dataset(
                name,
                shape=(0, *trailing),
                maxshape=(None, *trailing),
                dtype=dtype,
                chunks=(65536, *trailing) if trailing else (1 << 20,),
                **CHECKSUM,
            )
        return self

    def add(self, shape_id: str, **arrays: np.ndarray) -> None:
        """Add one item, e.g. ``add(id, vertices=V, faces=F)``; fields must match the store's kind."""
        expected = {name for name, *_ in FIELDS[self.kind]}
        if set(arrays) != expected:
            raise ValueError(f"{self.kind} item needs fields {sorted(expected)}, got {sorted(arrays)}")
        for name, _, trailing, dtype in FIELDS[self.kind]:
            arr = np.asarray(arrays[name], dtype=dtype).reshape((-1, *trailing))
            self._buffers[name].append(arr)
            self._counts[name].append(self._counts[name][-1] + len(arr))
            self._buffered_bytes += arr.nbytes
        self._ids.append(shape_id)
        if self._buffered_bytes > 64 << 20:
            self._flush()

    def _flush(self) -> None:
        for name, bufs in self._buffers.items():
            if not bufs:
                continue
            data = np.concatenate(bufs)
            ds = self._h5[name]
            start = ds.shape[0]
            ds.resize(start + len(data), axis=0)
            ds[start:] = data
            bufs.clear()
        self._buffered_bytes = 0

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None:
                self._flush()
                for name, offsets, *_ in FIELDS[self.kind]:
                    counts = np.asarray(self._counts[name], dtype=np.int64)
                    self._h5.create_dataset(offsets, data=counts, chunks=(min(len(counts), 1 << 16),), **CHECKSUM)
                self._h5.create_dataset(
                    "shape_id", data=np.array(self._ids, dtype=object), dtype=h5py.string_dtype("utf-8")
                )
                self._h5.attrs.update(
                    format=FORMAT,
                    version=VERSION,
                    dataset=self.dataset,
                    kind=self.kind,
                    n_items=len(self._ids),
                    ids_sha256=ids_digest(self._ids),
                )
                seal_attrs(self._h5)
        finally:
            self._h5.close()
            self._ctx.__exit__(exc_type, exc, tb)


class ItemStore:
    """Random access to the items of one dataset."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._h5 = h5py.File(self.path, "r")
        try:
            check_attrs(self._h5, self.path)
        except IntegrityError:
            self._h5.close()
            raise
        attrs = self._h5.attrs
        if attrs.get("format") != FORMAT or int(attrs.get("version", -1)) != VERSION:
            self._h5.close()
            raise ValueError(f"{self.path}: not a pipeline3d item store (version {VERSION})")
        self.kind = str(attrs["kind"])
        self.dataset = str(attrs["dataset"])
        try:
            self.shape_ids = read_ids(self._h5, self.path)
            with reading(self.path, "the item offsets"):
                self._offsets = {name: self._h5[off][:] for name, off, *_ in FIELDS[self.kind]}
        except IntegrityError:
            self._h5.close()
            raise
        self._row = {sid: i for i, sid in enumerate(self.shape_ids)}

    def __len__(self) -> int:
        return len(self.shape_ids)

    def row_of(self, shape_id: str) -> int:
        return self._row[shape_id]

    def _field(self, name: str, row: int) -> np.ndarray:
        off = self._offsets[name]
        with reading(self.path, f"item {self.shape_ids[row]} (row {row}): field {name}"):
            return self._h5[name][off[row] : off[row + 1]]

    def mesh(self, row: int) -> tuple[np.ndarray, np.ndarray]:
        """(vertices float64 (V,3), faces int64 (F,3)) of item ``row``."""
        return self._field("vertices", row), self._field("faces", row)

    def points(self, row: int) -> np.ndarray:
        return self._field("points", row)

    def image_bytes(self, row: int) -> bytes:
        return self._field("image_bytes", row).tobytes()

    def close(self) -> None:
        self._h5.close()

    def __enter__(self) -> "ItemStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
