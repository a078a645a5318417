"""Captions and class prompts -> L2-normalised float32 vectors with an open_clip text tower, computed once.

A large text tower is slow on CPU (EVA02-L: about 18 s per 64 captions), so every vector is kept in an on-disk
cache keyed by (model, weights sha256, context length, batch size) and the caption text.

Texts are always encoded in batches of exactly ``batch_size`` (the last one padded with empty strings): a row's
result then does not depend on which other captions share its batch (checked bit for bit on this CPU build), so a
cached vector equals the one a fresh run would compute and the output bytes do not depend on the cache's history.
The batch size is part of the key because a different batch shape may round differently in the last bit.

The cache is a folder per key of immutable parquet parts, each written atomically: concurrent jobs (several
datasets, SLURM array tasks) never lock or overwrite each other, shared filesystems need no working file locks,
and a killed job keeps every part it flushed (at least every ``flush_seconds`` of compute). When two parts hold
the same caption, the part with the smallest name wins, so lookups do not depend on the order jobs ran.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..device import model_device, to_host
from ..io.atomic import write_parquet
from ..log import Progress
from .backbones import TextBackbone

log = logging.getLogger(__name__)

_CACHE_FORMAT = "pipeline3d-text-cache/1"


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")[:60] or "model"


class TextEmbeddingCache:
    """Caption vectors on disk, one folder per namespace (a backbone's ``cache_namespace`` + the batch size)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def folder(self, namespace: str) -> Path:
        # Readable prefix + a digest of the whole namespace (model names may hold '/' or ':').
        digest = hashlib.sha256(namespace.encode("utf-8")).hexdigest()[:16]
        return self.root / f"{_safe(namespace.split('|', 1)[0])}-{digest}"

    def lookup(self, namespace: str, texts: Iterable[str]) -> dict[str, np.ndarray]:
        """The cached vectors of those ``texts`` that are in the cache."""
        from ..io.tables import read_table

        wanted = set(texts)
        found: dict[str, np.ndarray] = {}
        folder = self.folder(namespace)
        if not wanted or not folder.is_dir():
            return found
        for part in sorted(folder.glob("part-*.parquet")):
            if len(found) == len(wanted):
                break
            table = read_table(part)
            meta = {k.decode(): v.decode() for k, v in (table.schema.metadata or {}).items()}
            if meta.get("namespace") != namespace or meta.get("format") != _CACHE_FORMAT:
                raise ValueError(
                    f"text cache part {part} belongs to {meta.get('namespace')!r} "
                    f"({meta.get('format')}), not {namespace!r}: remove the stray file"
                )
            captions = table.column("text").to_pylist()
            dim = table.schema.field("vector").type.list_size
            vectors = table.column("vector").combine_chunks().flatten().to_numpy().reshape(-1, dim)
            for caption, vector in zip(captions, vectors):
                if caption in wanted and caption not in found:
                    found[caption] = vector
        return found

    def store(self, namespace: str, texts: Sequence[str], vectors: np.ndarray) -> Path:
        """Write one immutable part holding ``texts`` -> ``vectors``; its name is a digest of its captions."""
        import pyarrow as pa

        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or len(texts) != vectors.shape[0]:
            raise ValueError(f"{len(texts)} texts for vectors of shape {vectors.shape}")
        digest = hashlib.sha256("\0".join(texts).encode("utf-8")).hexdigest()[:24]
        path = self.folder(namespace) / f"part-{digest}.parquet"
        table = pa.table(
            {
                "text": pa.array(list(texts), pa.string()),
                "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), vectors.shape[1]),
            }
        )
        write_parquet(path, table, metadata={"namespace": namespace, "format": _CACHE_FORMAT})
        return path


def _encode(backbone: TextBackbone, texts: Sequence[str], batch_size: int) -> np.ndarray:
    """Encode up to ``batch_size`` texts as one batch of exactly ``batch_size`` rows (padding dropped after)."""
    padded = list(texts) + [""] * (batch_size - len(texts))
    with torch.inference_mode():
        tokens = backbone.tokenizer(padded).to(model_device(backbone.model))
        features = backbone.model.encode_text(tokens)
        return to_host(F.normalize(features[: len(texts)].float(), dim=-1))


def embed_texts(
    backbone: TextBackbone,
    texts: Sequence[str],
    *,
    batch_size: int = 64,
    cache: TextEmbeddingCache | None = None,
    flush_seconds: float = 60.0,
) -> np.ndarray:
    """Float32 (N, D) L2-normalised vectors of ``texts`` in input order; each distinct text is encoded once.

    With a ``cache``, texts already in it are not encoded again and new vectors are added to it.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"text #{i} is {type(text).__name__}, not str: {text!r}")
    distinct = list(dict.fromkeys(texts))
    namespace = f"{backbone.cache_namespace}|batch{batch_size}"
    known = cache.lookup(namespace, distinct) if cache is not None else {}
    todo = [t for t in distinct if t not in known]
    log.info(
        "text embeddings (%s): %d texts, %d distinct, %d cached, %d to encode",
        backbone.name,
        len(texts),
        len(distinct),
        len(known),
        len(todo),
    )

    progress = Progress(log, len(todo), f"encoded texts ({backbone.name})", every=max(batch_size, 1000))
    pending_texts: list[str] = []
    pending: list[np.ndarray] = []
    last_flush = time.monotonic()

    def flush() -> None:
        nonlocal last_flush
        if cache is not None and pending_texts:
            cache.store(namespace, pending_texts, np.concatenate(pending))
        pending_texts.clear()
        pending.clear()
        last_flush = time.monotonic()

    for start in range(0, len(todo), batch_size):
        chunk = todo[start : start + batch_size]
        vectors = _encode(backbone, chunk, batch_size)
        known.update(zip(chunk, vectors))
        pending_texts.extend(chunk)
        pending.append(vectors)
        progress.step(len(chunk))
        if time.monotonic() - last_flush >= flush_seconds:
            flush()
    flush()

    out = np.empty((len(texts), backbone.dim), dtype=np.float32)
    for i, text in enumerate(texts):
        out[i] = known[text]
    if not np.isfinite(out).all():
        raise FloatingPointError(f"{backbone.name} produced non-finite text embeddings")
    return out


def prompt_texts(class_name: str, templates: Sequence[str]) -> list[str]:
    """The prompts of one class: every template with its single ``{}`` replaced by the class name."""
    if not templates:
        raise ValueError("no prompt templates given")
    prompts = []
    for template in templates:
        if template.count("{}") != 1:
            raise ValueError(f"prompt template {template!r} must contain exactly one '{{}}' for the class name")
        prompts.append(template.replace("{}", class_name))
    return prompts


def class_embeddings(
    backbone: TextBackbone,
    class_names: Sequence[str],
    templates: Sequence[str],
    *,
    batch_size: int = 64,
    cache: TextEmbeddingCache | None = None,
) -> np.ndarray:
    """Float32 (C, D): per class, the L2-normalised mean of its template prompts' normalised vectors.

    (The usual CLIP prompt ensemble: averaging over phrasings gives a steadier class vector than one prompt.)
    """
    prompts = [prompt_texts(name, templates) for name in class_names]
    flat = embed_texts(backbone, [p for group in prompts for p in group], batch_size=batch_size, cache=cache)
    means = flat.reshape(len(class_names), len(templates), -1).astype(np.float64).mean(axis=1)
    norms = np.linalg.norm(means, axis=1, keepdims=True)
    return (means / np.maximum(norms, 1e-12)).astype(np.float32)
