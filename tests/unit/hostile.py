"""Builders for small meshes, images, h5 files and hostile archives used by the ingest tests.

Everything is made in memory or under a test's tmp_path; archives are written with the standard library only,
crafting member headers directly, so no hostile member is ever created on disk.
"""

from __future__ import annotations

import io
import json
import os
import stat
import struct
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# ---------------------------------------------------------------------------------------------------------------
# mesh files


def off_text(vertices, faces) -> bytes:
    lines = ["OFF", f"{len(vertices)} {len(faces)} 0"]
    lines += [" ".join(repr(float(c)) for c in v) for v in vertices]
    lines += [" ".join(str(int(i)) for i in [len(f), *f]) for f in faces]
    return ("\n".join(lines) + "\n").encode()


TETRA_V = [(0.0, 0.0, 0.0), (1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0)]
TETRA_F = [(0, 2, 1), (0, 1, 3), (0, 3, 2), (1, 2, 3)]


def tetra_off(scale: float = 1.0) -> bytes:
    return off_text([tuple(scale * c for c in v) for v in TETRA_V], TETRA_F)


def tetra_obj() -> bytes:
    return (
        "".join(f"v {x} {y} {z}\n" for x, y, z in TETRA_V)
        + "".join(f"f {a + 1} {b + 1} {c + 1}\n" for a, b, c in TETRA_F)
    ).encode()


def nan_off() -> bytes:
    return off_text([(0.0, 0.0, 0.0), (float("nan"), 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0)], TETRA_F)


def empty_off() -> bytes:
    return b"OFF\n0 0 0\n"


def degenerate_off() -> bytes:
    """Three collinear vertices and a face with a repeated corner: no face has positive area."""
    return off_text([(0.0, 0.0, 0.0), (1.0, 0.0, 0.0), (2.0, 0.0, 0.0)], [(0, 1, 2), (0, 0, 1)])


def bad_index_off() -> bytes:
    return off_text(TETRA_V, [(0, 1, 2), (1, 2, 7)])


def garbage_off() -> bytes:
    return b"OFF\n4 2 0\n0 0 0\n1 0 zero\n0 1 0\n0 0 1\n3 0 1 2\n3 0 2 3\n"


# ---------------------------------------------------------------------------------------------------------------
# images and h5


def png_bytes(width: int = 8, height: int = 6, value: int = 128) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("L", (width, height), value).save(buf, format="PNG")
    return buf.getvalue()


def corrupt_png() -> bytes:
    """A PNG whose image data is cut short (header intact, decoding fails)."""
    data = png_bytes(64, 64, 7)
    return data[: len(data) // 2]


def huge_png_header(width: int = 100_000, height: int = 100_000) -> bytes:
    """A tiny PNG that claims a huge size (decompression-bomb shape): header and a bogus IDAT only."""
    import zlib

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def image_json(label, split: str | None = "train", **extra) -> bytes:
    obj = {"label": label, **extra}
    if split is not None:
        obj["split"] = split
    return json.dumps(obj).encode()


def write_h5(path: Path, **datasets) -> Path:
    import h5py

    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as h5:
        for key, value in datasets.items():
            h5.create_dataset(key, data=value)
    return path


def clouds(n: int, points: int = 32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, points, 3)).astype(np.float32)


# ---------------------------------------------------------------------------------------------------------------
# archives


@dataclass
class Entry:
    """One archive member: a regular file (data), a link (link to target), a device, a fifo or a directory."""

    name: str
    data: bytes = b""
    kind: str = "file"  # file | dir | symlink | hardlink | chr | blk | fifo
    target: str = ""


def file(name: str, data: bytes) -> Entry:
    return Entry(name, data)


def symlink(name: str, target: str) -> Entry:
    return Entry(name, kind="symlink", target=target)


def hardlink(name: str, target: str) -> Entry:
    return Entry(name, kind="hardlink", target=target)


def device(name: str) -> Entry:
    return Entry(name, kind="chr")


def fifo(name: str) -> Entry:
    return Entry(name, kind="fifo")


_TAR_TYPES = {
    "file": tarfile.REGTYPE,
    "dir": tarfile.DIRTYPE,
    "symlink": tarfile.SYMTYPE,
    "hardlink": tarfile.LNKTYPE,
    "chr": tarfile.CHRTYPE,
    "blk": tarfile.BLKTYPE,
    "fifo": tarfile.FIFOTYPE,
}


def write_tar(path: Path, entries: list[Entry], compression: str = "gz", encoding: str = "utf-8") -> Path:
    """A tar (compression '', 'gz', 'bz2' or 'xz') with exactly these member headers (names are not cleaned);
    ``encoding`` is how names are written (latin-1 makes names that are not valid UTF-8)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = f"w:{compression}" if compression else "w"
    with tarfile.open(path, mode, format=tarfile.GNU_FORMAT, encoding=encoding) as tf:
        for e in entries:
            ti = tarfile.TarInfo(e.name)
            ti.type = _TAR_TYPES[e.kind]
            ti.mode = 0o755 if e.kind == "dir" else 0o644
            ti.mtime = 0
            if e.kind in ("symlink", "hardlink"):
                ti.linkname = e.target
            if e.kind == "file":
                ti.size = len(e.data)
                tf.addfile(ti, io.BytesIO(e.data))
            else:
                tf.addfile(ti)
    return path


def write_zip(path: Path, entries: list[Entry], compression: int = zipfile.ZIP_DEFLATED) -> Path:
    """A zip with these members; links and devices are marked in the unix mode bits like Info-ZIP does."""
    path.parent.mkdir(parents=True, exist_ok=True)
    kinds = {
        "file": stat.S_IFREG,
        "symlink": stat.S_IFLNK,
        "chr": stat.S_IFCHR,
        "fifo": stat.S_IFIFO,
        "dir": stat.S_IFDIR,
    }
    with zipfile.ZipFile(path, "w", compression=compression) as zf:
        for e in entries:
            info = zipfile.ZipInfo(e.name, date_time=(2020, 1, 1, 0, 0, 0))
            info.create_system = 3
            info.external_attr = (kinds[e.kind] | 0o644) << 16
            info.compress_type = compression
            zf.writestr(info, e.target.encode() if e.kind == "symlink" else e.data)
    return path


def patch_zip_sizes(path: Path, name: str, file_size: int, compress_size: int | None = None) -> None:
    """Make the zip lie: rewrite the declared uncompressed (and optionally compressed) size of ``name`` in both
    headers."""
    blob = bytearray(path.read_bytes())
    encoded = name.encode()
    # local header: signature, then compressed / uncompressed sizes at offsets 18 / 22; central header: 20 / 24
    for sig, size_off, name_len_off, name_off in ((b"PK\x03\x04", 22, 26, 30), (b"PK\x01\x02", 24, 28, 46)):
        pos = 0
        while (pos := blob.find(sig, pos)) >= 0:
            n = struct.unpack("<H", blob[pos + name_len_off : pos + name_len_off + 2])[0]
            if bytes(blob[pos + name_off : pos + name_off + n]) == encoded:
                blob[pos + size_off : pos + size_off + 4] = struct.pack("<I", file_size)
                if compress_size is not None:
                    blob[pos + size_off - 4 : pos + size_off] = struct.pack("<I", compress_size)
            pos += 4
    path.write_bytes(bytes(blob))


def good_entries(prefix: str = "") -> list[Entry]:
    """Two well-formed meshes in the loose layout (<class>/<name>.off)."""
    return [file(f"{prefix}chair/good_a.off", tetra_off()), file(f"{prefix}table/good_b.off", tetra_off(2.0))]


GOOD_IDS = {"chair/good_a", "table/good_b"}


# ---------------------------------------------------------------------------------------------------------------
# checking that nothing escaped


def snapshot(root: Path) -> dict[str, int]:
    """Every path under ``root`` (files, links, dirs) -> its size, without following links."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            out[os.path.relpath(full, root)] = os.lstat(full).st_size
    return out


# ---------------------------------------------------------------------------------------------------------------
# running ingest under a snapshot

LIMITS = {
    "max_members": 1000,
    "max_total_bytes": 10**9,
    "max_member_bytes": 10**8,
    "max_ratio": 200,
    "max_faces": 10**6,
    "workers": 1,
}


def ingest_checked(
    tmp_path: Path,
    source: Path | str | list,
    kind: str = "mesh",
    fmt: str = "auto",
    out: str = "out",
    source_extra: dict | None = None,
    **limits,
):
    """Run the ingest stage function on ``source`` with outputs in ``tmp_path/out``; assert that nothing appeared or
    changed elsewhere under tmp_path and that the store matches the manifest. Returns (manifest, rejects)."""
    import pandas as pd

    from pipeline3d.data.ingest import run_ingest
    from pipeline3d.io.itemstore import ItemStore
    from pipeline3d.io.rejects import REASONS

    before = snapshot(tmp_path)
    out_dir = tmp_path / out
    path = [str(s) for s in source] if isinstance(source, list) else str(source)
    params = {
        "seed": 0,
        "dataset": "ds",
        "source": {"kind": kind, "format": fmt, "path": path, **(source_extra or {})},
        "ingest": {**LIMITS, **limits},
        "stage_version": 1,
    }
    run_ingest(params, out_dir / "manifest.parquet", out_dir / "rejects.parquet", out_dir / "items.h5")
    after = snapshot(tmp_path)
    created = {p for p in set(after) - set(before) if not p.startswith(out)}
    changed = {p for p in before if not p.startswith(out) and after.get(p) != before[p]}
    assert not created and not changed, f"files outside the output folder: {sorted(created | changed)}"
    assert sorted(os.listdir(out_dir)) == ["items.h5", "manifest.parquet", "rejects.parquet"]  # no spool left
    manifest = pd.read_parquet(out_dir / "manifest.parquet")
    rejects = pd.read_parquet(out_dir / "rejects.parquet")
    assert list(rejects.columns) == ["source", "stage", "reason", "detail"]
    assert set(rejects["reason"]) <= set(REASONS) and set(rejects["stage"]) <= {"ingest"}
    assert manifest["shape_id"].is_monotonic_increasing and manifest["shape_id"].is_unique
    with ItemStore(out_dir / "items.h5") as store:
        assert store.shape_ids == manifest["shape_id"].tolist()
    return manifest, rejects
