"""Build one cache shard: every manifest row of the shard -> one cache row, failures recorded, not fatal."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from ..data.cache.build import CacheProfile, StageTimer, cache_mesh, cache_pointcloud
from ..data.cache.errors import ShapeError
from ..io.cache_schema import profile_of
from ..io.itemstore import ItemStore
from ..io.shards import ShardWriter, array_codecs, shard_of
from ..io.tables import read_parquet
from ..log import Progress

CACHEABLE_KINDS = ("mesh", "pointcloud")


class ShardJobError(ValueError):
    """A problem with the job's inputs or configuration (not with one shape)."""


def shard_ids(manifest_path: str | Path, store: ItemStore, shard: int, n_shards: int) -> list[str]:
    """The shape ids of ``shard``, in manifest order; the manifest and the item store must list the same ids."""
    try:
        ids = read_parquet(manifest_path, columns=["shape_id"])["shape_id"].astype(str).tolist()
    except (OSError, ValueError, KeyError) as exc:
        raise ShardJobError(f"{manifest_path}: cannot read the manifest's shape_id column: {exc}") from exc
    if ids != store.shape_ids:
        raise ShardJobError(
            f"{manifest_path} and {store.path} disagree ({len(ids)} vs {len(store.shape_ids)} "
            "shape ids, or a different order): rebuild the ingest outputs together"
        )
    return [sid for sid in ids if shard_of(sid, n_shards) == shard]


def build_shard(
    params: dict,
    shard: int,
    manifest_path: str | Path,
    items_path: str | Path,
    out_path: str | Path,
    logger: logging.Logger,
) -> tuple[int, list[tuple[str, str, str]], dict[str, float]]:
    """Write the shard; returns (shapes cached, failures (shape_id, reason, detail), seconds per stage)."""
    cache = params["cache"]
    n_shards = int(cache["shards"])
    if not 0 <= shard < n_shards:
        raise ShardJobError(f"shard {shard} is outside 0..{n_shards - 1} (cache.shards = {n_shards})")
    profile = CacheProfile.from_config(cache)
    seed = int(params["seed"])
    single_cpu = int(cache.get("threads", 1)) == 1
    timer = StageTimer()
    with ItemStore(items_path) as store:
        if store.kind not in CACHEABLE_KINDS:
            raise ShardJobError(f"{items_path}: a {store.kind!r} dataset has no shape cache")
        ids = shard_ids(manifest_path, store, shard, n_shards)
        logger.info(
            "shard %d/%d of %s: %d of %d %s items", shard, n_shards, params["dataset"], len(ids), len(store), store.kind
        )
        progress = Progress(logger, len(ids), "cached", every=100)
        start = time.perf_counter()
        with ShardWriter(
            out_path,
            dataset=params["dataset"],
            shard=shard,
            n_shards=n_shards,
            kind=store.kind,
            profile=profile_of(cache),
            compression=array_codecs(cache["compression"]),
        ) as writer:
            for shape_id in ids:
                try:
                    with timer("load"):
                        row = store.row_of(shape_id)
                        data = store.mesh(row) if store.kind == "mesh" else store.points(row)
                    if store.kind == "mesh":
                        arrays = cache_mesh(*data, shape_id, seed, profile, timer, single_cpu=single_cpu)
                    else:
                        arrays = cache_pointcloud(data, shape_id, seed, profile, timer)
                except ShapeError as exc:
                    logger.warning("%s: not cached (%s: %s)", shape_id, exc.reason, exc.detail)
                    writer.record_failure(shape_id, exc.reason, exc.detail)
                except Exception as exc:  # one bad shape must not cost the shard
                    logger.warning("%s: not cached (unexpected %s)", shape_id, type(exc).__name__, exc_info=True)
                    writer.record_failure(shape_id, "error", f"{type(exc).__name__}: {exc}")
                else:
                    with timer("write"):
                        writer.append(shape_id, arrays)
                progress.step()
            failures = list(writer.failed)
        timer.seconds["total"] = time.perf_counter() - start
    return len(ids) - len(failures), failures, dict(timer.seconds)
