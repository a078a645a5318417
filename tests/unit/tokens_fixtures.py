"""Token test helpers: tiny real cache shards (procedural meshes through the real cache builder), Morton codes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import trimesh

from pipeline3d.data.cache import CacheProfile, cache_mesh, cache_pointcloud
from pipeline3d.io.shards import ShardWriter, shard_of

PROFILE = CacheProfile(
    pc_points=256,
    pt_pool=400,
    pt_surface_ratio=0.5,
    pt_surface_sigma=0.02,
    n_views=4,
    rays_per_view=25,
    camera_radius=2.2,
    pc_grid=16,
    pc_dilate=1,
    df_grid=16,
    df_dilate=1,
    grid_mode="edt",
    band_voxels=2,
    voxel_pool_dist=False,
)
N_SHARDS = 2


def meshes() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """shape id -> (vertices, faces): five distinct small shapes in two classes."""
    shapes = {
        "ds/ring/torus": trimesh.creation.torus(
            major_radius=0.6, minor_radius=0.25, major_sections=16, minor_sections=8
        ),
        "ds/ring/annulus": trimesh.creation.annulus(r_min=0.4, r_max=0.8, height=0.3, sections=16),
        "ds/solid/box": trimesh.creation.box(extents=(1.0, 0.6, 0.3)),
        "ds/solid/ball": trimesh.creation.icosphere(subdivisions=2),
        "ds/solid/capsule": trimesh.creation.capsule(height=1.0, radius=0.3, count=(8, 8)),
    }
    return {
        sid: (np.asarray(m.vertices, dtype=np.float64), np.asarray(m.faces, dtype=np.int64))
        for sid, m in shapes.items()
    }


LABELS = {sid: int(sid.split("/")[1] == "solid") for sid in meshes()}


def write_mesh_cache(root: Path) -> tuple[Path, list[Path]]:
    """Shards (by the stable shard hash, as the cache stage does) + index.parquet; returns (index, shards)."""
    shapes = meshes()
    shards, rows = [], []
    for s in range(N_SHARDS):
        path = root / f"shard-{s:04d}.h5"
        with ShardWriter(
            path, dataset="ds", shard=s, n_shards=N_SHARDS, kind="mesh", profile=PROFILE.as_dict()
        ) as writer:
            mine = [sid for sid in sorted(shapes) if shard_of(sid, N_SHARDS) == s]
            for row, sid in enumerate(mine):
                writer.append(sid, cache_mesh(*shapes[sid], sid, 0, PROFILE))
                rows.append((sid, s, path.name, row))
        shards.append(path)
    index = root / "index.parquet"
    pd.DataFrame(rows, columns=["shape_id", "shard", "shard_file", "row"]).to_parquet(index)
    return index, shards


def write_labelled_mesh_dataset(
    root: Path,
    split_of: dict[str, str],
    class_names: dict[int, str],
    encoder_tokens: dict,
    groups: dict[str, str] | None = None,
) -> dict[str, str]:
    """The tiny mesh cache plus what stage jobs read beside it: manifest.parquet, ttv.parquet (``split_of``: shape id
    -> train | val | test; ``groups``: near-duplicate group per shape, default its own id) and a random-init
    query_nepa encoder exported for ``encoder_tokens``. Returns the job's file names (manifest, ttv, index, shards,
    weights, encoder_json)."""
    import torch

    from pipeline3d.models.registry import create_encoder
    from pipeline3d.tokens.layout import n_positions
    from pipeline3d.train.export import save_encoder

    index, shards = write_mesh_cache(root)
    ids = sorted(LABELS)
    labels = [LABELS[s] for s in ids]
    pd.DataFrame(
        {
            "shape_id": ids,
            "dataset": "ds",
            "kind": "mesh",
            "label": labels,
            "label_name": [class_names[x] for x in labels],
            "meta": "{}",
        }
    ).to_parquet(root / "manifest.parquet")
    groups = {sid: sid for sid in ids} | dict(groups or {})
    pd.DataFrame(
        {"shape_id": ids, "label": labels, "split": [split_of[s] for s in ids], "group": [groups[s] for s in ids]}
    ).to_parquet(root / "ttv.parquet")
    torch.manual_seed(0)
    encoder = create_encoder("query_nepa_tiny", d_model=16, depth=1, heads=2, n_positions=n_positions(encoder_tokens))
    save_encoder(
        encoder,
        root / "encoder.safetensors",
        root / "encoder.json",
        extra={"method": "nepa", "causal": True, "tokens": encoder_tokens},
    )
    return {
        "manifest": str(root / "manifest.parquet"),
        "ttv": str(root / "ttv.parquet"),
        "index": str(index),
        "shards": [str(s) for s in shards],
        "weights": str(root / "encoder.safetensors"),
        "encoder_json": str(root / "encoder.json"),
    }


def write_pointcloud_shard(path: Path) -> list[str]:
    """A point-cloud item cache (no mesh-derived arrays) of two scans; returns their ids."""
    rng = np.random.default_rng(0)
    ids = ["scan/c/a", "scan/c/b"]
    with ShardWriter(path, dataset="scan", shard=0, n_shards=1, kind="pointcloud", profile=PROFILE.as_dict()) as writer:
        for k, sid in enumerate(ids):
            points = rng.normal(size=(600, 3))
            points /= np.linalg.norm(points, axis=1, keepdims=True)
            writer.append(sid, cache_pointcloud(points * (1.0, 1.0, 0.5 + k), sid, 0, PROFILE))
    return ids


def naive_morton(points: np.ndarray) -> np.ndarray:
    """Bit-by-bit interleave of 10-bit cells of (x+1)/2 (x in the lowest bit): the reference definition."""
    cells = np.clip(np.floor((points + 1.0) / 2.0 * 1024), 0, 1023).astype(np.int64)
    code = np.zeros(len(points), dtype=np.int64)
    for bit in range(10):
        for axis in range(3):
            code |= ((cells[:, axis] >> bit) & 1) << (3 * bit + axis)
    return code
