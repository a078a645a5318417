"""Cached shapes -> L2-normalised vectors with a pretrained (exported) shape encoder.

Each shape is seen on ``mc_draws`` deterministic evaluation token draws (keyed by shape id and ``eval_seed``: the
same tokens from every copy of the cache and in every run), each draw is encoded and pooled (mean over valid
content tokens, or the EOS state), the pooled vectors are averaged over draws and L2-normalised.

Token counts come from the embedding config (``n_point`` / ``n_ray``) inside the pretrained *layout* (the token
config the encoder was exported with), exactly as fine-tuning builds its evaluation sets, so every token keeps the
position the encoder learned for it.

Batch-composition independence: every forward pass has the same shape, ``batch_size`` rows of the layout's longest
possible sequence plus one (short batches and sequences are padded with masked PAD tokens, dropped after). A
shape's vector then depends on its own tokens only, not on which shapes share its batch or how long their
sequences are.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..device import model_device, to_device, to_host
from ..log import Progress
from ..tokens.dataset import ShapeTokenDataset
from ..tokens.eval_batches import eval_batches
from ..tokens.layout import PAD, TokenConfig, max_tokens

log = logging.getLogger(__name__)

POOLS = ("mean", "eos", "max", "meanmax")


@dataclass(frozen=True)
class EncoderFiles:
    """An exported encoder: weights + sidecar, and what the sidecar says about how it was pretrained."""

    weights: Path
    sidecar: Path
    description: dict[str, Any]

    @property
    def registry_name(self) -> str:
        return str(self.description["encoder"])

    @property
    def causal(self) -> bool:
        """Run the encoder as it was pretrained (NEPA causal; MAE/CMAE bidirectional)."""
        return bool(self.description.get("extra", {}).get("causal", True))

    @property
    def pretrained_tokens(self) -> dict[str, Any] | None:
        tokens = self.description.get("extra", {}).get("tokens")
        return dict(tokens) if isinstance(tokens, Mapping) else None


def encoder_files(weights: str | Path, sidecar: str | Path) -> EncoderFiles:
    """Check that an exported encoder's two files exist and read the sidecar; errors name the rule input."""
    weights, sidecar = Path(weights), Path(sidecar)
    for name, path in (("weights", weights), ("encoder_json", sidecar)):
        if not path.is_file():
            raise ValueError(
                f"input {name!r}: pretrained encoder file {path} does not exist (run pretrain_encoder "
                "for this method first)"
            )
    try:
        description = json.loads(sidecar.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"input 'encoder_json': {sidecar}: cannot read the encoder description: {exc}") from exc
    if not isinstance(description, dict) or "encoder" not in description:
        raise ValueError(f"input 'encoder_json': {sidecar} does not describe an exported encoder (no 'encoder' key)")
    return EncoderFiles(weights, sidecar, description)


def eval_token_config(pretrained: Mapping[str, Any], *, n_point: int, n_ray: int, eval_seed: int) -> dict[str, Any]:
    """Evaluation token counts inside the pretrained layout (the pretrained n_point / n_ray are the capacities).
    Point patches are drawn exactly as in pretraining (``n_point`` / ``n_ray`` do not apply to them)."""
    if pretrained.get("kind") == "patch":
        return {**pretrained, "drop_ray_prob": 0.0, "eval_seed": int(eval_seed)}
    cap_point = pretrained.get("layout_n_point") or pretrained["n_point"]
    cap_ray = pretrained.get("layout_n_ray") or pretrained["n_ray"]
    if n_point > cap_point or n_ray > cap_ray:
        raise ValueError(
            f"embed.shape: n_point={n_point}, n_ray={n_ray} exceed the pretrained layout "
            f"({cap_point} points, {cap_ray} rays)"
        )
    cfg = {
        "n_point": int(n_point),
        "n_ray": int(n_ray),
        "qa_tokens": bool(pretrained.get("qa_tokens", False)),
        "add_eos": bool(pretrained.get("add_eos", True)),
        "drop_ray_prob": 0.0,
        "eval_seed": int(eval_seed),
        "layout_n_point": int(cap_point),
        "layout_n_ray": int(cap_ray),
    }
    TokenConfig.of(cfg)  # validates
    return cfg


def pad_batch(batch: dict[str, torch.Tensor], rows: int, length: int) -> dict[str, torch.Tensor]:
    """``batch`` padded to exactly ``rows`` x ``length`` tokens with masked PAD tokens (position 0, zero features).

    Padded rows are all-masked (the encoder's attention keeps the diagonal, so they stay finite) and dropped after.
    """
    b, t = batch["type_id"].shape
    if b > rows or t > length:
        raise ValueError(f"batch of {b} x {t} tokens does not fit {rows} x {length}")
    feat = torch.zeros((rows, length, batch["feat"].shape[-1]), dtype=batch["feat"].dtype)
    type_id = torch.full((rows, length), PAD, dtype=torch.int64)
    pos = torch.zeros((rows, length), dtype=torch.int64)
    valid = torch.zeros((rows, length), dtype=torch.bool)
    feat[:b, :t], type_id[:b, :t], pos[:b, :t], valid[:b, :t] = (
        batch["feat"],
        batch["type_id"],
        batch["pos"],
        batch["valid"],
    )
    return {"feat": feat, "type_id": type_id, "pos": pos, "valid": valid}


@torch.no_grad()
def embed_shapes(
    encoder: nn.Module,
    dataset: ShapeTokenDataset,
    *,
    batch_size: int,
    pool: str,
    causal: bool,
    transform: Callable[[dict], dict] | None = None,
    normalize_draws: bool = False,
    num_workers: int = 0,
) -> np.ndarray:
    """Float32 (N, d) L2-normalised vectors of every shape of an eval-mode dataset (mean over its draws).

    ``transform``: optional function applied to each collated batch before padding (e.g. a feature ablation);
    it must act per token, so vectors stay independent of batch composition. ``normalize_draws``: L2-normalise
    each draw's pooled vector before averaging (so no draw dominates by its norm; the UCPR protocol).
    ``num_workers``: DataLoader workers that tokenize while the encoder runs (the vectors do not depend on them).
    """
    if dataset.mode != "eval":
        raise ValueError("shape embeddings need an eval-mode token dataset (deterministic draws)")
    if pool not in POOLS:
        raise ValueError(f"embed.shape.pool must be one of {POOLS}, got {pool!r}")
    if batch_size < 1:
        raise ValueError(f"embed.shape.batch_size must be >= 1, got {batch_size}")
    encoder.eval()
    device = model_device(encoder)
    n, draws = len(dataset), dataset.mc_draws
    # One PAD column more than the longest sequence: every pass then runs the same masked attention path (an
    # encoder may skip the mask when nothing is padded, which could round differently).
    length = (dataset.patch.n_tokens if dataset.patch is not None else max_tokens(dataset.cfg)) + 1
    sums: np.ndarray | None = None
    progress = Progress(log, n * draws, "encoded shape draws", every=max(batch_size, 1000))
    for chunk, batch in eval_batches(dataset, batch_size, num_workers=num_workers):
        # the transform runs here, not in the workers: it may count what it does (eval_ucpr's ablations)
        batch = pad_batch(transform(batch) if transform is not None else batch, batch_size, length)
        batch = to_device(batch, device)
        out = encoder(batch["feat"], batch["type_id"], batch["pos"], batch["valid"], causal=causal)
        pooled = to_host(encoder.pool(out, batch, pool)[: len(chunk)], np.float64)
        if normalize_draws:
            pooled = F.normalize(torch.from_numpy(pooled), dim=-1).numpy()
        if sums is None:
            sums = np.zeros((n, pooled.shape[1]), dtype=np.float64)
        # draws of a shape are added in draw order, whatever batch they fell into
        for (i, _), row in zip(chunk, pooled):
            sums[i] += row
        progress.step(len(chunk))
    if sums is None:
        raise ValueError("no shapes to embed")
    vectors = F.normalize(torch.from_numpy(sums / draws), dim=-1).float().numpy()
    if not np.isfinite(vectors).all():
        raise FloatingPointError("the shape encoder produced non-finite embeddings")
    return vectors


def split_column(ids: Sequence[str], ttv_path: str | Path) -> list[str]:
    """Each shape's ttv split (train/val/test), '' for cached shapes the split table does not list."""
    from ..io.tables import read_parquet

    ttv_path = Path(ttv_path)
    try:
        table = read_parquet(ttv_path, columns=["shape_id", "split"])
    except (OSError, ValueError, KeyError) as exc:
        raise ValueError(f"{ttv_path}: cannot read the split table (need shape_id, split): {exc}") from exc
    split = dict(zip(table["shape_id"].astype(str), table["split"].astype(str)))
    unlisted = [sid for sid in ids if sid not in split]
    if unlisted:
        log.warning("%d cached shapes are not in %s (split ''); first: %s", len(unlisted), ttv_path, unlisted[:3])
    return [split.get(sid, "") for sid in ids]
