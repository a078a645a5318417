"""Parametric object generators for the demo data set.

Each generator draws its proportions from the given numpy Generator and assembles a recognisable object from
trimesh primitives (boxes, cylinders, capsules, spheres, solids of revolution, tube arcs). The parts are simply
concatenated: the union need not be watertight, but every mesh is finite and free of degenerate faces.

Generators build in a Z-up frame (trimesh's primitives are Z-aligned); ``make_shape`` turns the result into the
ShapeNetCore.v2 convention: Y up, bounding-box centre at the origin, bounding-box diagonal 1. Vertices are rounded to
6 decimals, the precision the OBJ writer keeps, so the in-memory mesh is the archived one.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import trimesh

Generator = Callable[[np.random.Generator], list[trimesh.Trimesh]]

DECIMALS = 6
SECTIONS = 20  # facets around cylinders and solids of revolution: round enough, still a few hundred faces
_Z_UP_TO_Y_UP = trimesh.transformations.rotation_matrix(-np.pi / 2, [1.0, 0.0, 0.0])


class UnknownClassError(ValueError):
    """A demo class name without a generator."""


# ---------------------------------------------------------------------------------------------- primitives


def _translate(mesh: trimesh.Trimesh, offset) -> trimesh.Trimesh:
    mesh.apply_translation(np.asarray(offset, dtype=np.float64))
    return mesh


def box(extents, center) -> trimesh.Trimesh:
    return _translate(trimesh.creation.box(extents=np.asarray(extents, dtype=np.float64)), center)


def box_between(lo, hi) -> trimesh.Trimesh:
    lo, hi = np.asarray(lo, dtype=np.float64), np.asarray(hi, dtype=np.float64)
    return box(hi - lo, (lo + hi) / 2)


def cylinder_z(radius: float, z0: float, z1: float, xy=(0.0, 0.0), sections: int = SECTIONS) -> trimesh.Trimesh:
    """A Z-aligned cylinder from height z0 to z1 centred on (x, y)."""
    mesh = trimesh.creation.cylinder(radius=radius, height=z1 - z0, sections=sections)
    return _translate(mesh, (xy[0], xy[1], (z0 + z1) / 2))


def cylinder_between(radius: float, start, end, sections: int = SECTIONS) -> trimesh.Trimesh:
    return trimesh.creation.cylinder(radius=radius, segment=np.array([start, end], dtype=np.float64), sections=sections)


def ellipsoid(radii, center, subdivisions: int = 2) -> trimesh.Trimesh:
    mesh = trimesh.creation.icosphere(subdivisions=subdivisions, radius=1.0)
    mesh.apply_scale(np.asarray(radii, dtype=np.float64))
    return _translate(mesh, center)


def revolved(profile, sections: int = SECTIONS) -> trimesh.Trimesh:
    """A solid of revolution about Z from a closed counter-clockwise (radius, height) profile."""
    return trimesh.creation.revolve(np.asarray(profile, dtype=np.float64), sections=sections)


def shell(r0: float, r1: float, z0: float, z1: float, thickness: float, sections: int = SECTIONS) -> trimesh.Trimesh:
    """A thick conical shell (lamp shade, open at both ends): radius r0 at height z0 to r1 at z1."""
    return revolved([(r0, z0), (r1, z1), (r1 - thickness, z1), (r0 - thickness, z0), (r0, z0)], sections)


def tube_arc(
    major: float, minor: float, angle0: float, angle1: float, n_major: int = 12, n_minor: int = 8
) -> trimesh.Trimesh:
    """A closed tube of radius ``minor`` along an arc of radius ``major`` in the XZ plane (a mug handle).

    Angles are measured from +X towards +Z; both ends are capped with a fan.
    """
    theta = np.linspace(angle0, angle1, n_major + 1)
    phi = np.linspace(0.0, 2 * np.pi, n_minor, endpoint=False)
    radial = np.stack([np.cos(theta), np.zeros_like(theta), np.sin(theta)], axis=1)
    centre = major * radial
    y_axis = np.array([0.0, 1.0, 0.0])
    ring = centre[:, None, :] + minor * (
        np.cos(phi)[None, :, None] * radial[:, None, :] + np.sin(phi)[None, :, None] * y_axis
    )
    vertices = [ring.reshape(-1, 3), centre[[0, -1]]]
    faces = []
    for i in range(n_major):
        for j in range(n_minor):
            a, b = i * n_minor + j, i * n_minor + (j + 1) % n_minor
            c, d = a + n_minor, b + n_minor
            faces += [(a, b, d), (a, d, c)]
    start_cap, end_cap = (n_major + 1) * n_minor, (n_major + 1) * n_minor + 1
    last = n_major * n_minor
    for j in range(n_minor):
        faces.append((start_cap, (j + 1) % n_minor, j))
        faces.append((end_cap, last + j, last + (j + 1) % n_minor))
    return trimesh.Trimesh(np.concatenate(vertices), np.array(faces, dtype=np.int64), process=False)


def sheared(mesh: trimesh.Trimesh, x_per_y: float = 0.0, x_per_z: float = 0.0) -> trimesh.Trimesh:
    """Shear along X proportionally to Y and/or Z (wing sweep, raked fin)."""
    matrix = np.eye(4)
    matrix[0, 1], matrix[0, 2] = x_per_y, x_per_z
    mesh.apply_transform(matrix)
    return mesh


def tapered_box(
    length: float, width: float, height: float, top_length: float, top_shift: float, base_center
) -> trimesh.Trimesh:
    """A box whose top face is shorter along X (a car cabin with raked windscreens); base centred at base_center."""
    mesh = trimesh.creation.box(extents=[length, width, height])
    vertices = mesh.vertices.copy()
    top = vertices[:, 2] > 0
    vertices[top, 0] = vertices[top, 0] * (top_length / length) + top_shift
    mesh = trimesh.Trimesh(vertices, mesh.faces, process=False)
    return _translate(mesh, (base_center[0], base_center[1], base_center[2] + height / 2))


# ---------------------------------------------------------------------------------------------- the classes


def chair(rng: np.random.Generator) -> list[trimesh.Trimesh]:
    width, depth = rng.uniform(0.40, 0.60), rng.uniform(0.40, 0.55)
    seat_h, seat_t = rng.uniform(0.40, 0.50), rng.uniform(0.03, 0.07)
    back_h, back_t = rng.uniform(0.30, 0.55), rng.uniform(0.03, 0.06)
    leg, round_legs = rng.uniform(0.025, 0.05), rng.random() < 0.5
    tilt, arms = rng.uniform(0.0, 0.25), rng.random() < 0.35
    parts = [box([width, depth, seat_t], [0, 0, seat_h - seat_t / 2])]
    for sx in (-1, 1):
        for sy in (-1, 1):
            x, y = sx * (width / 2 - leg), sy * (depth / 2 - leg)
            if round_legs:
                parts.append(cylinder_z(leg * 0.6, 0.0, seat_h - seat_t, (x, y), sections=12))
            else:
                parts.append(box_between([x - leg / 2, y - leg / 2, 0.0], [x + leg / 2, y + leg / 2, seat_h - seat_t]))
    back = box([width, back_t, back_h], [0, 0, back_h / 2])
    back.apply_transform(trimesh.transformations.rotation_matrix(-tilt, [1.0, 0.0, 0.0]))  # top leans back (+Y)
    parts.append(_translate(back, [0, depth / 2 - back_t / 2, seat_h]))
    if arms:
        arm_h = rng.uniform(0.18, 0.26)
        for sx in (-1, 1):
            x = sx * (width / 2 - 0.02)
            parts.append(box([0.04, depth * 0.85, 0.03], [x, 0.0, seat_h + arm_h]))
            post = -depth * 0.35  # the front post holding the arm rest
            parts.append(box_between([x - 0.015, post, seat_h], [x + 0.015, post + 0.03, seat_h + arm_h]))
    return parts


def table(rng: np.random.Generator) -> list[trimesh.Trimesh]:
    height, top_t = rng.uniform(0.60, 0.78), rng.uniform(0.03, 0.06)
    if rng.random() < 0.3:  # round pedestal table
        radius = rng.uniform(0.45, 0.65)
        return [
            cylinder_z(radius, height - top_t, height, sections=32),
            cylinder_z(rng.uniform(0.04, 0.07), 0.03, height - top_t, sections=12),
            cylinder_z(rng.uniform(0.20, 0.32), 0.0, 0.03, sections=24),
        ]
    width, depth = rng.uniform(0.9, 1.6), rng.uniform(0.5, 0.9)
    leg, inset = rng.uniform(0.04, 0.08), rng.uniform(0.02, 0.10)
    round_legs, stretcher = rng.random() < 0.4, rng.random() < 0.3
    parts = [box([width, depth, top_t], [0, 0, height - top_t / 2])]
    for sx in (-1, 1):
        for sy in (-1, 1):
            x, y = sx * (width / 2 - inset - leg / 2), sy * (depth / 2 - inset - leg / 2)
            if round_legs:
                parts.append(cylinder_z(leg / 2, 0.0, height - top_t, (x, y), sections=12))
            else:
                parts.append(box_between([x - leg / 2, y - leg / 2, 0.0], [x + leg / 2, y + leg / 2, height - top_t]))
    if stretcher:  # a low shelf between the legs
        parts.append(box([width - 2 * inset, depth - 2 * inset, 0.02], [0, 0, height * 0.25]))
    return parts


def lamp(rng: np.random.Generator) -> list[trimesh.Trimesh]:
    base_r, base_h = rng.uniform(0.08, 0.16), rng.uniform(0.02, 0.05)
    pole_r, pole_h = rng.uniform(0.008, 0.018), rng.uniform(0.35, 0.75)
    shade_r0 = rng.uniform(0.12, 0.22)
    shade_r1 = shade_r0 * rng.uniform(0.4, 0.8)
    shade_h = rng.uniform(0.12, 0.25)
    # arc lamp: the shade hangs off a horizontal arm, clear of the pole, so the pole is taller
    arm = shade_r0 + rng.uniform(0.05, 0.15) if rng.random() < 0.3 else 0.0
    pole_h += 2.5 * arm
    parts = [cylinder_z(base_r, 0.0, base_h), cylinder_z(pole_r, base_h, pole_h, sections=12)]
    if arm:
        parts.append(cylinder_between(pole_r, [0.0, 0.0, pole_h], [arm, 0.0, pole_h], sections=12))
        parts.append(cylinder_z(pole_r, pole_h - 0.08, pole_h, (arm, 0.0), sections=12))
        shade_top = pole_h - 0.06
    else:
        shade_top = pole_h + shade_h * 0.35
    bulb = ellipsoid([0.035] * 3, [arm, 0.0, shade_top - shade_h * 0.45], subdivisions=1)
    shade = shell(shade_r0, shade_r1, -shade_h, 0.0, thickness=0.006)
    return parts + [bulb, _translate(shade, [arm, 0.0, shade_top])]


def mug(rng: np.random.Generator) -> list[trimesh.Trimesh]:
    radius, height = rng.uniform(0.035, 0.055), rng.uniform(0.08, 0.12)
    wall = rng.uniform(0.004, 0.008)
    body = revolved(
        [(0.0, 0.0), (radius, 0.0), (radius, height), (radius - wall, height), (radius - wall, wall), (0.0, wall)],
        sections=24,
    )
    major = height * rng.uniform(0.28, 0.40)
    handle = tube_arc(major, rng.uniform(0.005, 0.009), -np.pi * 0.55, np.pi * 0.55)
    handle.apply_scale([rng.uniform(0.8, 1.3), 1.0, 1.0])  # rounder or flatter handle
    return [body, _translate(handle, [radius - wall, 0.0, height * rng.uniform(0.45, 0.55)])]


def bottle(rng: np.random.Generator) -> list[trimesh.Trimesh]:
    radius, body_h = rng.uniform(0.03, 0.05), rng.uniform(0.12, 0.20)
    shoulder_h, neck_h = rng.uniform(0.02, 0.07), rng.uniform(0.03, 0.08)
    neck_r = radius * rng.uniform(0.25, 0.45)
    cap_h = rng.uniform(0.012, 0.025)
    s = np.linspace(0.0, 1.0, 6)[1:-1]
    shoulder = [
        (neck_r + (radius - neck_r) * np.cos(t * np.pi / 2), body_h + shoulder_h * np.sin(t * np.pi / 2)) for t in s
    ]
    top = body_h + shoulder_h + neck_h
    body = revolved(
        [
            (0.0, 0.0),
            (radius, 0.0),
            (radius, body_h),
            *shoulder,
            (neck_r, body_h + shoulder_h),
            (neck_r, top),
            (0.0, top),
        ]
    )
    return [body, cylinder_z(neck_r * 1.2, top - cap_h * 0.3, top + cap_h, sections=16)]


def bowl(rng: np.random.Generator) -> list[trimesh.Trimesh]:
    rim_r = rng.uniform(0.07, 0.12)
    depth = rim_r * rng.uniform(0.35, 0.60)
    wall = rng.uniform(0.004, 0.009)
    foot_r, foot_h = rim_r * rng.uniform(0.35, 0.55), rng.uniform(0.005, 0.012)
    angles = np.linspace(0.0, np.pi / 2, 9)
    outer = [(rim_r * np.sin(a), foot_h + depth * (1 - np.cos(a))) for a in angles if rim_r * np.sin(a) > foot_r]
    inner = [((rim_r - wall) * np.sin(a), foot_h + wall + (depth - wall) * (1 - np.cos(a))) for a in angles[::-1]]
    profile = [
        (0.0, 0.0),
        (foot_r, 0.0),
        (foot_r, foot_h),
        *outer,
        (rim_r, foot_h + depth),
        *inner[:-1],
        (0.0, foot_h + wall),
    ]
    return [revolved(profile, sections=28)]


def shelf(rng: np.random.Generator) -> list[trimesh.Trimesh]:
    width, depth, height = rng.uniform(0.6, 1.2), rng.uniform(0.25, 0.40), rng.uniform(0.8, 1.9)
    board = rng.uniform(0.015, 0.03)
    n_shelves, back = int(rng.integers(2, 6)), rng.random() < 0.6
    parts = [box([board, depth, height], [sx * (width / 2 - board / 2), 0, height / 2]) for sx in (-1, 1)]
    inner_w = width - 2 * board
    for z in np.linspace(board / 2, height - board / 2, n_shelves + 1):
        parts.append(box([inner_w, depth, board], [0, 0, z]))
    if back:
        parts.append(box([inner_w, board / 2, height], [0, depth / 2 - board / 4, height / 2]))
    return parts


def bed(rng: np.random.Generator) -> list[trimesh.Trimesh]:
    length, width = rng.uniform(1.9, 2.2), rng.uniform(0.9, 1.8)
    leg_h, frame_h, mattress_h = rng.uniform(0.05, 0.15), rng.uniform(0.15, 0.30), rng.uniform(0.15, 0.25)
    head_h, board = rng.uniform(0.40, 0.80), rng.uniform(0.04, 0.07)
    footboard = rng.random() < 0.5
    n_pillows = 1 if width < 1.2 else 2
    frame_top = leg_h + frame_h
    parts = [
        box([width, length, frame_h], [0, 0, leg_h + frame_h / 2]),
        box([width - 0.04, length - 0.06, mattress_h], [0, 0.01, frame_top + mattress_h / 2]),
        box([width, board, frame_top + head_h], [0, length / 2 + board / 2, (frame_top + head_h) / 2]),
    ]
    if footboard:
        foot_h = frame_top + mattress_h * rng.uniform(0.6, 1.4)
        parts.append(box([width, board, foot_h], [0, -length / 2 - board / 2, foot_h / 2]))
    for sx in (-1, 1):
        for sy in (-1, 1):
            x, y = sx * (width / 2 - 0.05), sy * (length / 2 - 0.05)
            parts.append(box_between([x - 0.03, y - 0.03, 0.0], [x + 0.03, y + 0.03, leg_h]))
    pillow_w = (width - 0.1) / n_pillows
    for i in range(n_pillows):
        x = -width / 2 + 0.05 + pillow_w * (i + 0.5)
        parts.append(ellipsoid([pillow_w * 0.42, 0.18, 0.06], [x, length / 2 - 0.25, frame_top + mattress_h + 0.04]))
    return parts


def airplane(rng: np.random.Generator) -> list[trimesh.Trimesh]:
    length, radius = rng.uniform(0.8, 1.2), rng.uniform(0.04, 0.07)
    span, chord = rng.uniform(0.8, 1.3) * length, rng.uniform(0.12, 0.22)
    sweep, wing_x = rng.uniform(0.0, 0.7), rng.uniform(-0.08, 0.08) * length
    tail_span, fin_h = span * rng.uniform(0.25, 0.40), rng.uniform(0.10, 0.18)
    n_engines = int(rng.choice([0, 2, 4]))
    fuselage = trimesh.creation.capsule(height=length - 2 * radius, radius=radius, count=[16, 8])
    fuselage.apply_transform(trimesh.transformations.rotation_matrix(np.pi / 2, [0.0, 1.0, 0.0]))  # along X
    parts = [fuselage]

    def wing_pair(half_span: float, wing_chord: float, x: float, z: float, thickness: float) -> None:
        for side in (-1, 1):
            half = box_between([-wing_chord / 2, 0.0, -thickness / 2], [wing_chord / 2, half_span, thickness / 2])
            sheared(half, x_per_y=-sweep)
            if side < 0:
                # trimesh flips the face winding of a mirrored mesh itself, so normals stay outward
                half.apply_transform(trimesh.transformations.reflection_matrix([0, 0, 0], [0, 1, 0]))
            parts.append(_translate(half, [x, 0.0, z]))

    wing_pair(span / 2, chord, wing_x, -radius * 0.3, 0.015)
    tail_x = -length / 2 + chord * 0.45
    wing_pair(tail_span / 2, chord * 0.6, tail_x, radius * 0.2, 0.012)
    fin = box_between([-chord * 0.35, -0.006, 0.0], [chord * 0.35, 0.006, fin_h])
    parts.append(_translate(sheared(fin, x_per_z=-0.8), [tail_x, 0.0, radius * 0.6]))
    for i in range(n_engines):
        y = (span / 2) * (0.35 if i < 2 else 0.65) * (1 if i % 2 == 0 else -1)
        x = wing_x - sweep * abs(y) + chord * 0.3
        parts.append(
            cylinder_between(radius * 0.45, [x - 0.12, y, -radius * 0.9], [x + 0.05, y, -radius * 0.9], sections=14)
        )
    return parts


def car(rng: np.random.Generator) -> list[trimesh.Trimesh]:
    length, width = rng.uniform(0.9, 1.3), rng.uniform(0.40, 0.55)
    body_h, wheel_r = rng.uniform(0.12, 0.20), rng.uniform(0.07, 0.11)
    wheel_w = rng.uniform(0.05, 0.08)
    cabin_len, cabin_h = length * rng.uniform(0.40, 0.75), rng.uniform(0.10, 0.17)
    cabin_x, rake = length * rng.uniform(-0.15, 0.05), rng.uniform(0.55, 0.85)
    floor = wheel_r * 0.9
    parts = [
        box([length, width, body_h], [0, 0, floor + body_h / 2]),
        tapered_box(
            cabin_len,
            width * 0.9,
            cabin_h,
            cabin_len * rake,
            -cabin_len * (1 - rake) * 0.2,
            [cabin_x, 0.0, floor + body_h],
        ),
    ]
    for sx in (-1, 1):
        for sy in (-1, 1):
            x, y = sx * (length / 2 - 1.4 * wheel_r), sy * (width / 2 - wheel_w / 2 + 0.01)
            parts.append(cylinder_between(wheel_r, [x, y - wheel_w / 2, wheel_r], [x, y + wheel_w / 2, wheel_r]))
    return parts


GENERATORS: dict[str, Generator] = {
    "chair": chair,
    "table": table,
    "lamp": lamp,
    "mug": mug,
    "bottle": bottle,
    "bowl": bowl,
    "shelf": shelf,
    "bed": bed,
    "airplane": airplane,
    "car": car,
}
KNOWN_CLASSES: tuple[str, ...] = tuple(GENERATORS)


def check_classes(classes) -> None:
    """Raise UnknownClassError naming every class without a generator."""
    unknown = [c for c in classes if c not in GENERATORS]
    if unknown:
        raise UnknownClassError(
            f"demo.classes: no generator for {', '.join(map(repr, unknown))} "
            f"(known classes: {', '.join(KNOWN_CLASSES)})"
        )


# ---------------------------------------------------------------------------------------------- assembly


def check_mesh(mesh: trimesh.Trimesh, what: str) -> None:
    """Raise ValueError (naming ``what``) unless the mesh is finite, non-empty and without degenerate faces."""
    if len(mesh.faces) == 0 or len(mesh.vertices) < 3:
        raise ValueError(f"{what}: empty mesh")
    if not np.isfinite(mesh.vertices).all():
        raise ValueError(f"{what}: non-finite vertices")
    if mesh.faces.min() < 0 or mesh.faces.max() >= len(mesh.vertices):
        raise ValueError(f"{what}: face index out of range")
    if mesh.area_faces.min() <= 1e-12:
        raise ValueError(f"{what}: degenerate faces")


def normalize(mesh: trimesh.Trimesh) -> trimesh.Trimesh:
    """ShapeNetCore.v2 normalisation: bounding-box centre at the origin, bounding-box diagonal 1."""
    lo, hi = mesh.bounds
    vertices = (mesh.vertices - (lo + hi) / 2) / np.linalg.norm(hi - lo)
    return trimesh.Trimesh(vertices, mesh.faces, process=False)


def finish(mesh: trimesh.Trimesh) -> trimesh.Trimesh:
    """Round to the archived precision, drop faces that became degenerate, and tidy the vertex list."""
    vertices = np.round(mesh.vertices, DECIMALS) + 0.0  # + 0.0 turns -0.0 into 0.0 for the text writer
    out = trimesh.Trimesh(vertices, mesh.faces, process=True)  # merges coincident vertices of touching parts
    out.update_faces(out.nondegenerate_faces(height=1e-9))
    out.remove_unreferenced_vertices()
    return out


def make_shape(class_name: str, rng: np.random.Generator) -> trimesh.Trimesh:
    """One object of ``class_name`` drawn from ``rng``: Y up, bbox centred, bbox diagonal 1, rounded vertices."""
    check_classes([class_name])
    parts = GENERATORS[class_name](rng)
    mesh = trimesh.util.concatenate(parts)
    mesh.apply_transform(_Z_UP_TO_Y_UP)
    mesh = finish(normalize(mesh))
    check_mesh(mesh, f"demo {class_name}")
    return mesh


def jittered(mesh: trimesh.Trimesh, rng: np.random.Generator, sigma: float) -> trimesh.Trimesh:
    """A near-duplicate: every vertex moved by Gaussian noise of ``sigma`` (in units of the bbox diagonal)."""
    moved = trimesh.Trimesh(mesh.vertices + rng.normal(0.0, sigma, size=mesh.vertices.shape), mesh.faces, process=False)
    out = finish(normalize(moved))
    check_mesh(out, "demo near-duplicate")
    return out
