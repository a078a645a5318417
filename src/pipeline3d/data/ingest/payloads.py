"""Reading, parsing (in worker processes when workers > 1) and storing the planned items, in order."""

from __future__ import annotations

import collections
import hashlib
import json
import logging
import multiprocessing
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np

from ...io.h5clouds import CloudFile, check_cloud
from ...io.images import inspect_image
from ...io.itemstore import ItemStore, ItemStoreWriter
from ...io.meshes import load_mesh
from ...io.rejects import ItemError, Reject
from ...log import Progress
from .spec import IngestSpec, Planned


def parse_payload(kind: str, fmt: str, data: bytes, max_faces: int) -> tuple:
    """Worker entry point: ("ok", result) or ("reject", reason, detail); never raises for bad data."""
    try:
        if kind == "mesh":
            return ("ok", load_mesh(data, fmt, max_faces))
        info = inspect_image(data)
        return ("ok", (info, hashlib.sha256(data).hexdigest()))
    except ItemError as exc:
        return ("reject", exc.reason, exc.detail)
    except MemoryError:
        return ("reject", "too_large", "out of memory while parsing")
    except Exception as exc:  # a malformed file must cost one reject row, never the whole ingest
        return ("reject", "parse_error", f"unexpected {type(exc).__name__}: {exc}")


class OrderedPool:
    """Map a function over jobs in worker processes (or inline for one worker), yielding results in job order.

    At most ``window`` jobs are in flight, so memory stays bounded however many items there are.
    """

    def __init__(self, workers: int, window: int | None = None):
        self.workers = max(1, int(workers))
        self.window = window or 4 * self.workers
        self._ex: ProcessPoolExecutor | None = None

    def __enter__(self) -> "OrderedPool":
        if self.workers > 1:
            import pandas  # noqa: F401  (the parsers' fast path; imported once here, before the workers fork)

            # fork is cheap and safe here (no threads yet, the item store is opened afterwards); spawn elsewhere
            method = "fork" if sys.platform.startswith("linux") else "spawn"
            self._ex = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context(method))
            # start every worker now, before any output file is open: a worker forked later would inherit the
            # item store's file descriptor and its HDF5 lock, and the spool could not be reopened for reading
            self._ex.submit(os.getpid).result()
        return self

    def __exit__(self, *exc) -> None:
        if self._ex is not None:
            self._ex.shutdown(wait=True, cancel_futures=True)

    def map(self, fn: Callable, jobs: Iterable[tuple[Any, tuple]]) -> Iterator[tuple[Any, Any]]:
        if self._ex is None:
            for ctx, args in jobs:
                yield ctx, fn(*args)
            return
        pending: collections.deque = collections.deque()
        for ctx, args in jobs:
            pending.append((ctx, self._ex.submit(fn, *args)))
            if len(pending) >= self.window:
                ctx0, fut = pending.popleft()
                yield ctx0, fut.result()
        while pending:
            ctx0, fut = pending.popleft()
            yield ctx0, fut.result()


class ItemSink:
    """Writes accepted items to the item store in shape-id order.

    Items that arrive in order (directories, zips, h5) go straight into the store; a streamed tar delivers them
    in archive order, so they go to a spool file beside the output first and are copied over in order.
    """

    def __init__(self, path: str | os.PathLike, dataset: str, kind: str, in_order: bool):
        self.path, self.dataset, self.kind, self.in_order = Path(path), dataset, kind, in_order
        self.spool = self.path.with_name(f".{self.path.name}.spool.h5")
        self.ids: list[str] = []

    def __enter__(self) -> "ItemSink":
        self._writer = ItemStoreWriter(self.path if self.in_order else self.spool, self.dataset, self.kind)
        self._writer.__enter__()
        return self

    def add(self, shape_id: str, **arrays: np.ndarray) -> None:
        if self.in_order and self.ids and shape_id <= self.ids[-1]:
            raise RuntimeError(f"item store written out of order: {shape_id} after {self.ids[-1]}")
        self._writer.add(shape_id, **arrays)
        self.ids.append(shape_id)

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            self._writer.__exit__(exc_type, exc, tb)
            if exc_type is None and not self.in_order:
                with ItemStore(self.spool) as spool, ItemStoreWriter(self.path, self.dataset, self.kind) as out:
                    for shape_id in sorted(self.ids):
                        row = spool.row_of(shape_id)
                        if self.kind == "mesh":
                            v, f = spool.mesh(row)
                            out.add(shape_id, vertices=v, faces=f)
                        else:
                            out.add(shape_id, image_bytes=np.frombuffer(spool.image_bytes(row), dtype=np.uint8))
        finally:
            self.spool.unlink(missing_ok=True)


def _row(
    p: Planned, spec: IngestSpec, sha256: str, fmt: str, meta: dict, n_vertices=None, n_faces=None, n_points=None
) -> dict:
    return {
        "shape_id": p.shape_id,
        "dataset": spec.dataset,
        "kind": spec.kind,
        "label": p.label,
        "label_name": p.label_name,
        "source_split": p.source_split,
        "source": p.source,
        "sha256": sha256,
        "n_vertices": n_vertices,
        "n_faces": n_faces,
        "n_points": n_points,
        "meta": json.dumps(meta, sort_keys=True, separators=(",", ":")),
        "format": fmt,
    }


def read_planned(planned: list[Planned]) -> Iterator[tuple[Planned, bytes | Reject]]:
    """``(item, raw bytes or Reject)`` for every planned item, each read from the input it was planned from.

    If every input reads in any order (folders, zips) the items come in the given (shape-id) order, so the item
    store is written directly; otherwise input by input, each in its own order (a tar streams in archive order).
    """
    inputs = list({id(p.raw): p.raw for p in planned}.values())  # in order of first use, deterministic
    if all(raw.random_access for raw in inputs):
        for p in planned:
            for _, data in p.raw.read_all([p.member]):
                yield p, data
        return
    for raw in inputs:
        mine = {p.member.index: p for p in planned if p.raw is raw}  # member indices are unique within one input
        for member, data in raw.read_all([p.member for p in mine.values()]):
            yield mine[member.index], data


def ingest_members(
    planned: list[Planned], spec: IngestSpec, items_path, logger: logging.Logger, counts: collections.Counter
) -> tuple[list[dict], list[Reject]]:
    """Read, parse and store mesh / image items of archives or directories (``Planned.raw``)."""
    rows, rejects = [], []
    progress = Progress(logger, len(planned), "ingest: items parsed", every=1000, seconds=30)
    in_order = all(p.raw.random_access for p in planned)

    def jobs():
        for p, data in read_planned(planned):
            if isinstance(data, Reject):
                rejects.append(data)
                progress.step()
                continue
            yield (p, data), (spec.kind, p.fmt, data, spec.max_faces)

    with OrderedPool(spec.workers) as pool, ItemSink(items_path, spec.dataset, spec.kind, in_order) as sink:
        for (p, data), result in pool.map(parse_payload, jobs()):
            progress.step()
            if result[0] == "reject":
                rejects.append(Reject(p.source, result[1], result[2]))
                continue
            if spec.kind == "mesh":
                mesh = result[1]
                sink.add(p.shape_id, vertices=mesh.vertices, faces=mesh.faces)
                rows.append(
                    _row(
                        p,
                        spec,
                        mesh.sha256,
                        p.fmt,
                        {"cleanup": mesh.cleanup},
                        n_vertices=len(mesh.vertices),
                        n_faces=len(mesh.faces),
                    )
                )
                for key in ("degenerate_faces", "duplicate_faces", "unreferenced_vertices"):
                    counts[key] += mesh.cleanup[key]
                if any(mesh.cleanup[k] for k in ("degenerate_faces", "duplicate_faces", "unreferenced_vertices")):
                    counts["meshes_cleaned"] += 1
                    logger.debug("%s: clean-up %s", p.source, mesh.cleanup)
            else:
                info, sha = result[1]
                sink.add(p.shape_id, image_bytes=np.frombuffer(data, dtype=np.uint8))
                rows.append(_row(p, spec, sha, info.format.lower(), p.meta))
    return rows, rejects


def ingest_clouds(
    planned: list[Planned], spec: IngestSpec, items_path, logger: logging.Logger
) -> tuple[list[dict], list[Reject]]:
    rows, rejects = [], []
    files: dict[str, CloudFile] = {}
    progress = Progress(logger, len(planned), "ingest: clouds read", every=5000, seconds=30)
    try:
        with ItemStoreWriter(items_path, spec.dataset, "pointcloud") as store:
            for p in planned:
                progress.step()
                try:
                    cf = files.get(p.h5_path) or files.setdefault(p.h5_path, CloudFile(p.h5_path))
                    points = cf.points(p.h5_index)
                    check_cloud(points)
                except ItemError as exc:
                    rejects.append(exc.reject(p.source))
                    continue
                except OSError as exc:  # a corrupt chunk inside an otherwise readable file
                    rejects.append(Reject(p.source, "read_error", str(exc)))
                    continue
                sha = hashlib.sha256(points.astype("<f4", copy=False).tobytes()).hexdigest()
                store.add(p.shape_id, points=points)
                rows.append(_row(p, spec, sha, "h5", p.meta, n_points=len(points)))
    finally:
        for cf in files.values():
            cf.close()
    return rows, rejects
