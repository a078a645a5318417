"""CPAC's token sequences: one shape's context/query draw laid out as the pretrained encoder reads it.

Sequence (see ``build_sequence``): the context is tokenized by the real tokenizer (Morton order, Q/A pairs or
POINT tokens, fixed segment positions, EOS at its pretrained position); the queries, Morton-ordered, are inserted
before the EOS as query-only tokens:

* Q/A tokens: one ``Q_POINT`` (xyz only) per query and NO answer token. The query's representation is the hidden
  state at its own ``Q_POINT``. (The reference appended fake ``dist = 0`` answers: queries posed as on-surface
  points, and later queries attended to those fake answers.)
* legacy tokens (no Q/A types): the only query form the model knows is a ``POINT`` token, so a query is a POINT
  with its distance slot zeroed. The model reads that as an on-surface point; the metrics JSON records this caveat.

Query positions and attention: every query token gets the position of the NEXT point slot after the context,
``1 + k * n_context`` (k = 2 with Q/A tokens, 1 without): exactly where the pretrained model saw the first query
that follows ``n_context`` answered points. Queries never attend to one another, and no other token attends to
a query (an extra attention block; each query still attends to itself). So, under causal attention, a query's
hidden state equals that of the pretraining prefix ``[BOS] + context + query``, batched; it does not depend on
the other queries, their number or order, and bidirectional (MAE) encoders do not mix queries into the context.
The next point slot must exist: ``n_context`` < the pretrained point capacity.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..rng import rng_for
from ..tokens import layout as L
from ..tokens.layout import TokenConfig
from ..tokens.ordering import morton_order
from ..tokens.tokenizer import tokenize
from .cpac import ROLES, STAGE


def draw_rng(seed: int, role: str, shape_id: str) -> np.random.Generator:
    """The generator of one shape's context/query draw for ``role`` (head fitting or testing)."""
    if role not in ROLES:
        raise ValueError(f"unknown CPAC role {role!r} (expected one of {ROLES})")
    return rng_for(seed, STAGE, f"{role}|{shape_id}")


def draw_context_query(
    pool_size: int, n_context: int, n_query: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Disjoint (context, query) pool indices from one draw without replacement."""
    if n_context < 1 or n_query < 1:
        raise ValueError(f"n_context and n_query must be >= 1 (got {n_context}, {n_query})")
    if pool_size < n_context + n_query:
        raise ValueError(
            f"a pool of {pool_size} points cannot give {n_context} context + {n_query} query points without overlap"
        )
    idx = rng.choice(pool_size, size=n_context + n_query, replace=False)
    return idx[:n_context], idx[n_context:]


def context_token_config(pretrained: Mapping[str, Any], n_context: int) -> TokenConfig:
    """The context's token config inside the pretrained layout (no rays; one free point slot left for queries)."""
    cap_point = int(pretrained.get("layout_n_point") or pretrained["n_point"])
    cap_ray = int(pretrained.get("layout_n_ray") or pretrained["n_ray"])
    if n_context >= cap_point:
        raise ValueError(
            f"cpac.n_context = {n_context} leaves no point slot for the queries in the pretrained "
            f"layout ({cap_point} points): use n_context <= {cap_point - 1}"
        )
    return TokenConfig(
        n_point=int(n_context),
        n_ray=0,
        qa_tokens=bool(pretrained.get("qa_tokens", False)),
        add_eos=bool(pretrained.get("add_eos", True)),
        drop_ray_prob=0.0,
        layout_n_point=cap_point,
        layout_n_ray=cap_ray,
    )


def query_position(cfg: TokenConfig) -> int:
    """The position every query token takes: the point slot right after the context."""
    return 1 + cfg.tokens_per_point * cfg.n_point


@dataclass(frozen=True)
class CpacSequence:
    """One shape's CPAC token sequence and what the metrics need besides the features."""

    feat: np.ndarray  # (T, 15) float32
    type_id: np.ndarray  # (T,) int64
    pos: np.ndarray  # (T,) int64
    query_slots: np.ndarray  # (Q,) indices of the query tokens in the sequence, in query (Morton) order
    query_index: np.ndarray  # (Q,) pool indices of the queries, in query order
    context_index: np.ndarray  # (C,) pool indices of the context (draw order)
    query_xyz: np.ndarray  # (Q, 3)
    context_xyz: np.ndarray  # (C, 3)
    context_dist: np.ndarray  # (C,) the context backend's distances


def build_sequence(pools: Mapping[str, Any], cfg: TokenConfig, n_query: int, rng: np.random.Generator) -> CpacSequence:
    """Draw context + queries from a backend's pools and lay out ``[BOS] + context + queries + [EOS]``.

    The context goes through the real tokenizer (given only the drawn context points, it Morton-orders them and
    lays them out as in pretraining); queries are query-only tokens at ``query_position(cfg)`` (module docstring).
    """
    pt_xyz = np.asarray(pools["pt_xyz"])
    ctx, qry = draw_context_query(len(pt_xyz), cfg.n_point, n_query, rng)
    dist_of = pools["pt_dist"]
    ctx_dist = (dist_of(ctx) if callable(dist_of) else np.asarray(dist_of)[ctx]).astype(np.float32)
    ctx_pools = {"pt_xyz": pt_xyz[ctx], "pt_dist": ctx_dist}  # no ray arrays: the context is points only
    feat_c, type_c, pos_c = tokenize(ctx_pools, cfg, rng)

    qry = qry[morton_order(pt_xyz[qry])]
    q_feat = np.zeros((n_query, L.FEAT_DIM), dtype=np.float32)
    q_feat[:, L.XYZ] = pt_xyz[qry]  # legacy POINT: the distance slot stays 0 (the only query form it knows)
    q_type = np.full(n_query, L.Q_POINT if cfg.qa_tokens else L.POINT, dtype=np.int64)
    q_pos = np.full(n_query, query_position(cfg), dtype=np.int64)

    split = len(type_c) - int(cfg.add_eos)  # queries go before the EOS (causal attention: they never see it)
    feat = np.concatenate([feat_c[:split], q_feat, feat_c[split:]])
    type_id = np.concatenate([type_c[:split], q_type, type_c[split:]])
    pos = np.concatenate([pos_c[:split], q_pos, pos_c[split:]])
    return CpacSequence(
        feat=feat,
        type_id=type_id,
        pos=pos,
        query_slots=np.arange(split, split + n_query),
        query_index=qry,
        context_index=ctx,
        query_xyz=pt_xyz[qry].astype(np.float64),
        context_xyz=pt_xyz[ctx].astype(np.float64),
        context_dist=ctx_dist.astype(np.float64),
    )
