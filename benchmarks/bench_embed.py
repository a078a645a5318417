"""Embedding throughput per modality on CPU, and what the caption cache saves.

* text: an open_clip text tower at a real size (``--text-model``, default ViT-B-32's tower, random init: the cost
  of a forward pass does not depend on the weights) encodes ``--captions`` distinct captions through
  ``embed_texts`` with a fresh ``TextEmbeddingCache`` (cold: every caption encoded and stored), then the same call
  again (warm: every caption read back). Reported: captions/s both ways and their ratio.
* image: ``tf_efficientnet_lite0`` (timm; the architecture of the real-weight test) at 224 px on ``--images``
  synthetic 8-bit images, images/s.

One process, torch at ``--threads`` threads. The machine is shared and noisy: compare the ratio, not the rates.

    .venv/bin/python benchmarks/bench_embed.py [--captions 512] [--images 128] [--threads 1]
                                               [--out benchmarks/results/embed.json]
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_cache import machine  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
NOUNS = ["chair", "table", "lamp", "mug", "bottle", "bowl", "shelf", "bed", "airplane", "car", "sofa", "boat"]
ADJECTIVES = ["red", "old", "small", "wooden", "metal", "round", "tall", "broken", "modern", "plastic", "striped"]


def captions(n: int) -> list[str]:
    """``n`` distinct, deterministic captions of realistic length."""
    out = []
    for i in range(n):
        a, b = ADJECTIVES[i % len(ADJECTIVES)], ADJECTIVES[(i // len(ADJECTIVES)) % len(ADJECTIVES)]
        noun = NOUNS[(i // len(ADJECTIVES) ** 2) % len(NOUNS)]
        out.append(f"a 3D model of a {a} {b} {noun} seen from view {i}")
    return out


def bench_text(model: str, n: int, batch_size: int) -> dict:
    from pipeline3d.embed.backbones import build_text_backbone
    from pipeline3d.embed.text import TextEmbeddingCache, embed_texts

    backbone = build_text_backbone(model, None, allow_random_init=True, seed=0)
    texts = captions(n)
    embed_texts(backbone, texts[:batch_size], batch_size=batch_size)  # first-call costs out of the timing
    with tempfile.TemporaryDirectory(prefix="bench_embed_") as tmp:
        cache = TextEmbeddingCache(tmp)
        start = time.perf_counter()
        cold = embed_texts(backbone, texts, batch_size=batch_size, cache=cache)
        cold_s = time.perf_counter() - start
        start = time.perf_counter()
        warm = embed_texts(backbone, texts, batch_size=batch_size, cache=cache)
        warm_s = time.perf_counter() - start
    if not np.array_equal(cold, warm):
        raise AssertionError("cached caption vectors differ from the encoded ones")
    params = sum(p.numel() for p in backbone.model.parameters())
    return {
        "model": model,
        "text_params_m": params / 1e6,
        "captions": n,
        "batch_size": batch_size,
        "cold_s": cold_s,
        "warm_s": warm_s,
        "cold_captions_per_s": n / cold_s,
        "warm_captions_per_s": n / warm_s,
        "warm_over_cold": cold_s / warm_s,
        "seconds_per_64_cold": 64 * cold_s / n,
    }


def bench_image(n: int, batch_size: int) -> dict:
    from pipeline3d.embed.backbones import build_image_backbone
    from pipeline3d.embed.images import embed_arrays
    from pipeline3d.rng import rng_for

    backbone = build_image_backbone("tf_efficientnet_lite0", None, allow_random_init=True, seed=0)
    rng = rng_for(0, "bench_embed", "images")
    images = [rng.integers(0, 256, size=(96, 96), dtype=np.uint8) for _ in range(n)]
    embed_arrays(backbone, images[:batch_size], batch_size=batch_size)
    start = time.perf_counter()
    embed_arrays(backbone, images, batch_size=batch_size)
    seconds = time.perf_counter() - start
    return {
        "model": "tf_efficientnet_lite0",
        "input": backbone.preprocessing["input_size"],
        "images": n,
        "seconds": seconds,
        "images_per_s": n / seconds,
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--text-model", default="ViT-B-32")
    p.add_argument("--captions", type=int, default=512)
    p.add_argument("--images", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "embed.json")
    args = p.parse_args()
    os.environ["HF_HUB_OFFLINE"] = "1"
    import torch

    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)
    from pipeline3d.io.atomic import write_json

    result = {
        "machine": machine(),
        "threads": args.threads,
        "text": bench_text(args.text_model, args.captions, args.batch_size),
        "image": bench_image(args.images, 32),
    }
    result["machine"]["loadavg_end"] = os.getloadavg()
    write_json(args.out, result)
    t, i = result["text"], result["image"]
    print(
        f"text {t['model']} ({t['text_params_m']:.0f} M): cold {t['cold_captions_per_s']:.1f} captions/s "
        f"({t['seconds_per_64_cold']:.2f} s per 64), cached {t['warm_captions_per_s']:.0f}/s: "
        f"x{t['warm_over_cold']:.0f}"
    )
    print(f"image {i['model']}: {i['images_per_s']:.1f} images/s at {i['input']}")
    print(f"-> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
