"""ShapeTokenDataset: cached shapes -> token samples, with reproducible draws.

Draw randomness (``pipeline3d.rng.rng_for``), keyed by the shape id, never by a path or a list position:

* train: ``rng_for(seed, "tokens", f"{shape_id}|e{epoch}|d{draw}")``: a fresh draw per epoch (and per draw);
* eval:  ``rng_for(eval_seed, "tokens-eval", f"{shape_id}|d{draw}")``: the same tokens in every epoch and from every
  copy of the cache; ``draw`` indexes the Monte-Carlo draws (``mc_draws``) of an evaluation.

The second view of ``two_views`` uses the same key with ``|v2`` appended (an independent draw of the same shape).

Shards are opened lazily, once per process (readers opened before a fork are dropped in the child and reopened:
h5py handles must not be shared across processes), and pickling drops them, so the dataset can go to DataLoader
workers under fork or spawn. Only the arrays the backend needs are read. The per-shape part of a sample (the
backend's pools and the occupancy target: everything that is not random) is kept in a per-process LRU cache of
``cache_mb`` megabytes, so later epochs neither re-read nor recompute it (the voxel backend's occupancy and
nearest-cell tree in particular).
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from ..data.cache_lookup import locate_rows
from ..io.shards import ShardReader
from ..rng import rng_for
from .augment import AugmentConfig, augment_points, augment_tokens
from .backends import Backend, get_backend
from .layout import TokenConfig, n_positions
from .patches import PatchConfig, draw_points, patchify, token_kind
from .tokenizer import tokenize

MODES = ("train", "eval")
TRAIN_STAGE = "tokens"
EVAL_STAGE = "tokens-eval"
DEFAULT_CACHE_MB = 256.0


@dataclass(frozen=True)
class CacheEntry:
    """Where one shape's cache row lives, and its label (-1 if unknown)."""

    shape_id: str
    shard_path: str
    row: int
    label: int = -1


def resolve_entries(
    index_path: str | Path, shard_paths: Sequence[str | Path], ids: Sequence[str], labels: Sequence[int] | None = None
) -> list[CacheEntry]:
    """CacheEntry per id (in the order given) from the cache index and its shards; every id must be cached."""
    if labels is not None and len(labels) != len(ids):
        raise ValueError(f"{len(ids)} shape ids but {len(labels)} labels")
    where = locate_rows(index_path, shard_paths)
    missing = [sid for sid in ids if sid not in where]
    if missing:
        raise ValueError(f"{index_path}: {len(missing)} requested shapes are not in the cache (first: {missing[:3]})")
    out = []
    for i, sid in enumerate(ids):
        path, row = where[sid]
        out.append(CacheEntry(str(sid), str(path), int(row), -1 if labels is None else int(labels[i])))
    return out


def _nbytes(record: Mapping[str, Any]) -> int:
    """Bytes held by a record: its arrays, nested records, and objects that report ``nbytes`` (lazy pools)."""
    return sum(_nbytes(v) if isinstance(v, Mapping) else int(getattr(v, "nbytes", 0)) for v in record.values())


class ShapeTokenDataset:
    """Token samples of cached shapes through one backend (see the module docstring for the draw keys)."""

    def __init__(
        self,
        entries: Sequence[CacheEntry],
        backend: str,
        tok_cfg: TokenConfig | Mapping[str, Any],
        *,
        seed: int,
        mode: str,
        mc_draws: int = 1,
        occ_grid: int = 0,
        two_views: bool = False,
        cache_mb: float = DEFAULT_CACHE_MB,
        augment: AugmentConfig | Mapping[str, Any] | None = None,
    ):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
        if mc_draws < 1:
            raise ValueError(f"mc_draws must be >= 1 (got {mc_draws})")
        if occ_grid < 0:
            raise ValueError(f"occ_grid must be >= 0 (got {occ_grid})")
        self.entries = list(entries)
        self.backend_name = backend
        self.backend: Backend = get_backend(backend)
        self.cfg = TokenConfig.of(tok_cfg)
        # query tokens (the reference's layout) or point patches (tokens.kind: patch, tokens.patch)
        self.kind = "query" if isinstance(tok_cfg, TokenConfig) else token_kind(tok_cfg)
        self.patch = PatchConfig.of(tok_cfg) if self.kind == "patch" else None
        self.augment = AugmentConfig.of(augment)  # training draws only
        if self.patch is not None and "pc_xyz" not in self.backend.visible:
            raise ValueError(
                f"patch tokens need the surface points pc_xyz, which backend {backend!r} (primitive "
                f"{self.backend.primitive}) may not see; use mesh, pointcloud, pointcloud_noray or voxel"
            )
        self.seed, self.mode, self.mc_draws = int(seed), mode, int(mc_draws)
        self.occ_grid, self.two_views = int(occ_grid), bool(two_views)
        self.cache_bytes = int(cache_mb * 2**20)
        self._reset_process_state()

    # -- per-process state (never pickled) ---------------------------------------------------------------------
    def _reset_process_state(self) -> None:
        self._pid = os.getpid()
        self._readers: dict[str, ShardReader] = {}
        self._cache: OrderedDict[int, dict] = OrderedDict()
        self._cached_bytes = 0

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        for key in ("_pid", "_readers", "_cache", "_cached_bytes"):
            state.pop(key)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._reset_process_state()

    def _reader(self, path: str) -> ShardReader:
        if os.getpid() != self._pid:  # forked: the parent's handles are not ours to use
            self._pid, self._readers = os.getpid(), {}
        reader = self._readers.get(path)
        if reader is None:
            reader = self._readers[path] = self.backend.open(path)
        return reader

    def close(self) -> None:
        if os.getpid() == self._pid:
            for reader in self._readers.values():
                reader.close()
        self._reset_process_state()

    # -- data --------------------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.entries)

    @property
    def n_positions(self) -> int:
        return self.patch.n_tokens if self.patch is not None else n_positions(self.cfg)

    @property
    def labels(self) -> np.ndarray:
        return np.array([e.label for e in self.entries], dtype=np.int64)

    def shape_record(self, index: int) -> dict:
        """The non-random part of a sample: ``pools`` (backend pools) and, with ``occ_grid``, ``occ`` (G^3 bool)."""
        record = self._cache.get(index)
        if record is not None:
            self._cache.move_to_end(index)
            return record
        entry = self.entries[index]
        reader = self._reader(entry.shard_path)
        if not 0 <= entry.row < len(reader):
            raise IndexError(f"{entry.shard_path}: row {entry.row} of {entry.shape_id} is outside 0..{len(reader) - 1}")
        if reader.shape_ids[entry.row] != entry.shape_id:
            raise ValueError(
                f"{entry.shard_path}: row {entry.row} holds {reader.shape_ids[entry.row]!r}, "
                f"not {entry.shape_id!r} (stale cache entries?)"
            )
        if self.patch is not None:
            keys = [
                "pc_xyz",
                *(["pc_normal"] if self.patch.normals else []),
                *(self.backend.occupancy_keys() if self.occ_grid else []),
            ]
            arrays = self.backend.read(reader, entry.row, list(dict.fromkeys(keys)))
            record = {"points": {"xyz": arrays["pc_xyz"], "normal": arrays.get("pc_normal")}}
        else:
            arrays = self.backend.read(reader, entry.row, occ_grid=self.occ_grid)
            record = {"pools": self.backend.pools_from(arrays, reader.profile)}
        if self.occ_grid:
            record["occ"] = self.backend.occupancy_from(arrays, self.occ_grid)
        size = _nbytes(record)
        if size <= self.cache_bytes:
            self._cache[index] = record
            self._cached_bytes += size
            while self._cached_bytes > self.cache_bytes:
                _, old = self._cache.popitem(last=False)
                self._cached_bytes -= _nbytes(old)
        return record

    def rng(self, index: int, epoch: int = 0, draw: int = 0, view: str = "") -> np.random.Generator:
        sid = self.entries[index].shape_id
        suffix = f"|{view}" if view else ""
        if self.mode == "train":
            return rng_for(self.seed, TRAIN_STAGE, f"{sid}|e{int(epoch)}|d{int(draw)}{suffix}")
        return rng_for(self.cfg.eval_seed, EVAL_STAGE, f"{sid}|d{int(draw)}{suffix}")

    def item(self, index: int, epoch: int = 0, draw: int = 0) -> dict[str, np.ndarray]:
        """One sample: feat, type_id, pos, shape_index, label, draw (+ occ_target, v2_* when configured)."""
        if not 0 <= index < len(self.entries):
            raise IndexError(f"index {index} outside 0..{len(self.entries) - 1}")
        record = self.shape_record(index)
        feat, type_id, pos = self.tokens(record, self.rng(index, epoch, draw))
        sample = {
            "feat": feat,
            "type_id": type_id,
            "pos": pos,
            "shape_index": np.int64(index),
            "label": np.int64(self.entries[index].label),
            "draw": np.int64(draw),
        }
        if self.two_views:
            feat, type_id, pos = self.tokens(record, self.rng(index, epoch, draw, "v2"))
            sample.update(v2_feat=feat, v2_type_id=type_id, v2_pos=pos)
        if self.occ_grid:
            sample["occ_target"] = record["occ"].astype(np.float32).ravel()
        return sample

    def tokens(self, record: dict, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One token sequence of a shape record: query tokens or point patches, augmented in training draws."""
        train = self.mode == "train"
        if self.patch is not None:
            xyz, normal = draw_points(record["points"]["xyz"], record["points"]["normal"], self.patch.points, rng)
            if train:
                xyz, normal = augment_points(xyz, normal, self.augment, rng)
            return patchify(xyz, normal, self.patch, rng)
        feat, type_id, pos = tokenize(record["pools"], self.cfg, rng, train=train)
        if train:
            feat = augment_tokens(feat, type_id, self.augment, rng)
        return feat, type_id, pos

    def draws(self, index: int, epoch: int = 0) -> list[dict[str, np.ndarray]]:
        """All ``mc_draws`` samples of one shape (Monte-Carlo evaluation)."""
        return [self.item(index, epoch, d) for d in range(self.mc_draws)]

    def __repr__(self) -> str:
        return (
            f"ShapeTokenDataset({len(self)} shapes, backend={self.backend_name}, mode={self.mode}, "
            f"n_point={self.cfg.n_point}, n_ray={self.cfg.n_ray}, qa={self.cfg.qa_tokens})"
        )
