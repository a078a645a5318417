"""Point-patch tokens on this CPU: can one loader process keep up with the patch encoders' training steps?

Input: a real cache (default: the SHREC'07 run's, 323 meshes, ``index.parquet`` + shards), read through
``ShapeTokenDataset`` with the pointcloud_noray backend, in train mode, exactly as a DataLoader worker would (one
process, torch at one thread, the default per-process shape cache, which is filled by one pass at epoch 0 before
anything is timed; timed batches are fresh draws of later epochs, shapes in a shuffled order as a sampler gives).

Measured interleaved, in every repeat (a load change on a shared machine hits every case alike):

1. Loader: token batches/s (batch 32, ``collate`` included) of
   * patch tokens, 1024 points -> 64 groups x 32 points, augmentation on (``AugmentConfig(enabled=True,
     dropout=0.2)``) and off;
   * query tokens at the demo/SHREC size (n_point 64, n_ray 0, Q/A) and at the reference size (n_point 256).
   Plus the per-sample split of the patch path: ``farthest_point_sample`` (64 of 1024) and ``knn_groups`` (32 per
   centre) timed directly on the very clouds the timed samples use; "rest" = the sample's time minus both (point
   draw, augmentation, Morton order, gathering the features), and ``collate`` per sample.
2. Model (CPU, torch at ``--threads``): optimiser steps/s (forward, backward, AdamW from
   ``pipeline3d.train.optim.build_optimizer``) on one real batch of the loader: ``point_mae`` and ``classify``
   (meanmax pool, bidirectional as a fresh patch encoder fine-tunes) on point_patch_small and point_patch_base,
   and ``classify`` (meanmax, causal as a fresh query encoder fine-tunes) on query_nepa_small with the query tokens.
   The models are built and warmed up (``--warmup`` steps) once; each repeat times ``--steps`` steps.
3. Per case: loader batches/s / model steps/s (how far ahead one worker stays; computed within each repeat, median
   reported) and the workers a loader needs to keep up, ceil(model steps/s / loader batches/s per worker), >= 1.
   Note: on this 2-core machine the workers and the model's threads share the same cores.

    .venv/bin/python benchmarks/bench_patches.py [--cache-dir DIR] [--threads 2] [--batches 10] [--batch 32]
                                                  [--steps 3] [--warmup 1] [--repeats 3]
                                                  [--out benchmarks/results/patches.json]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_cache import machine  # noqa: E402
from pipeline3d.models.registry import create_encoder  # noqa: E402
from pipeline3d.objectives import build_objective  # noqa: E402
from pipeline3d.rng import rng_for  # noqa: E402
from pipeline3d.tokens.augment import augment_points  # noqa: E402
from pipeline3d.tokens.collate import collate  # noqa: E402
from pipeline3d.tokens.dataset import ShapeTokenDataset, resolve_entries  # noqa: E402
from pipeline3d.tokens.layout import n_positions  # noqa: E402
from pipeline3d.tokens.patches import PatchConfig, draw_points, farthest_point_sample, knn_groups  # noqa: E402
from pipeline3d.train.optim import build_optimizer  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CACHE = Path("/work/runs/shrec/results/cache/shrec07")
BACKEND = "pointcloud_noray"
PATCH = {"points": 1024, "groups": 64, "group_size": 32}
# loader cases: (tokens config, augment config)
LOADERS = {
    "patch_aug": (
        {"kind": "patch", "patch": PATCH, "n_point": 64, "n_ray": 0, "add_eos": True},
        {"enabled": True, "dropout": 0.2},
    ),
    "patch_noaug": ({"kind": "patch", "patch": PATCH, "n_point": 64, "n_ray": 0, "add_eos": True}, None),
    "query_64p": ({"kind": "query", "n_point": 64, "n_ray": 0, "qa_tokens": True, "add_eos": True}, None),
    "query_256p": ({"kind": "query", "n_point": 256, "n_ray": 0, "qa_tokens": True, "add_eos": True}, None),
}
# model cases: (objective, encoder, objective config, loader whose batch it trains on)
MODELS = {
    "point_mae/point_patch_small": ("point_mae", "point_patch_small", {}, "patch_aug"),
    "classify/point_patch_small": ("classify", "point_patch_small", {"pool": "meanmax", "causal": False}, "patch_aug"),
    "point_mae/point_patch_base": ("point_mae", "point_patch_base", {}, "patch_aug"),
    "classify/point_patch_base": ("classify", "point_patch_base", {"pool": "meanmax", "causal": False}, "patch_aug"),
    "classify/query_nepa_small (64p)": ("classify", "query_nepa_small", {"pool": "meanmax"}, "query_64p"),
    "classify/query_nepa_small (256p)": ("classify", "query_nepa_small", {"pool": "meanmax"}, "query_256p"),
}
PATCH_BASE = ("point_mae/point_patch_base", "classify/point_patch_base")


def load_entries(cache_dir: Path):
    """Every cached shape, labelled by its class folder (``<dataset>/<class>/<name>``)."""
    import pandas as pd

    index = cache_dir / "index.parquet"
    ids = [str(s) for s in pd.read_parquet(index, columns=["shape_id"])["shape_id"]]
    classes = sorted({sid.split("/")[-2] for sid in ids})
    labels = [classes.index(sid.split("/")[-2]) for sid in ids]
    return resolve_entries(index, sorted(cache_dir.glob("shard-*.h5")), ids, labels), classes


def stream(n_shapes: int, n_samples: int, first_epoch: int, seed: str) -> list[tuple[int, int]]:
    """(shape index, epoch) of ``n_samples`` consecutive sampler draws: a fresh shuffle per epoch."""
    out: list[tuple[int, int]] = []
    epoch = first_epoch
    while len(out) < n_samples:
        out += [(int(i), epoch) for i in rng_for(0, "bench_patches", f"{seed}|e{epoch}").permutation(n_shapes)]
        epoch += 1
    return out[:n_samples]


def run_loader(ds: ShapeTokenDataset, draws: list[tuple[int, int]], batch: int) -> dict:
    """Batches of ``batch`` samples through ``item`` + ``collate``: wall / CPU seconds, item and collate parts."""
    item_s = collate_s = 0.0
    wall, cpu = time.perf_counter(), time.process_time()
    for start in range(0, len(draws), batch):
        t0 = time.perf_counter()
        samples = [ds.item(i, epoch) for i, epoch in draws[start : start + batch]]
        t1 = time.perf_counter()
        collate(samples)
        item_s += t1 - t0
        collate_s += time.perf_counter() - t1
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    n_batches = math.ceil(len(draws) / batch)
    return {
        "batches": n_batches,
        "samples": len(draws),
        "wall_s": wall,
        "cpu_s": cpu,
        "batches_per_s": n_batches / wall,
        "batches_per_cpu_s": n_batches / cpu,
        "ms_per_sample": 1000 * wall / len(draws),
        "item_ms_per_sample": 1000 * item_s / len(draws),
        "collate_ms_per_sample": 1000 * collate_s / len(draws),
    }


def patch_split(ds: ShapeTokenDataset, draws: list[tuple[int, int]]) -> dict:
    """Per sample (ms): the whole ``item``, and FPS / kNN alone on the same drawn (and augmented) cloud."""
    cfg: PatchConfig = ds.patch
    item = fps = knn = prep = 0.0
    ties = 0
    for i, epoch in draws:
        t0 = time.perf_counter()
        ds.item(i, epoch)
        item += time.perf_counter() - t0
        # the same cloud and first centre as the item, in the dataset's draw order
        rng = ds.rng(i, epoch)
        record = ds.shape_record(i)
        t0 = time.perf_counter()
        xyz, normal = draw_points(record["points"]["xyz"], record["points"]["normal"], cfg.points, rng)
        xyz, _ = augment_points(xyz, normal, ds.augment, rng)
        t1 = time.perf_counter()
        start = int(rng.integers(len(xyz)))
        centres = farthest_point_sample(xyz, cfg.groups, start)
        t2 = time.perf_counter()
        knn_groups(xyz, xyz[centres], cfg.group_size)
        t3 = time.perf_counter()
        prep, fps, knn = prep + t1 - t0, fps + t2 - t1, knn + t3 - t2
        ties += tie_fallback(xyz, xyz[centres], cfg.group_size)
    n = len(draws)
    item, fps, knn, prep = 1000 * item / n, 1000 * fps / n, 1000 * knn / n, 1000 * prep / n
    return {
        "samples": n,
        "item_ms": item,
        "fps_ms": fps,
        "knn_ms": knn,
        "rest_ms": item - fps - knn,
        "draw_augment_ms": prep,
        "knn_tie_fallback_share": ties / n,
    }


def tie_fallback(points: np.ndarray, centres: np.ndarray, k: int) -> bool:
    """Whether ``knn_groups`` leaves its argpartition path for the full stable argsort (a tie at some group's k-th
    distance, e.g. the duplicates point dropout makes); the same test as ``knn_groups``, untimed."""
    d2 = ((centres[:, None, :] - points[None, :, :]) ** 2).sum(axis=2)
    part = np.argpartition(d2, k - 1, axis=1)[:, :k]
    kth = np.take_along_axis(d2, part, axis=1).max(axis=1, keepdims=True)
    return int((d2 <= kth).sum()) != d2.shape[0] * k


class ModelCase:
    """One objective + encoder + AdamW, trained on one fixed real batch."""

    def __init__(self, objective: str, encoder: str, cfg: dict, tok: dict, batch: dict, n_classes: int):
        torch.manual_seed(0)
        if tok["kind"] == "patch":
            patch = PatchConfig.of(tok)
            enc = create_encoder(
                encoder, group_size=patch.group_size, point_dim=patch.point_dim, n_positions=patch.n_tokens
            )
        else:
            enc = create_encoder(encoder, n_positions=n_positions(tok))
        cfg = {**cfg, "n_classes": n_classes} if objective == "classify" else cfg
        self.obj = build_objective(objective, enc, cfg)
        self.opt = build_optimizer(self.obj, lr=1e-4, weight_decay=0.05, betas=(0.9, 0.999))
        self.batch, self.gen, self.step_no = batch, torch.Generator().manual_seed(0), 0
        self.params = sum(p.numel() for p in enc.parameters())
        self.seq_len = int(batch["feat"].shape[1])

    def steps(self, n: int) -> list[float]:
        times = []
        for _ in range(n):
            start = time.perf_counter()
            loss, _ = self.obj(self.batch, step=self.step_no, total_steps=1000, generator=self.gen)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
            self.obj.after_step()
            times.append(time.perf_counter() - start)
            self.step_no += 1
        return times


def median(values: list[float]) -> float:
    return float(np.median(values))


def table(result: dict) -> str:
    loaders, models = result["loader"], result["model"]
    lines = [
        "| case | tokens (T x feat) | loader batches/s, 1 worker | model steps/s (s/step) | loader / model | "
        "workers to keep up |",
        "|---|---|---|---|---|---|",
    ]
    for name, m in models.items():
        lo = loaders[m["loader"]]
        lines.append(
            f"| {name} | {lo['name_tokens']} | {lo['batches_per_s']:.2f} ({m['loader']}) | "
            f"{m['steps_per_s']:.3f} ({m['s_per_step']:.2f}) | {m['loader_over_model']:.1f}x | "
            f"{m['workers_needed']} |"
        )
    lines += [
        "",
        "| loader | batches/s (wall) | batches/s (CPU time) | ms/sample (wall) | of which collate | "
        "item ms: FPS | kNN (argsort fallback share) | rest (draw + augment) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, lo in loaders.items():
        split = result["patch_split"].get(name)
        parts = (
            f"{split['item_ms']:.2f}: {split['fps_ms']:.2f} | {split['knn_ms']:.2f} "
            f"({split['knn_tie_fallback_share']:.0%}) | {split['rest_ms']:.2f} ({split['draw_augment_ms']:.2f})"
            if split
            else "- | - | -"
        )
        lines.append(
            f"| {name} | {lo['batches_per_s']:.2f} | {lo['batches_per_cpu_s']:.2f} | "
            f"{lo['ms_per_sample']:.2f} | {lo['collate_ms_per_sample']:.3f} | {parts} |"
        )
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE)
    p.add_argument("--threads", type=int, default=2, help="torch threads of the model steps (the loader: 1)")
    p.add_argument("--batches", type=int, default=10, help="timed loader batches per case and repeat")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=3, help="timed optimiser steps per model case and repeat")
    p.add_argument("--warmup", type=int, default=1, help="untimed optimiser steps per model case (once)")
    p.add_argument("--repeats", type=int, default=3, help="interleaved repeats (median reported)")
    p.add_argument("--split-samples", type=int, default=64, help="samples of the FPS / kNN split per repeat")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "patches.json")
    args = p.parse_args()

    info = machine()
    started = time.perf_counter()
    entries, classes = load_entries(args.cache_dir)
    datasets = {
        name: ShapeTokenDataset(entries, BACKEND, tok, seed=0, mode="train", augment=aug)
        for name, (tok, aug) in LOADERS.items()
    }
    torch.set_num_threads(1)  # as in a DataLoader worker
    warm_s = {}
    for name, ds in datasets.items():  # epoch 0: fills the per-process shape cache (untimed for the rates)
        t0 = time.perf_counter()
        for i in range(len(ds)):
            ds.item(i, 0)
        warm_s[name] = time.perf_counter() - t0
    cached = {name: {"shapes": len(ds._cache), "mb": ds._cached_bytes / 2**20} for name, ds in datasets.items()}
    print(
        f"{len(entries)} shapes, {len(classes)} classes; epoch-0 pass (reads + first draws) s: "
        + ", ".join(f"{k} {v:.1f}" for k, v in warm_s.items()),
        flush=True,
    )

    # one real batch per loader for the models
    first = stream(len(entries), args.batch, 1000, "model")
    batches = {name: collate([ds.item(i, e) for i, e in first]) for name, ds in datasets.items()}
    torch.set_num_threads(args.threads)
    models = {}
    for name, (objective, encoder, cfg, loader) in MODELS.items():
        models[name] = ModelCase(objective, encoder, cfg, LOADERS[loader][0], batches[loader], len(classes))
        t0 = time.perf_counter()
        models[name].steps(args.warmup)
        print(
            f"built {name} ({models[name].params / 1e6:.1f}M encoder params, T={models[name].seq_len}); "
            f"warm-up {time.perf_counter() - t0:.1f} s",
            flush=True,
        )

    loader_runs = {name: [] for name in datasets}
    split_runs = {name: [] for name in datasets if datasets[name].patch is not None}
    model_runs = {name: [] for name in models}
    n_draw = args.batches * args.batch
    for rep in range(args.repeats):
        torch.set_num_threads(1)
        for name, ds in datasets.items():
            draws = stream(len(entries), n_draw, 1 + rep * 10, "loader")  # same shapes/epochs for every case
            loader_runs[name].append(run_loader(ds, draws, args.batch))
        for name in split_runs:
            draws = stream(len(entries), args.split_samples, 1 + rep * 10, "split")
            split_runs[name].append(patch_split(datasets[name], draws))
        torch.set_num_threads(args.threads)
        for name, case in models.items():
            times = case.steps(args.steps)
            model_runs[name].append({"step_s": times, "steps_per_s": len(times) / sum(times)})
        print(
            f"repeat {rep}: "
            + ", ".join(f"{k} {v[-1]['batches_per_s']:.2f} b/s" for k, v in loader_runs.items())
            + "; "
            + ", ".join(f"{k} {v[-1]['steps_per_s']:.3f} st/s" for k, v in model_runs.items()),
            flush=True,
        )

    loaders = {}
    for name, runs in loader_runs.items():
        summary = {key: median([r[key] for r in runs]) for key in runs[0] if key not in ("batches", "samples")}
        summary.update(
            batches=runs[0]["batches"],
            samples=runs[0]["samples"],
            repeats=runs,
            tokens=LOADERS[name][0],
            augment=LOADERS[name][1],
            warm_pass_s=warm_s[name],
            shape_cache=cached[name],
        )
        shape = batches[name]["feat"].shape
        summary["name_tokens"] = f"{shape[1]} x {shape[2]}"
        loaders[name] = summary
    splits = {
        name: {**{key: median([r[key] for r in runs]) for key in runs[0]}, "repeats": runs}
        for name, runs in split_runs.items()
    }
    model_out = {}
    for name, runs in model_runs.items():
        objective, encoder, cfg, loader = MODELS[name]
        all_steps = [t for r in runs for t in r["step_s"]]
        rates = [r["steps_per_s"] for r in runs]
        # side by side: the loader / model ratio of each repeat, then the median
        ratios = [lo["batches_per_s"] / r["steps_per_s"] for lo, r in zip(loader_runs[loader], runs)]
        steps_per_s = median(rates)
        model_out[name] = {
            "objective": objective,
            "encoder": encoder,
            "objective_cfg": cfg,
            "loader": loader,
            "encoder_params": models[name].params,
            "seq_len": models[name].seq_len,
            "batch": args.batch,
            "steps_per_s": steps_per_s,
            "s_per_step": median(all_steps),
            "repeats_steps_per_s": rates,
            "step_s": all_steps,
            "loader_over_model": median(ratios),
            "repeats_loader_over_model": ratios,
            "workers_needed": max(1, math.ceil(steps_per_s / loaders[loader]["batches_per_s"])),
        }
    result = {
        "machine": info,
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "torch_threads_model": args.threads,
        "torch_threads_loader": 1,
        "nice": os.nice(0),
        "cache_dir": str(args.cache_dir),
        "shapes": len(entries),
        "classes": len(classes),
        "backend": BACKEND,
        "batch": args.batch,
        "batches": args.batches,
        "steps": args.steps,
        "warmup": args.warmup,
        "repeats": args.repeats,
        "loader": loaders,
        "patch_split": splits,
        "model": model_out,
        "workers_for_patch_base": {name: model_out[name]["workers_needed"] for name in PATCH_BASE},
    }
    result["machine"]["loadavg_end"] = os.getloadavg()
    result["runtime_s"] = time.perf_counter() - started
    result["table"] = table(result)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(result["table"])
    print(
        f"load average start {info['loadavg_start']}, end {result['machine']['loadavg_end']}; "
        f"{result['runtime_s']:.0f} s -> {args.out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
