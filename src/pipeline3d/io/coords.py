"""Coordinate ranges the pipeline can normalise without overflow or precision loss (reason code ``bad_scale``).

The cache centres every shape on its bounding box and scales it to the unit ball in float64, then stores float32.
Two things break that silently: coordinates so large that a squared norm overflows float32 anywhere it is computed
(point clouds are stored as float32 before normalisation), and a shape so small relative to its distance from the
origin that subtracting the centre leaves fewer significant bits than float32 keeps.
"""

from __future__ import annotations

import numpy as np

MAX_ABS_COORD = 1e18  # squared: 1e36, under float32's 3.4e38
MAX_OFFSET_RATIO = 1e8  # |coordinate| / extent: float64's 2^-52 * 1e8 = 2e-8 stays under float32's 2^-23 = 1.2e-7


def scale_problem(points: np.ndarray) -> str | None:
    """Why the finite (N, 3) ``points`` cannot be normalised faithfully, or None."""
    pts = np.asarray(points, dtype=np.float64)
    largest = float(np.abs(pts).max())
    if largest > MAX_ABS_COORD:
        return f"coordinates up to {largest:.3g} (more than {MAX_ABS_COORD:.0e}: squared norms overflow float32)"
    extent = float((pts.max(axis=0) - pts.min(axis=0)).max())
    if extent > 0 and largest / extent > MAX_OFFSET_RATIO:
        return (
            f"extent {extent:.3g} at distance {largest:.3g} from the origin (ratio above {MAX_OFFSET_RATIO:.0e}: "
            f"centring loses float32 precision)"
        )
    return None
