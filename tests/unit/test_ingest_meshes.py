"""OFF / OBJ parsers, mesh validation reason codes and the explicit clean-up."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest

from hostile import (
    TETRA_F,
    TETRA_V,
    bad_index_off,
    degenerate_off,
    empty_off,
    garbage_off,
    nan_off,
    off_text,
    tetra_obj,
    tetra_off,
)
from pipeline3d.io.meshes import clean_mesh, fan_triangulate, load_mesh, parse_obj, parse_off
from pipeline3d.io.rejects import ItemError

SHARED = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"
QUAD_CUBE_V = [(x, y, z) for x in (0.0, 1.0) for y in (0.0, 1.0) for z in (0.0, 1.0)]
QUAD_CUBE_F = [(0, 1, 3, 2), (4, 6, 7, 5), (0, 4, 5, 1), (2, 3, 7, 6), (0, 2, 6, 4), (1, 5, 7, 3)]


def reason_of(data: bytes, fmt: str = "off", max_faces: int = 1000) -> str:
    with pytest.raises(ItemError) as info:
        load_mesh(data, fmt, max_faces)
    return info.value.reason


# ------------------------------------------------------------------------------------------------ OFF


def test_off_plain_tetrahedron():
    v, f = parse_off(tetra_off())
    np.testing.assert_array_equal(v, TETRA_V)
    np.testing.assert_array_equal(f, TETRA_F)
    assert v.dtype == np.float64 and f.dtype == np.int64


def test_off_header_glued_to_counts_comments_blank_lines_and_crlf():
    text = (
        "# exported by a tool\r\nOFF4 4 0   # counts glued to the magic\r\n\r\n"
        "0 0 0\r\n1 0 0 # a trailing comment\r\n\r\n0 1 0\r\n0 0 1\r\n"
        "3 0 2 1\r\n3 0 1 3\r\n\r\n3 0 3 2\r\n3 1 2 3\r\n\r\n"
    )
    v, f = parse_off(text.encode())
    np.testing.assert_array_equal(v, TETRA_V)
    np.testing.assert_array_equal(f, TETRA_F)
    v2, f2 = parse_off(text.replace("\r\n", "\r").encode())  # old Mac line ends
    np.testing.assert_array_equal(f2, TETRA_F)


def test_off_counts_on_the_next_line_after_comments():
    v, f = parse_off(b"OFF\n# comment\n\n  4   4   0\n" + tetra_off().split(b"\n", 2)[2])
    np.testing.assert_array_equal(f, TETRA_F)


def test_off_extra_vertex_and_face_values_are_ignored():
    lines = ["COFF", "4 4 0"] + [f"{x} {y} {z} 255 0 0 255" for x, y, z in TETRA_V]
    lines += [f"3 {a} {b} {c} 0.5 0.25 1" for a, b, c in TETRA_F]
    v, f = parse_off("\n".join(lines).encode())
    np.testing.assert_array_equal(v, TETRA_V)
    np.testing.assert_array_equal(f, TETRA_F)


def test_off_mixed_vertex_widths_use_the_general_path():
    lines = ["OFF", "4 4 0", "0 0 0", "1 0 0 9", "0 1 0", "0 0 1 7 7"] + [f"3 {a} {b} {c}" for a, b, c in TETRA_F]
    v, _ = parse_off("\n".join(lines).encode())
    np.testing.assert_array_equal(v, TETRA_V)


def test_off_polygons_are_fan_triangulated():
    v, f = parse_off(off_text(QUAD_CUBE_V, QUAD_CUBE_F))
    assert f.shape == (12, 3)
    np.testing.assert_array_equal(f[:2], [[0, 1, 3], [0, 3, 2]])
    # a mixed triangle / pentagon file
    v, f = parse_off(
        off_text([(0, 0, 0), (1, 0, 0), (2, 1, 0), (1, 2, 0), (0, 1, 0), (0, 0, 1)], [(0, 1, 2, 3, 4), (0, 1, 5)])
    )
    np.testing.assert_array_equal(f, [[0, 1, 2], [0, 2, 3], [0, 3, 4], [0, 1, 5]])


def test_fan_triangulation_of_ragged_polygons():
    idx = np.array([5, 6, 7, 10, 11, 12, 13])
    tris = fan_triangulate(idx, np.array([0, 3]), np.array([3, 4]))
    np.testing.assert_array_equal(tris, [[5, 6, 7], [10, 11, 12], [10, 12, 13]])


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"PLY\n4 4 0\n", "parse_error"),  # no OFF magic
        (b"OFFX 4 4 0\n", "parse_error"),
        (b"OFF\n", "parse_error"),  # no counts
        (b"OFF\n4 4\n0 0 0\n1 0 0\n", "parse_error"),  # truncated
        (tetra_off() + b"3 0 1 2\n", "parse_error"),  # a line more than declared
        (garbage_off(), "parse_error"),  # a token that is not a number
        (off_text(TETRA_V, [(0, 1)]), "parse_error"),  # a 2-corner face
        (b"OFF\n4 1 0\n0 0 0\n1 0 0\n0 1 0\n0 0 1\n3 0 1.5 2\n", "parse_error"),  # fractional index
        (b"OFF\n4 1 0\n0 0 0\n1 0 0\n0 1 0\n0 0 1\n4 0 1 2\n", "parse_error"),  # fewer indices than corners
        (b"OFF\n4 1 0\n0 0\n1 0 0\n0 1 0\n0 0 1\n3 0 1 2\n", "parse_error"),  # a vertex with 2 values
        (b"OFF BINARY\n\x00\x00\x00\x04", "unsupported_format"),
        (b"4OFF\n4 4 0\n", "unsupported_format"),
        (nan_off(), "nonfinite"),
        (b"OFF\n4 1 0\n0 0 0\n1 0 0\ninf 1 0\n0 0 1\n3 0 1 2\n", "nonfinite"),
        (b"OFF\n3 1 0\n0 0 0\n1e30 0 0\n0 1e30 0\n3 0 1 2\n", "bad_scale"),  # squared norms overflow float32
        (b"OFF\n3 1 0\n1e9 0 0\n1e9 1e-3 0\n1e9 0 1e-3\n3 0 1 2\n", "bad_scale"),  # tiny and far: precision lost
        (empty_off(), "empty"),
        (bad_index_off(), "bad_index"),
        (off_text(TETRA_V, [(0, 1, -1)]), "bad_index"),
        (degenerate_off(), "degenerate"),
        (off_text([(1, 1, 1)] * 3, [(0, 1, 2)]), "degenerate"),  # zero extent
    ],
)
def test_off_reason_codes(data, reason):
    assert reason_of(data) == reason


def test_too_many_faces_is_refused_before_parsing_them():
    assert reason_of(b"OFF\n3 100000000 0\n", max_faces=1000) == "too_large"  # no face lines needed
    assert reason_of(off_text(QUAD_CUBE_V, QUAD_CUBE_F), max_faces=10) == "too_large"  # 6 quads = 12 triangles


# ------------------------------------------------------------------------------------------------ OBJ


def test_obj_plain_tetrahedron():
    v, f = parse_obj(tetra_obj())
    np.testing.assert_array_equal(v, TETRA_V)
    np.testing.assert_array_equal(f, TETRA_F)


def test_obj_slash_forms_negative_indices_polygons_and_other_statements():
    text = """# comment
mtllib m.mtl
o thing
v 0 0 0
v 1 0 0 1.0
vt 0.5 0.5
vn 0 0 1
v 1 1 0 0.2 0.3 0.4
v 0 1 0
g group
usemtl red
s off
f 1/1/1 2/1/1 3/1/1 4/1/1
v 0 0 1
f -1//1 -5//1 -4//1
l 1 2
f 5/1 \\
  3/1 2/1
"""
    v, f = parse_obj(text.replace("\n", "\r\n").encode())
    np.testing.assert_array_equal(v, [(0, 0, 0), (1, 0, 0), (1, 1, 0), (0, 1, 0), (0, 0, 1)])
    # quad fan, then negative indices relative to the 5 vertices seen so far, then a continued line
    np.testing.assert_array_equal(f, [[0, 1, 2], [0, 2, 3], [4, 0, 1], [4, 2, 1]])


def test_obj_negative_index_counts_only_vertices_defined_before_the_face():
    text = b"v 0 0 0\nv 1 0 0\nv 0 1 0\nf -3 -2 -1\nv 5 5 5\nv 6 5 5\nv 5 6 5\nf -3 -2 -1\n"
    _, f = parse_obj(text)
    np.testing.assert_array_equal(f, [[0, 1, 2], [3, 4, 5]])


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"v 0 0 0\nv 1 0 0\nv 0 1 0\nf 0 1 2\n", "bad_index"),  # OBJ counts from 1
        (b"v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 9\n", "bad_index"),
        (b"v 0 0 0\nv 1 0 0\nv 0 1 0\nf -4 1 2\n", "bad_index"),
        (b"v 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 3\n", "parse_error"),
        (b"v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 x\n", "parse_error"),
        (b"v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2\n", "parse_error"),
        (b"v 0 0 0\nv 1 0 0\nv 0 1 0\nf /1 /2 /3\n", "parse_error"),
        (b"v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1/1 2/1 3x/1\n", "parse_error"),
        (b"v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 1.0\n", "parse_error"),
        (b"v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 99999999999999999999\n", "parse_error"),  # would overflow int64
        (b"v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 999999999999\n", "bad_index"),
        (b"v 0 0 0\nv 1 0 0\nv 0 1 0\n", "empty"),  # a point cloud
        (bytes(np.random.default_rng(0).integers(0, 256, 2000, dtype=np.uint8)), "unreadable"),  # random bytes
        (b"# only comments, no geometry\n" * 3, "empty"),
        (b"v nan 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 3\n", "nonfinite"),
        (b"v 0 0 0\nv 1 0 0\nv 2 0 0\nf 1 2 3\n", "degenerate"),
    ],
)
def test_obj_reason_codes(data, reason):
    assert reason_of(data, "obj") == reason


# ------------------------------------------------------------------------------------------------ PLY / STL, others


@pytest.mark.parametrize("fmt", ["ply", "stl"])
def test_ply_and_stl_through_trimesh(fmt):
    import trimesh

    data = trimesh.Trimesh(TETRA_V, TETRA_F, process=False).export(file_type=fmt)
    mesh = load_mesh(data if isinstance(data, bytes) else data.encode(), fmt, 100)
    assert len(mesh.faces) == 4
    assert mesh.vertices.min() == 0.0 and mesh.vertices.max() == 1.0
    assert reason_of(b"solid garbage\nnot really", fmt) in ("parse_error", "empty")


@pytest.mark.parametrize("fmt", ["ply", "stl"])
def test_ply_and_stl_face_counts_are_checked_before_parsing(fmt):
    import trimesh

    data = trimesh.Trimesh(TETRA_V, TETRA_F, process=False).export(file_type=fmt)
    data = data if isinstance(data, bytes) else data.encode()
    assert reason_of(data, fmt, max_faces=3) == "too_large"
    if fmt == "stl":  # a binary STL header claiming 10^9 triangles is refused without reading them
        assert reason_of(b"\0" * 80 + (10**9).to_bytes(4, "little"), fmt, max_faces=100) == "too_large"


def test_utf8_bom_is_tolerated():
    v, f = parse_off(b"\xef\xbb\xbf" + tetra_off())
    assert len(f) == 4


def test_unknown_format_is_unsupported():
    assert reason_of(b"glTF", "glb") == "unsupported_format"


# ------------------------------------------------------------------------------------------------ clean-up


def test_clean_up_drops_degenerate_duplicate_faces_and_unreferenced_vertices():
    vertices = np.array(TETRA_V + [(9.0, 9.0, 9.0), (0.5, 0.0, 0.0)])  # 4: unreferenced, 5: on edge 0-1
    faces = np.array(
        TETRA_F
        + [
            (2, 1, 0),  # the first face with the other winding: a duplicate
            (0, 5, 1),  # collinear: zero area
            (3, 3, 1),  # repeated corner
            (0, 1, 3),
        ]
    )  # exact duplicate
    v, f, stats = clean_mesh(vertices, faces)
    assert stats == {
        "faces_in": 8,
        "vertices_in": 6,
        "degenerate_faces": 2,
        "duplicate_faces": 2,
        "unreferenced_vertices": 2,
    }
    np.testing.assert_array_equal(v, TETRA_V)
    np.testing.assert_array_equal(f, TETRA_F)  # the first occurrence is kept, in order


def test_clean_up_remaps_faces_after_dropping_vertices():
    vertices = np.array([(5.0, 5.0, 5.0)] + TETRA_V)  # an unused vertex first shifts every index
    faces = np.array(TETRA_F) + 1
    v, f, stats = clean_mesh(vertices, faces)
    assert stats["unreferenced_vertices"] == 1
    np.testing.assert_array_equal(v[f], np.array(TETRA_V)[np.array(TETRA_F)])


def test_clean_up_keeps_tiny_but_real_faces_and_source_coordinates():
    scale = 1e-4
    mesh = load_mesh(tetra_off(scale), "off", 10)
    assert len(mesh.faces) == 4 and mesh.cleanup["degenerate_faces"] == 0
    np.testing.assert_allclose(mesh.vertices, np.array(TETRA_V) * scale)  # not normalised
    big = load_mesh(tetra_off(1e4), "off", 10)
    assert big.vertices.max() == 1e4


def test_sha256_is_of_the_raw_bytes():
    import hashlib

    data = tetra_off()
    assert load_mesh(data, "off", 10).sha256 == hashlib.sha256(data).hexdigest()


# ------------------------------------------------------------------------------------------------ real files


def _declared_counts(data: bytes) -> tuple[int, int]:
    tokens = data[:200].replace(b"OFF", b" ", 1).split()
    return int(tokens[0]), int(tokens[1])


@pytest.mark.skipif(not (SHARED / "modelnet_samples").is_dir(), reason="shared data not available")
def test_real_modelnet_samples_parse_to_their_declared_counts():
    files = sorted((SHARED / "modelnet_samples").glob("*/train/*.off"))
    assert len(files) == 11
    quirks = {"glued": 0, "crlf": 0}
    for path in files:
        data = path.read_bytes()
        quirks["glued"] += data[3:4].isdigit()
        quirks["crlf"] += b"\r\n" in data
        n_v, n_f = _declared_counts(data)
        v, f = parse_off(data)
        assert v.shape == (n_v, 3) and f.shape == (n_f, 3), path.name  # all ModelNet faces are triangles
        mesh = load_mesh(data, "off", 10**7)
        assert 0 < len(mesh.faces) <= n_f and len(mesh.vertices) <= n_v
        assert mesh.cleanup["faces_in"] - mesh.cleanup["degenerate_faces"] - mesh.cleanup["duplicate_faces"] == len(
            mesh.faces
        )
    assert quirks["glued"] >= 3 and quirks["crlf"] >= 1  # the awkward files really are in the sample


@pytest.mark.skipif(not (SHARED / "modelnet_samples").is_dir(), reason="shared data not available")
def test_real_off_agrees_with_trimesh():
    import trimesh

    data = (SHARED / "modelnet_samples" / "chair" / "train" / "chair_0001.off").read_bytes()
    v, f = parse_off(data)
    ref = trimesh.load_mesh(io.BytesIO(data), file_type="off", process=False)
    np.testing.assert_allclose(v, ref.vertices)
    np.testing.assert_array_equal(f, ref.faces)
