"""Mesh parsing, validation and explicit clean-up.

OFF and OBJ are read by our own strict, vectorised parsers (the bulk of ShapeNet / ModelNet); PLY and STL go
through trimesh. Every problem raises ``ItemError`` with a reason code:

- ``parse_error``: malformed header / counts / tokens, too few lines, trailing garbage, polygon with < 3 corners
- ``unsupported_format``: binary OFF, 4D / nD OFF, an extension we do not read
- ``unreadable``: binary bytes where a text format (OBJ) was expected
- ``empty``: no vertices or no faces;  ``nonfinite``: NaN / inf coordinates;  ``bad_index``: face index out of range
- ``bad_scale``: coordinates too large or too far from the origin for their extent (``pipeline3d.io.coords``)
- ``too_large``: more (triangulated) faces than ``max_faces``
- ``degenerate``: nothing left after dropping zero-area faces (includes zero extent)

OFF: header ``OFF`` / ``COFF`` / ``NOFF`` / ``CNOFF`` / ``STOFF`` ..., possibly glued to the counts
(``OFF490 1000 0``, ModelNet's quirk); ``#`` comments, blank lines, CRLF or CR line ends; extra per-vertex values
(colours, normals) and per-face colour values are ignored; polygons are fan-triangulated.
OBJ: ``v`` (first three values) and ``f`` (``a``, ``a/b``, ``a//c``, ``a/b/c``; negative = relative; polygons
fan-triangulated); every other statement is ignored; ``\\`` line continuations are joined.

Clean-up (``clean_mesh``) is done in numpy and reported: faces with a repeated corner or zero area
(``|cross| <= 1e-12 * bbox_diagonal**2``) are dropped, then duplicate faces (same corner set, the first is
kept), then unreferenced vertices. Vertices stay in source coordinates (the cache normalises).
"""

from __future__ import annotations

import hashlib
import io
import re
from dataclasses import dataclass, field

import numpy as np

from .coords import scale_problem
from .rejects import ItemError

MESH_FORMATS = {".off": "off", ".obj": "obj", ".ply": "ply", ".stl": "stl"}
# 3D formats we recognise but do not read: rejected with unsupported_format instead of silently ignored
UNSUPPORTED_MESH_SUFFIXES = frozenset(
    {
        ".glb",
        ".gltf",
        ".3ds",
        ".dae",
        ".fbx",
        ".blend",
        ".wrl",
        ".vrml",
        ".x3d",
        ".3mf",
        ".vtk",
        ".vtp",
        ".dxf",
        ".step",
        ".stp",
        ".iges",
        ".igs",
        ".max",
    }
)
AREA_EPS = 1e-12
PANDAS_MIN_BYTES = 64 << 10

_WS = np.zeros(256, dtype=bool)
_WS[[9, 10, 11, 12, 13, 32]] = True  # the bytes C's isspace() accepts, as np.fromstring splits on them


@dataclass
class Mesh:
    """A validated, cleaned triangle mesh (source coordinates)."""

    vertices: np.ndarray  # (V,3) float64
    faces: np.ndarray  # (F,3) int64
    sha256: str = ""
    cleanup: dict[str, int] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------------------------
# tokenising


def _normalise_text(data: bytes, continuations: bool = False) -> bytes:
    """LF line ends, no UTF-8 BOM, ``#`` comments removed (and OBJ ``\\`` continuations joined)."""
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    if b"\r" in data:
        data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    if b"#" in data:
        data = re.sub(rb"#[^\n]*", b"", data)
    if continuations and b"\\\n" in data:
        data = data.replace(b"\\\n", b" ")
    return data


@dataclass
class _Tokens:
    """Whitespace-separated tokens of a text block, located with numpy (no Python loop over lines)."""

    buf: np.ndarray  # the block as uint8
    starts: np.ndarray  # offset of each token
    ends: np.ndarray  # offset just past each token
    counts: np.ndarray  # tokens on each line (blank lines: 0)
    newlines: np.ndarray  # offset of each '\n'


def _tokenise(block: bytes) -> _Tokens:
    buf = np.frombuffer(block, dtype=np.uint8)
    newlines = np.flatnonzero(buf == 10)
    if buf.size == 0:
        empty = np.zeros(0, dtype=np.int64)
        return _Tokens(buf, empty, empty, np.zeros(1, dtype=np.int64), newlines)
    ws = _WS[buf]
    starts = np.flatnonzero(ws[:-1] > ws[1:]) + 1  # whitespace followed by a token character
    ends = np.flatnonzero(ws[:-1] < ws[1:]) + 1  # a token character followed by whitespace
    if not ws[0]:
        starts = np.concatenate(([0], starts))
    if not ws[-1]:
        ends = np.concatenate((ends, [buf.size]))
    before = np.searchsorted(starts, newlines)  # tokens that start before each newline
    counts = np.diff(np.concatenate(([0], before, [len(starts)]))).astype(np.int64)
    return _Tokens(buf, starts, ends, counts, newlines)


def _line_layout(block: bytes) -> tuple[np.ndarray, np.ndarray]:
    """(tokens per line, newline offsets) of ``block``; blank lines have 0 tokens."""
    tok = _tokenise(block)
    return tok.counts, tok.newlines


def _parse_ints(tok: _Tokens, which: np.ndarray | None, what: str, allow_slash: bool = False) -> np.ndarray:
    """The integers written by tokens ``which`` (all if None), parsed in numpy: ``[+-]digits``, and with
    ``allow_slash`` the part before a '/' (OBJ ``v/vt/vn`` references). Raises parse_error for anything else.

    One vectorised step per digit position over the tokens (not over the whole text): about twice as fast as
    stripping the ``/vt/vn`` tails with a regex and parsing the rest."""
    starts = tok.starts if which is None else tok.starts[which]
    ends = tok.ends if which is None else tok.ends[which]
    if starts.size == 0:
        return np.zeros(0, dtype=np.int64)
    buf, last = tok.buf, tok.buf.size - 1
    first = buf[starts]
    negative = first == 45
    pos = starts + (negative | (first == 43))
    values = np.zeros(len(starts), dtype=np.int64)
    n_digits = np.zeros(len(starts), dtype=np.int64)
    active = pos < ends
    for _ in range(19):
        ch = buf[np.minimum(pos, last)]
        is_digit = active & (ch >= 48) & (ch <= 57)
        if not bool(is_digit.any()):
            break
        values = np.where(is_digit, values * 10 + (ch.astype(np.int64) - 48), values)
        n_digits += is_digit
        pos += is_digit
        active = is_digit & (pos < ends)
    stop = buf[np.minimum(pos, last)]
    ok = (n_digits >= 1) & (n_digits <= 18) & ((pos == ends) | ((stop == 47) & allow_slash))
    if not bool(ok.all()):
        bad = int(np.flatnonzero(~ok)[0])
        token = bytes(buf[starts[bad] : ends[bad]])[:40]
        raise ItemError("parse_error", f"{what}: {token!r} is not an integer")
    return np.where(negative, -values, values)


def _parse_numbers(block: bytes, counts: np.ndarray, what: str) -> np.ndarray:
    """All numbers of ``block`` (lines with ``counts`` tokens each, blank lines excluded), as a flat float64 array.

    Big uniform blocks (every line the same width, the common case) go through pandas' C reader, about 4x
    faster than ``np.fromstring``; anything else, or anything pandas refuses (nan / inf tokens), through
    ``np.fromstring``, which raises on any token that is not a number.
    """
    total = int(counts.sum())
    if total == 0:
        return np.zeros(0, dtype=np.float64)
    k = int(counts[0])
    # pandas costs ~1 ms per call whatever the size: worth it only for bigger blocks
    if len(block) >= PANDAS_MIN_BYTES and k <= 64 and bool(np.all(counts == k)):
        import pandas as pd

        try:
            arr = pd.read_csv(
                io.BytesIO(block),
                sep=r"\s+",
                header=None,
                dtype=np.float64,
                engine="c",
                na_filter=False,
                quoting=3,
                skip_blank_lines=True,
            ).to_numpy()
            if arr.shape == (len(counts), k):
                return np.ascontiguousarray(arr).reshape(-1)
        except (ValueError, pd.errors.ParserError, pd.errors.EmptyDataError):
            pass
    try:
        values = np.fromstring(block, dtype=np.float64, sep=" ")
    except ValueError as exc:
        raise ItemError("parse_error", f"{what}: a token is not a number ({exc})") from None
    if values.size != total:
        raise ItemError("parse_error", f"{what}: read {values.size} numbers, expected {total}")
    return values


def _as_indices(values: np.ndarray, what: str) -> np.ndarray:
    if not bool(np.all(np.isfinite(values))) or not bool(np.all(values == np.rint(values))):
        raise ItemError("parse_error", f"{what}: a vertex index is not an integer")
    return values.astype(np.int64)


def _first3(values: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """The first three numbers of every line (vertex coordinates), (L,3)."""
    if counts.size and int(counts.min()) == int(counts.max()):
        return values.reshape(len(counts), int(counts[0]))[:, :3].astype(np.float64, copy=True)
    offsets = np.concatenate(([0], np.cumsum(counts)[:-1]))
    return values[offsets[:, None] + np.arange(3)]


def fan_triangulate(indices: np.ndarray, starts: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """Triangles (i0, ik, ik+1) of polygons stored at ``indices[starts[p] : starts[p] + sizes[p]]``."""
    if sizes.size and bool(np.all(sizes == 3)):
        return indices[starts[:, None] + np.arange(3)]
    n_tri = sizes - 2
    poly = np.repeat(np.arange(len(sizes)), n_tri)
    first_tri = np.concatenate(([0], np.cumsum(n_tri)[:-1]))
    k = np.arange(len(poly)) - first_tri[poly]
    base = starts[poly]
    return np.stack([indices[base], indices[base + 1 + k], indices[base + 2 + k]], axis=1)


def _block(text: bytes, newlines: np.ndarray, first_line: int, last_line: int) -> bytes:
    """Bytes of lines ``first_line..last_line`` (inclusive) of ``text``."""
    start = 0 if first_line == 0 else int(newlines[first_line - 1]) + 1
    end = int(newlines[last_line]) if last_line < len(newlines) else len(text)
    return text[start:end]


# --------------------------------------------------------------------------------------------------------------
# OFF

_OFF_HEADER = re.compile(rb"\A\s*(ST)?(C)?(N)?(4)?(n)?OFF")


def parse_off(data: bytes, max_faces: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Vertices (V,3) float64 and triangles (T,3) int64 (0-based, unvalidated) of an ASCII OFF file."""
    text = _normalise_text(data)
    m = _OFF_HEADER.match(text)
    if not m:
        raise ItemError("parse_error", "no OFF header")
    if m.group(4) or m.group(5):
        raise ItemError("unsupported_format", "4D / nD OFF variant")
    body = text[m.end() :]
    line_end = body.find(b"\n")
    rest_of_header = body if line_end < 0 else body[:line_end]
    if rest_of_header.strip().upper().startswith(b"BINARY"):
        raise ItemError("unsupported_format", "binary OFF")
    if rest_of_header[:1] not in (b"", b" ", b"\t", b"\v", b"\f") and not rest_of_header[:1].isdigit():
        raise ItemError("parse_error", f"bad OFF header {text[: m.end() + 10]!r}")
    counts, newlines = _line_layout(body)
    lines = np.flatnonzero(counts)
    if lines.size == 0:
        raise ItemError("parse_error", "no vertex/face counts after the OFF header")
    head = _block(body, newlines, int(lines[0]), int(lines[0])).split()
    try:
        n_v, n_f = int(head[0]), int(head[1])
    except (ValueError, IndexError):
        raise ItemError("parse_error", f"bad counts line {b' '.join(head)[:60]!r}") from None
    if n_v < 0 or n_f < 0 or len(head) > 3:
        raise ItemError("parse_error", f"bad counts line {b' '.join(head)[:60]!r}")
    if max_faces is not None and n_f > max_faces:
        raise ItemError("too_large", f"{n_f} faces declared, more than max_faces={max_faces}")
    if lines.size < 1 + n_v + n_f:
        raise ItemError(
            "parse_error",
            f"truncated: header declares {n_v} vertices and {n_f} faces, found {lines.size - 1} data lines",
        )
    if lines.size > 1 + n_v + n_f:
        raise ItemError("parse_error", f"{lines.size - 1 - n_v - n_f} unexpected lines after the faces")
    if n_v == 0 or n_f == 0:
        raise ItemError("empty", f"{n_v} vertices, {n_f} faces")
    v_lines = lines[1 : 1 + n_v]
    v_counts = counts[v_lines]
    if int(v_counts.min()) < 3:
        raise ItemError("parse_error", "a vertex line has fewer than 3 values")
    v_values = _parse_numbers(_block(body, newlines, int(v_lines[0]), int(v_lines[-1])), v_counts, "vertices")
    vertices = _first3(v_values, v_counts)

    f_lines = lines[1 + n_v :]
    f_counts = counts[f_lines]
    f_values = _parse_numbers(_block(body, newlines, int(f_lines[0]), int(f_lines[-1])), f_counts, "faces")
    first = np.concatenate(([0], np.cumsum(f_counts)[:-1]))  # each face's corner count
    sizes = _as_indices(f_values[first], "face sizes")
    if int(sizes.min()) < 3:
        raise ItemError("parse_error", f"a face has {int(sizes.min())} corners (at least 3 needed)")
    if bool(np.any(f_counts < sizes + 1)):
        raise ItemError("parse_error", "a face line has fewer indices than its corner count")
    if max_faces is not None and int((sizes - 2).sum()) > max_faces:
        raise ItemError("too_large", f"{int((sizes - 2).sum())} triangles, more than max_faces={max_faces}")
    # the corner indices follow the count; any values after them are colours and are ignored
    if bool(np.all(sizes == 3)):
        slots = (first[:, None] + 1 + np.arange(3)).reshape(-1)
    else:
        slots = np.repeat(first + 1, sizes) + _ranges(sizes)
    corners = _as_indices(f_values[slots], "faces")
    corner_starts = np.concatenate(([0], np.cumsum(sizes)[:-1]))
    return vertices, fan_triangulate(corners, corner_starts, sizes)


def _ranges(sizes: np.ndarray) -> np.ndarray:
    """0..s-1 for each s in sizes, concatenated."""
    starts = np.concatenate(([0], np.cumsum(sizes)[:-1]))
    return np.arange(int(sizes.sum())) - np.repeat(starts, sizes)


# --------------------------------------------------------------------------------------------------------------
# OBJ

_OBJ_V = re.compile(rb"^[ \t]*v(?![^ \t\n])([^\n]*)", re.M)
_OBJ_F = re.compile(rb"^[ \t]*f(?![^ \t\n])([^\n]*)", re.M)


def _looks_binary(data: bytes, sample: int = 4096) -> bool:
    """NUL bytes or mostly non-printable bytes in the first ``sample`` bytes: not a text file."""
    head = data[:sample]
    if not head:
        return False
    if b"\0" in head:
        return True
    printable = sum(32 <= b < 127 or b in (9, 10, 13) for b in head)
    return printable < 0.9 * len(head)


def parse_obj(data: bytes, max_faces: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Vertices (V,3) float64 and triangles (T,3) int64 (0-based, unvalidated) of a Wavefront OBJ file."""
    text = _normalise_text(data, continuations=True)
    v_rows = _OBJ_V.findall(text)
    f_rows = _OBJ_F.findall(text)
    if not v_rows or not f_rows:
        if _looks_binary(data):
            raise ItemError("unreadable", "binary data, not a text OBJ file")
        raise ItemError("empty", f"{len(v_rows)} vertices, {len(f_rows)} faces")
    v_block = b"\n".join(v_rows)
    v_counts, _ = _line_layout(v_block)
    if int(v_counts.min()) < 3:
        raise ItemError("parse_error", "a 'v' statement has fewer than 3 values")
    vertices = _first3(_parse_numbers(v_block, v_counts, "vertices"), v_counts)

    f_tok = _tokenise(b"\n".join(f_rows))
    sizes = f_tok.counts
    if int(sizes.min()) < 3:
        raise ItemError("parse_error", f"an 'f' statement has {int(sizes.min())} vertex indices (at least 3 needed)")
    if max_faces is not None and int((sizes - 2).sum()) > max_faces:
        raise ItemError("too_large", f"{int((sizes - 2).sum())} triangles, more than max_faces={max_faces}")
    idx = _parse_ints(f_tok, None, "faces", allow_slash=True)  # the vertex index of a, a/b, a//c, a/b/c
    if bool(np.any(idx == 0)):
        raise ItemError("bad_index", "face index 0 (OBJ indices start at 1)")
    if bool(np.any(idx < 0)):
        # a negative index counts back from the vertices defined so far, so we need each face's position
        v_pos = np.fromiter((mt.start() for mt in _OBJ_V.finditer(text)), dtype=np.int64, count=len(v_rows))
        f_pos = np.fromiter((mt.start() for mt in _OBJ_F.finditer(text)), dtype=np.int64, count=len(f_rows))
        seen = np.repeat(np.searchsorted(v_pos, f_pos), sizes)
        idx = np.where(idx < 0, seen + idx, idx - 1)
    else:
        idx = idx - 1
    starts = np.concatenate(([0], np.cumsum(sizes)[:-1]))
    return vertices, fan_triangulate(idx, starts, sizes)


# --------------------------------------------------------------------------------------------------------------
# PLY / STL through trimesh


def declared_faces(data: bytes, fmt: str) -> int | None:
    """The face count a PLY header or a binary STL declares (checked before trimesh parses anything)."""
    if fmt == "ply":
        end = data.find(b"end_header", 0, 1 << 16)
        m = re.search(rb"^element[ \t]+face[ \t]+(\d+)", data[:end], re.M) if end > 0 else None
        return int(m.group(1)) if m else None
    if fmt == "stl" and len(data) >= 84 and not data[:5].lower() == b"solid":
        return int(np.frombuffer(data[80:84], dtype="<u4")[0])
    return None


def parse_with_trimesh(data: bytes, fmt: str, max_faces: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    import trimesh

    n_faces = declared_faces(data, fmt)
    if max_faces is not None and n_faces is not None and n_faces > max_faces:
        raise ItemError("too_large", f"{n_faces} faces declared, more than max_faces={max_faces}")

    try:
        mesh = trimesh.load_mesh(io.BytesIO(data), file_type=fmt, process=False)
    except Exception as exc:  # trimesh raises many types for malformed files
        detail = f"trimesh could not read the {fmt.upper()}: {type(exc).__name__}: {exc}"
        raise ItemError("parse_error", detail) from None
    if isinstance(mesh, trimesh.Scene):
        geoms = [g for g in mesh.geometry.values() if isinstance(g, trimesh.Trimesh)]
        if not geoms:
            raise ItemError("empty", "no triangle geometry in the scene")
        mesh = trimesh.util.concatenate(geoms)
    if not hasattr(mesh, "faces"):
        raise ItemError("empty", "no faces (point cloud)")
    return np.asarray(mesh.vertices, dtype=np.float64), np.asarray(mesh.faces, dtype=np.int64).reshape(-1, 3)


# --------------------------------------------------------------------------------------------------------------
# validation and clean-up


def _first_occurrences(rows: np.ndarray, n_vertices: int) -> np.ndarray:
    """Mask of the rows (sorted corner triples) that did not occur earlier."""
    if len(rows) == 0:
        return np.zeros(0, dtype=bool)
    if n_vertices < (1 << 21):  # pack the triple into one int64: a 1-D sort is ~10x faster than unique(axis=0)
        key = (rows[:, 0] << 42) | (rows[:, 1] << 21) | rows[:, 2]
        order = np.argsort(key, kind="stable")
        same = key[order][1:] == key[order][:-1]
    else:
        order = np.lexsort(rows.T[::-1])
        srt = rows[order]
        same = np.all(srt[1:] == srt[:-1], axis=1)
    keep = np.ones(len(rows), dtype=bool)
    keep[order[1:][same]] = False  # stable order: the first occurrence of a run is kept
    return keep


def clean_mesh(vertices: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
    """Drop degenerate faces, duplicate faces and unreferenced vertices; indices must be valid."""
    stats = {"faces_in": int(len(faces)), "vertices_in": int(len(vertices))}
    extent = vertices.max(axis=0) - vertices.min(axis=0)
    diag2 = float(np.dot(extent, extent))
    a, b, c = vertices[faces[:, 0]], vertices[faces[:, 1]], vertices[faces[:, 2]]
    cross = np.cross(b - a, c - a)
    area2 = np.einsum("ij,ij->i", cross, cross)
    repeated = (faces[:, 0] == faces[:, 1]) | (faces[:, 1] == faces[:, 2]) | (faces[:, 0] == faces[:, 2])
    keep = ~repeated & (area2 > (AREA_EPS * diag2) ** 2) if diag2 > 0 else np.zeros(len(faces), dtype=bool)
    stats["degenerate_faces"] = int(len(faces) - keep.sum())
    faces = faces[keep]

    unique = _first_occurrences(np.sort(faces, axis=1), len(vertices))
    stats["duplicate_faces"] = int(len(faces) - unique.sum())
    faces = faces[unique]

    used = np.zeros(len(vertices), dtype=bool)
    used[faces.reshape(-1)] = True
    stats["unreferenced_vertices"] = int(len(vertices) - used.sum())
    if stats["unreferenced_vertices"]:
        remap = np.cumsum(used) - 1
        faces = remap[faces]
        vertices = vertices[used]
    return np.ascontiguousarray(vertices, dtype=np.float64), np.ascontiguousarray(faces, dtype=np.int64), stats


def validate_mesh(vertices: np.ndarray, faces: np.ndarray, max_faces: int) -> Mesh:
    """Check a parsed mesh (reason codes as in the module docstring) and clean it."""
    vertices = np.asarray(vertices, dtype=np.float64).reshape(-1, 3)
    faces = np.asarray(faces, dtype=np.int64).reshape(-1, 3)
    if len(vertices) == 0 or len(faces) == 0:
        raise ItemError("empty", f"{len(vertices)} vertices, {len(faces)} faces")
    bad = ~np.isfinite(vertices).all(axis=1)
    if bool(bad.any()):
        raise ItemError("nonfinite", f"{int(bad.sum())} of {len(vertices)} vertices have NaN/inf coordinates")
    problem = scale_problem(vertices)
    if problem:
        raise ItemError("bad_scale", problem)
    lo, hi = int(faces.min()), int(faces.max())
    if lo < 0 or hi >= len(vertices):
        raise ItemError("bad_index", f"face index {lo if lo < 0 else hi} outside 0..{len(vertices) - 1}")
    if len(faces) > max_faces:
        raise ItemError("too_large", f"{len(faces)} faces, more than max_faces={max_faces}")
    v, f, stats = clean_mesh(vertices, faces)
    if len(f) == 0:
        extent = float((vertices.max(axis=0) - vertices.min(axis=0)).max())
        why = "zero extent" if extent == 0 else f"all {stats['faces_in']} faces have zero area"
        raise ItemError("degenerate", why)
    return Mesh(v, f, cleanup=stats)


def load_mesh(data: bytes, fmt: str, max_faces: int) -> Mesh:
    """Parse ``data`` (``fmt`` in off|obj|ply|stl), validate and clean it; ``sha256`` is of the raw bytes."""
    if fmt == "off":
        vertices, faces = parse_off(data, max_faces)
    elif fmt == "obj":
        vertices, faces = parse_obj(data, max_faces)
    elif fmt in ("ply", "stl"):
        vertices, faces = parse_with_trimesh(data, fmt, max_faces)
    else:
        raise ItemError("unsupported_format", f"mesh format {fmt!r} is not read")
    mesh = validate_mesh(vertices, faces, max_faces)
    mesh.sha256 = hashlib.sha256(data).hexdigest()
    return mesh
