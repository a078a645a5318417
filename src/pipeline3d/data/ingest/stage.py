"""The whole ingest stage: plan every source, pool, choose, read and write manifest, rejects and item store."""

from __future__ import annotations

import collections
import json
import logging
import os

from ...io.archives import ArchiveRefused, open_raw
from ...io.itemstore import ItemStoreWriter
from ...io.rejects import REJECT_COLUMNS, Reject
from .choices import assign_labels, drop_duplicates, stratified_subset
from .layouts import Plan, detect_mesh_layout, ignorable_member, plan_clouds, plan_images, plan_meshes
from .payloads import ingest_clouds, ingest_members
from .spec import JSON_MAX_BYTES, STAGE, IngestResult, IngestSpec


def plan_archives(spec: IngestSpec, ignored: collections.Counter, logger: logging.Logger) -> Plan:
    """Scan every configured path (folder or archive) and plan its mesh / image items.

    A refused archive costs one rejects row and the other paths go on; layout ``refused`` means none was left.
    """
    prefetch = (lambda name: name.lower().endswith(".json")) if spec.kind == "image" else None
    raws, rejects = [], []
    for path in spec.path:
        try:
            raws.append(open_raw(path, spec.limits, prefetch=prefetch, prefetch_max_bytes=JSON_MAX_BYTES))
        except ArchiveRefused as exc:
            logger.error("%s refused as a whole: %s: %s", path, exc.reason, exc.detail)
            rejects.append(Reject(path, exc.reason, exc.detail))
    if not raws:
        return [], rejects, "refused"
    if spec.kind == "mesh":
        layout = spec.format
        if layout == "auto":  # one layout for the whole dataset, whichever path holds the telling files
            layout = detect_mesh_layout(m.name for raw in raws for m in raw.members if not ignorable_member(m.name))
    planned = []
    for raw in raws:
        if spec.kind == "mesh":
            items, refused, layout = plan_meshes(raw, spec, ignored, layout)
        else:
            items, refused, layout = plan_images(raw, spec, ignored)
        for p in items:
            p.raw, p.origin = raw, raw.label
        if len(raws) > 1:
            logger.info(
                "%s: %d items found, %d refused while scanning", raw.label, len(items), len(raw.rejects) + len(refused)
            )
        planned += items
        rejects += raw.rejects + refused
    return planned, rejects, layout


def ingest_dataset(
    spec: IngestSpec, items_path: str | os.PathLike, logger: logging.Logger | None = None
) -> IngestResult:
    """Ingest ``spec``'s sources; writes the item store and returns manifest rows and rejects (not yet written)."""
    logger = logger or logging.getLogger(f"pipeline3d.{STAGE}")
    counts: collections.Counter = collections.Counter()
    ignored: collections.Counter = collections.Counter()
    if spec.kind == "pointcloud":
        planned, rejects, layout = plan_clouds(spec)
    else:
        planned, rejects, layout = plan_archives(spec, ignored, logger)
    if layout == "refused":
        with ItemStoreWriter(items_path, spec.dataset, spec.kind):
            pass
        return IngestResult([], sorted(rejects), [], "refused", dict(counts))

    logger.info("layout %s: %d items found, %d refused while scanning", layout, len(planned), len(rejects))
    if not planned:
        logger.warning(
            "no items found in %s for kind %s / format %s: check the path and the layout",
            ", ".join(spec.path),
            spec.kind,
            spec.format,
        )
    if ignored:
        logger.info(
            "ignored %d files that are not items: %s",
            sum(ignored.values()),
            ", ".join(f"{k} {v}" for k, v in sorted(ignored.items())),
        )
    planned, dupes = drop_duplicates(planned)
    rejects += dupes
    class_names = assign_labels(planned, spec.class_names)
    chosen = stratified_subset(planned, spec.max_items)
    if len(chosen) < len(planned):
        logger.info(
            "max_items=%d: keeping %d of %d items (class-stratified)", spec.max_items, len(chosen), len(planned)
        )
    counts["found"], counts["selected"] = len(planned), len(chosen)

    if spec.kind == "pointcloud":
        rows, more = ingest_clouds(chosen, spec, items_path, logger)
    else:
        rows, more = ingest_members(chosen, spec, items_path, logger, counts)
    rejects += more
    rows.sort(key=lambda r: r["shape_id"])
    counts["accepted"], counts["rejected"] = len(rows), len(rejects)
    by_reason = collections.Counter(r.reason for r in rejects)
    logger.info(
        "accepted %d items, rejected %d%s",
        len(rows),
        len(rejects),
        f" ({', '.join(f'{k} {v}' for k, v in sorted(by_reason.items()))})" if by_reason else "",
    )
    if spec.kind == "mesh":
        logger.info(
            "clean-up: %d meshes changed; dropped %d degenerate faces, %d duplicate faces, %d unreferenced vertices",
            counts["meshes_cleaned"],
            counts["degenerate_faces"],
            counts["duplicate_faces"],
            counts["unreferenced_vertices"],
        )
    log_rejects(sorted(rejects), logger)
    return IngestResult(rows, sorted(rejects), class_names, layout, dict(counts))


REJECTS_LOGGED_PER_REASON = 20


def log_rejects(rejects: list[Reject], logger: logging.Logger, per_reason: int = REJECTS_LOGGED_PER_REASON) -> None:
    """A WARNING line for the first ``per_reason`` rejects of each reason and one summary line for the rest: a
    hostile archive of 200k bad members must not write a 40 MB log (rejects.parquet has every one)."""
    shown: collections.Counter = collections.Counter()
    for r in rejects:
        shown[r.reason] += 1
        if shown[r.reason] <= per_reason:
            logger.warning("rejected %s: %s: %s", r.source, r.reason, r.detail)
    for reason, n in sorted(shown.items()):
        if n > per_reason:
            logger.warning("... and %d more %s rejects (every reject is in rejects.parquet)", n - per_reason, reason)


MANIFEST_DTYPES = {
    "shape_id": "str",
    "dataset": "str",
    "kind": "str",
    "label": "int64",
    "label_name": "str",
    "source_split": "str",
    "source": "str",
    "sha256": "str",
    "n_vertices": "Int64",
    "n_faces": "Int64",
    "n_points": "Int64",
    "meta": "str",
    "format": "str",
}


def manifest_frame(rows: list[dict]):
    import pandas as pd

    cols = {c: [r[c] for r in rows] for c in MANIFEST_DTYPES}
    return pd.DataFrame({c: pd.array(v, dtype=MANIFEST_DTYPES[c]) for c, v in cols.items()})


def rejects_frame(rejects: list[Reject]):
    import pandas as pd

    rows = sorted(rejects)
    data = {
        "source": [r.source for r in rows],
        "stage": [STAGE] * len(rows),
        "reason": [r.reason for r in rows],
        "detail": [r.detail for r in rows],
    }
    return pd.DataFrame({c: pd.array(data[c], dtype="str") for c in REJECT_COLUMNS})


def run_ingest(
    params: dict, manifest_path, rejects_path, items_path, logger: logging.Logger | None = None
) -> IngestResult:
    """The stage: ingest, then write items.h5, manifest.parquet and rejects.parquet (each atomically)."""
    from ...io.atomic import write_parquet

    spec = IngestSpec.from_params(params)
    result = ingest_dataset(spec, items_path, logger)
    metadata = {
        "pipeline3d.class_names": json.dumps(result.class_names),
        "pipeline3d.dataset": spec.dataset,
        "pipeline3d.kind": spec.kind,
        "pipeline3d.layout": result.layout,
    }
    write_parquet(manifest_path, manifest_frame(result.rows), metadata=metadata)
    write_parquet(rejects_path, rejects_frame(result.rejects))
    return result
