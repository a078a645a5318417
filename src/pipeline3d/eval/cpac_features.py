"""CPAC's encoder pass: the hidden states at each shape's query tokens, and the geometry-only baselines."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..device import model_device, to_device, to_host
from ..log import Progress
from ..tokens import layout as L
from ..tokens.layout import TokenConfig
from .cpac_sequence import CpacSequence, build_sequence, draw_rng
from .cpac_shapes import CpacShape, ShapeSource

log = logging.getLogger(__name__)


@torch.no_grad()
def query_features(
    encoder: nn.Module, sequences: Sequence[CpacSequence], *, batch_size: int, causal: bool
) -> list[np.ndarray]:
    """Float64 (Q, d) final hidden states at each sequence's query tokens.

    Every pass has ``batch_size`` rows (short batches padded with all-masked rows) and all sequences have the same
    length, so a shape's features do not depend on which shapes share its batch.
    """
    if not sequences:
        return []
    length = len(sequences[0].type_id)
    if any(len(s.type_id) != length for s in sequences):
        raise ValueError("CPAC sequences must all have the same length")
    encoder.eval()
    device = model_device(encoder)
    out: list[np.ndarray] = []
    for start in range(0, len(sequences), batch_size):
        chunk = sequences[start : start + batch_size]
        feat = torch.zeros((batch_size, length, L.FEAT_DIM), dtype=torch.float32)
        type_id = torch.full((batch_size, length), L.PAD, dtype=torch.int64)
        pos = torch.zeros((batch_size, length), dtype=torch.int64)
        valid = torch.zeros((batch_size, length), dtype=torch.bool)
        block = torch.zeros((batch_size, length, length), dtype=torch.bool)
        for b, s in enumerate(chunk):
            feat[b], type_id[b] = torch.from_numpy(s.feat), torch.from_numpy(s.type_id)
            pos[b], valid[b] = torch.from_numpy(s.pos), True
            block[b, :, torch.from_numpy(s.query_slots)] = True  # nobody attends to a query (but itself)
        h = encoder(*to_device((feat, type_id, pos, valid), device), causal=causal, extra_block=block.to(device)).h
        for b, s in enumerate(chunk):
            out.append(to_host(h[b, torch.from_numpy(s.query_slots).to(device)], np.float64))
    return out


@dataclass
class ShapeResult:
    """Per shape: features at the queries, exact targets, and the geometry-only baselines' predictions."""

    shape: CpacShape
    features: np.ndarray  # (Q, d)
    target: np.ndarray  # (Q,)
    context_nn: np.ndarray  # (Q,) distance from each query to its nearest context point
    context_bound: np.ndarray  # (Q,) min over context of |q - c| + d(c): the 1-Lipschitz upper bound


def baselines(seq: CpacSequence) -> tuple[np.ndarray, np.ndarray]:
    gaps = np.linalg.norm(seq.query_xyz[:, None, :] - seq.context_xyz[None, :, :], axis=-1)
    return gaps.min(axis=1), (gaps + seq.context_dist[None, :]).min(axis=1)


def encode_shapes(
    encoder: nn.Module,
    shapes: Sequence[CpacShape],
    backend: str,
    cfg: TokenConfig,
    *,
    n_query: int,
    seed: int,
    role: str,
    batch_size: int,
    causal: bool,
) -> Iterator[ShapeResult]:
    """ShapeResults of ``shapes`` (in order), batch by batch."""
    if batch_size < 1:
        raise ValueError(f"cpac.batch_size must be >= 1 (got {batch_size})")
    source = ShapeSource(backend)
    progress = Progress(log, len(shapes), f"{role} shapes ({backend} context)", every=max(batch_size, 500))
    try:
        for start in range(0, len(shapes), batch_size):
            chunk = shapes[start : start + batch_size]
            seqs, targets = [], []
            for shape in chunk:
                pools, exact = source.load(shape)
                try:
                    seq = build_sequence(pools, cfg, n_query, draw_rng(seed, role, shape.shape_id))
                except ValueError as exc:
                    raise ValueError(f"{shape.shape_id} ({shape.shard_path}): {exc}") from exc
                seqs.append(seq)
                targets.append(exact[seq.query_index])
            feats = query_features(encoder, seqs, batch_size=batch_size, causal=causal)
            for shape, seq, target, x in zip(chunk, seqs, targets, feats):
                nn_dist, bound = baselines(seq)
                yield ShapeResult(shape, x, target, nn_dist, bound)
            progress.step(len(chunk))
    finally:
        source.close()
