"""Train steps/s at the reference sizes, on this CPU or a GPU (``--device cuda``, bf16 autocast), with the loader's
samples/s beside them.

Encoders: query_nepa_base (d=384, 8 layers, 6 heads) on query tokens in the two layouts the reference used (legacy
256 points + 256 rays, T = 514; Q/A, T = 1026) and points-only Q/A as in fine-tuning; point_patch_base (Point-MAE:
12 x 384) on 1024 points in 64 patches of 32 (point_mae and classify). Token batches come from the real tokenizer /
patchifier on synthetic data (compute does not depend on the values). Per case: two warm-up steps, then timed
optimiser steps (forward, backward, AdamW; on CUDA timed between synchronisations) with torch at ``--threads``.

Loader: the same batches built again on the CPU at one thread (tokenize or patchify + collate), as one DataLoader
worker does; ``workers`` = ceil(train samples/s / loader samples/s per worker): how many workers keep the model fed.
Synthetic pools stand in for the cache reads (benchmarks/bench_patches.py times those on a real cache).

    .venv/bin/python benchmarks/bench_train.py [--device cpu|cuda] [--threads 2] [--steps 5] [--batch 8]
                                                [--cases ...] [--out benchmarks/results/train.json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_cache import machine  # noqa: E402
from pipeline3d.device import to_device  # noqa: E402
from pipeline3d.models.registry import create_encoder  # noqa: E402
from pipeline3d.objectives import build_objective  # noqa: E402
from pipeline3d.tokens.collate import collate  # noqa: E402
from pipeline3d.tokens.layout import n_positions  # noqa: E402
from pipeline3d.tokens.patches import PatchConfig, draw_points, patchify  # noqa: E402
from pipeline3d.tokens.tokenizer import tokenize  # noqa: E402
from pipeline3d.train.optim import build_optimizer  # noqa: E402

CASES = {
    "nepa_legacy_256p_256r": ({"n_point": 256, "n_ray": 256, "qa_tokens": False}, "nepa", True),
    "nepa_qa_256p_256r": ({"n_point": 256, "n_ray": 256, "qa_tokens": True}, "nepa", True),
    "mae_qa_256p_256r": ({"n_point": 256, "n_ray": 256, "qa_tokens": True}, "mae", True),
    "cmae_qa_256p_256r": ({"n_point": 256, "n_ray": 256, "qa_tokens": True}, "cmae", True),
    "classify_qa_256p_0r": ({"n_point": 256, "n_ray": 0, "qa_tokens": True, "layout_n_ray": 256}, "classify", False),
    "point_mae_patch_1024p": (
        {"kind": "patch", "patch": {"points": 1024, "groups": 64, "group_size": 32}},
        "point_mae",
        False,
    ),
    "classify_patch_1024p": (
        {"kind": "patch", "patch": {"points": 1024, "groups": 64, "group_size": 32}},
        "classify",
        False,
    ),
}


def pools(rng: np.random.Generator) -> dict[str, np.ndarray]:
    d = rng.normal(size=(8000, 3))
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    hit = (rng.random(8000) < 0.5).astype(np.uint8)
    return {
        "pt_xyz": rng.uniform(-1, 1, (20000, 3)).astype(np.float32),
        "pt_dist": rng.uniform(0, 1, 20000).astype(np.float32),
        "ray_o": (-2.2 * d).astype(np.float32),
        "ray_d": d.astype(np.float32),
        "ray_hit": hit,
        "ray_t": (rng.uniform(1.2, 3.2, 8000) * hit).astype(np.float32),
        "ray_n": rng.normal(size=(8000, 3)).astype(np.float32),
    }


def patch_batch_for(tok: dict, batch: int, rng: np.random.Generator) -> dict[str, torch.Tensor]:
    cfg = PatchConfig.of(tok)
    samples = []
    for i in range(batch):
        cloud = rng.normal(size=(2048, 3))
        cloud /= np.linalg.norm(cloud, axis=1, keepdims=True)
        xyz, _ = draw_points(cloud.astype(np.float32), None, cfg.points, rng)
        feat, type_id, pos = patchify(xyz, None, cfg, rng)
        samples.append({"feat": feat, "type_id": type_id, "pos": pos, "label": np.int64(i % 4)})
    return collate(samples)


def batch_for(tok: dict, batch: int, rng: np.random.Generator, occ: int) -> dict[str, torch.Tensor]:
    if tok.get("kind") == "patch":
        return patch_batch_for(tok, batch, rng)
    samples = []
    for i in range(batch):
        views = {}
        for prefix in ("", "v2_"):
            feat, type_id, pos = tokenize(pools(rng), tok, rng)
            views |= {f"{prefix}feat": feat, f"{prefix}type_id": type_id, f"{prefix}pos": pos}
        sample = {**views, "shape_index": np.int64(i), "label": np.int64(i % 4)}
        if occ:
            sample["occ_target"] = (rng.random(occ**3) < 0.1).astype(np.float32)
        samples.append(sample)
    return collate(samples)


def build(tok: dict, objective: str) -> torch.nn.Module:
    torch.manual_seed(0)
    if tok.get("kind") == "patch":
        patch = PatchConfig.of(tok)
        encoder = create_encoder(
            "point_patch_base", group_size=patch.group_size, point_dim=patch.point_dim, n_positions=patch.n_tokens
        )
        cfg = {"n_classes": 4, "pool": "meanmax", "causal": False} if objective == "classify" else {}
    else:
        encoder = create_encoder("query_nepa_base", n_positions=n_positions(tok))
        cfg = {"n_classes": 4} if objective == "classify" else ({"occ_grid": 16} if objective == "cmae" else {})
    return build_objective(objective, encoder, cfg)


def loader_samples_per_s(tok: dict, batch: int, occ: int, repeats: int = 3) -> float:
    """Samples/s one DataLoader worker (one CPU thread) turns out: tokens + collate of whole batches."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        rng = np.random.default_rng(1)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            batch_for(tok, batch, rng, occ)
            times.append(time.perf_counter() - start)
    finally:
        torch.set_num_threads(threads)
    return batch / float(np.median(times))


def bench_case(name: str, tok: dict, objective: str, batch: int, steps: int, device: torch.device) -> dict:
    obj = build(tok, objective).to(device)
    opt = build_optimizer(obj, lr=1e-4, weight_decay=0.05, betas=(0.9, 0.999))
    occ = 16 if objective == "cmae" else 0
    data = to_device(batch_for(tok, batch, np.random.default_rng(0), occ), device)
    gen = torch.Generator(device).manual_seed(0)
    cuda = device.type == "cuda"
    bf16 = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else contextlib.nullcontext()
    times = []
    for step in range(steps + 2):
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        with bf16:
            loss, _ = obj(data, step=step, total_steps=1000, generator=gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        obj.after_step()
        if cuda:
            torch.cuda.synchronize()
        if step >= 2:  # first steps warm up allocators (and cuDNN / cuBLAS heuristics)
            times.append(time.perf_counter() - start)
    sec = float(np.median(times))
    params = sum(p.numel() for p in obj.encoder.parameters())
    loader = loader_samples_per_s(tok, batch, occ)
    workers = max(1, math.ceil((batch / sec) / loader))
    print(
        f"{name:26s} T={data['feat'].shape[1]:5d} batch {batch}: {sec:.3f} s/step, {batch / sec:.1f} samples/s | "
        f"loader {loader:.1f} samples/s per worker -> {workers} worker(s)",
        flush=True,
    )
    return {
        "case": name,
        "objective": objective,
        "tokens": tok,
        "seq_len": int(data["feat"].shape[1]),
        "batch": batch,
        "device": str(device),
        "precision": "bf16 autocast" if cuda else "fp32",
        "s_per_step": sec,
        "steps_per_s": 1 / sec,
        "samples_per_s": batch / sec,
        "encoder_params": params,
        "loader_samples_per_s_per_worker": loader,
        "workers_to_keep_up": workers,
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu", help="cpu or cuda (bf16 autocast, TF32 matmuls)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--cases", nargs="*", default=list(CASES))
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "train.json"))
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    rows = [
        bench_case(name, {**CASES[name][0], "add_eos": True}, CASES[name][1], args.batch, args.steps, device)
        for name in args.cases
    ]
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    out = {
        "machine": machine(),
        "gpu": gpu,
        "threads": args.threads,
        "date": time.strftime("%Y-%m-%d"),
        "results": rows,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
