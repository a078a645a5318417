"""Reject rows: what ingest refused, where, and why (one vocabulary shared by the ingest modules).

A ``Reject`` becomes one row of ``rejects.parquet`` (columns ``source, stage, reason, detail``). ``ItemError`` is
raised by the parsers and validators for a problem with one item (or one file); the caller turns it into a row
and carries on with the next item.
"""

from __future__ import annotations

from dataclasses import dataclass

REJECT_COLUMNS = ("source", "stage", "reason", "detail")

# Every reason code ingest writes, with what it means.
REASONS: dict[str, str] = {
    # whole archive (one row, nothing from the archive is ingested)
    "bad_archive": "not a readable zip / tar / compressed tar, or the archive is corrupt",
    "too_many_members": "the archive has more members than ingest.max_members",
    "too_many_bytes": "the archive uncompresses to more than ingest.max_total_bytes",
    # archive or single zip member
    "ratio": "uncompressed/compressed size ratio above ingest.max_ratio (compression bomb)",
    # single member or file
    "unsafe_path": "member name is absolute, has a drive letter, a '..' component or a NUL byte",
    "link": "symbolic or hard link (archive links are never followed; directory links must stay inside the root)",
    "special_file": "device, fifo, socket or other non-regular member",
    "encrypted": "encrypted zip member",
    "too_big": "member larger than ingest.max_member_bytes",
    "read_error": "the member could not be read (corrupt data, unsupported compression, I/O error)",
    "bad_layout": "the file does not fit the dataset layout (no class folder, wrong place in the tree)",
    "duplicate_id": "another item already has this shape id (the first in sorted source order wins)",
    # meshes
    "parse_error": "the mesh file is malformed (header, counts, tokens, truncated)",
    "unsupported_format": "a file format (or format variant) ingest does not read",
    "empty": "no vertices, no faces or no points",
    "nonfinite": "NaN or infinite coordinates",
    "bad_scale": "coordinates too large (above 1e18) or too far from the origin for the shape's extent to normalise",
    "bad_index": "a face refers to a vertex that does not exist",
    "degenerate": "no face with positive area / zero extent",
    "too_large": "more faces than ingest.max_faces, or more image pixels than the decoder cap",
    # point-cloud h5
    "unreadable": "the file cannot be read as its format (an h5 file HDF5 cannot open, binary bytes in a text OBJ)",
    "missing_keys": "the h5 file lacks 'data' or 'label'",
    "bad_shape": "'data' is not [N,P,3] or 'label' is not [N] / [N,1]",
    "bad_dtype": "'data' or 'label' is not numeric",
    "length_mismatch": "'label' and 'data' have different lengths",
    "bad_label": "a label that is not a valid class index",
    # images
    "missing_json": "an image without its <key>.json",
    "missing_image": "a <key>.json without its image",
    "bad_json": "the JSON is not an object with a usable 'label' (and optional 'split')",
    "bad_image": "the image cannot be decoded",
}


@dataclass(frozen=True, order=True)
class Reject:
    """One refused item, file or archive."""

    source: str
    reason: str
    detail: str


class ItemError(ValueError):
    """A problem with one item or file; ``reason`` is a code from ``REASONS``."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail

    def reject(self, source: str) -> Reject:
        return Reject(source, self.reason, self.detail)

    def __reduce__(self):  # picklable across worker processes
        return (type(self), (self.reason, self.detail))
