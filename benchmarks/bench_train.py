"""Train steps/s of the reference-size encoder (query_nepa_base: d=384, 8 layers, 6 heads) on this CPU.

Token batches come from the real tokenizer on synthetic pools (compute does not depend on the values), in the
two layouts the reference used: legacy 256 points + 256 rays (T = 514) and Q/A (T = 1026), plus points-only Q/A as
in fine-tuning (T = 514 with the layout's fixed positions). Per case: a few warm-up steps, then timed optimiser steps
of the objective (forward, backward, AdamW) with torch at the given thread count.

    .venv/bin/python benchmarks/bench_train.py [--threads 2] [--steps 5] [--batch 8] [--out benchmarks/results/train.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_cache import machine  # noqa: E402

from pipeline3d.models.registry import create_encoder  # noqa: E402
from pipeline3d.objectives import build_objective  # noqa: E402
from pipeline3d.tokens.collate import collate  # noqa: E402
from pipeline3d.tokens.layout import n_positions  # noqa: E402
from pipeline3d.tokens.tokenizer import tokenize  # noqa: E402
from pipeline3d.train.optim import build_optimizer  # noqa: E402

CASES = {
    "nepa_legacy_256p_256r": ({"n_point": 256, "n_ray": 256, "qa_tokens": False}, "nepa", True),
    "nepa_qa_256p_256r": ({"n_point": 256, "n_ray": 256, "qa_tokens": True}, "nepa", True),
    "mae_qa_256p_256r": ({"n_point": 256, "n_ray": 256, "qa_tokens": True}, "mae", True),
    "cmae_qa_256p_256r": ({"n_point": 256, "n_ray": 256, "qa_tokens": True}, "cmae", True),
    "classify_qa_256p_0r": ({"n_point": 256, "n_ray": 0, "qa_tokens": True, "layout_n_ray": 256}, "classify", False),
}


def pools(rng: np.random.Generator) -> dict[str, np.ndarray]:
    d = rng.normal(size=(8000, 3))
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    hit = (rng.random(8000) < 0.5).astype(np.uint8)
    return {"pt_xyz": rng.uniform(-1, 1, (20000, 3)).astype(np.float32),
            "pt_dist": rng.uniform(0, 1, 20000).astype(np.float32),
            "ray_o": (-2.2 * d).astype(np.float32), "ray_d": d.astype(np.float32), "ray_hit": hit,
            "ray_t": (rng.uniform(1.2, 3.2, 8000) * hit).astype(np.float32),
            "ray_n": rng.normal(size=(8000, 3)).astype(np.float32)}


def batch_for(tok: dict, batch: int, rng: np.random.Generator, occ: int) -> dict[str, torch.Tensor]:
    samples = []
    for i in range(batch):
        views = {}
        for prefix in ("", "v2_"):
            feat, type_id, pos = tokenize(pools(rng), tok, rng)
            views |= {f"{prefix}feat": feat, f"{prefix}type_id": type_id, f"{prefix}pos": pos}
        sample = {**views, "shape_index": np.int64(i), "label": np.int64(i % 4)}
        if occ:
            sample["occ_target"] = (rng.random(occ ** 3) < 0.1).astype(np.float32)
        samples.append(sample)
    return collate(samples)


def bench_case(name: str, tok: dict, objective: str, batch: int, steps: int) -> dict:
    torch.manual_seed(0)
    encoder = create_encoder("query_nepa_base", n_positions=n_positions(tok))
    cfg = {"n_classes": 4} if objective == "classify" else ({"occ_grid": 16} if objective == "cmae" else {})
    obj = build_objective(objective, encoder, cfg)
    opt = build_optimizer(obj, lr=1e-4, weight_decay=0.05, betas=(0.9, 0.999))
    data = batch_for(tok, batch, np.random.default_rng(0), 16 if objective == "cmae" else 0)
    gen = torch.Generator().manual_seed(0)
    times = []
    for step in range(steps + 2):
        start = time.perf_counter()
        loss, _ = obj(data, step=step, total_steps=1000, generator=gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        obj.after_step()
        if step >= 2:  # first steps warm up allocators
            times.append(time.perf_counter() - start)
    sec = float(np.median(times))
    params = sum(p.numel() for p in encoder.parameters())
    print(f"{name:26s} T={data['feat'].shape[1]:5d} batch {batch}: {sec:.2f} s/step, {1 / sec:.3f} steps/s, "
          f"{batch / sec:.1f} samples/s")
    return {"case": name, "objective": objective, "tokens": tok, "seq_len": int(data["feat"].shape[1]),
            "batch": batch, "s_per_step": sec, "steps_per_s": 1 / sec, "samples_per_s": batch / sec,
            "encoder_params": params}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--cases", nargs="*", default=list(CASES))
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "train.json"))
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    rows = [bench_case(name, {**CASES[name][0], "add_eos": True}, CASES[name][1], args.batch, args.steps)
            for name in args.cases]
    out = {"machine": machine(), "threads": args.threads, "date": time.strftime("%Y-%m-%d"), "results": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
