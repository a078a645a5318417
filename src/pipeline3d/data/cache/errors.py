"""The error a single shape raises when it cannot be cached (the shard job records it and goes on)."""

from __future__ import annotations

# Reason codes of cache rejects (the first five share ingest's vocabulary, pipeline3d.io.rejects.REASONS).
REASONS: dict[str, str] = {
    "empty": "no vertices, no faces or no points",
    "nonfinite": "NaN or infinite coordinates",
    "bad_scale": "coordinates too large or too far from the origin for the shape's extent to normalise",
    "bad_index": "a face refers to a vertex that does not exist",
    "degenerate": "no face with positive area / zero extent",
    "too_few_points": "a point cloud with fewer points than PCA normals need",
    "missing_item": "the manifest lists a shape the item store does not hold",
    "distance_failed": "the distance engine returned no closest point",
    "error": "an unexpected exception while caching this shape (detail has the type and message)",
}


class ShapeError(ValueError):
    """A shape that cannot be cached; ``reason`` is a code of ``REASONS``, ``detail`` the message."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
