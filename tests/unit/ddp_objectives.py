"""Script for test_train_distributed: every registered objective trains a few steps under 2-process DDP (gloo).

Run as ``torchrun --nproc_per_node=2 ddp_objectives.py <out_dir>``. Each rank trains every objective on its half
of a fixed synthetic batch (grad_accum 2, so ``no_sync`` is used) and writes ``<out_dir>/<name>.rank<r>.json`` with
the final loss and a sha256 of its weights: DDP must leave both ranks with the very same weights.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch.utils.data import Dataset

sys.path.insert(0, str(Path(__file__).resolve().parent))

from overfit import seeded, tiny_encoder  # noqa: E402
from patch_fixtures import patch_batch, tiny_patch_encoder  # noqa: E402
from pipeline3d.objectives import build_objective  # noqa: E402
from pipeline3d.train import EpochData, TrainConfig, train  # noqa: E402
from synthetic_tokens import make_batch, n_positions  # noqa: E402
from test_objectives_build import CONFIGS, PATCH_ONLY  # noqa: E402

BATCH = 8  # global batch: 2 ranks x 2 micro-batches x 2 items


class Indices(Dataset):
    def __len__(self) -> int:
        return 2 * BATCH

    def __getitem__(self, i: int) -> int:
        return i


def rows(batch: dict, index: list[int]) -> dict:
    """The rows ``index`` (mod the batch size) of every per-item tensor of ``batch``."""
    n = len(batch["label"])
    pick = torch.tensor([i % n for i in index])
    return {k: v[pick] if torch.is_tensor(v) and v.shape[:1] == (n,) else v for k, v in batch.items()}


def weights_sha(module: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    for key, value in sorted(module.state_dict().items()):
        digest.update(key.encode() + value.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def main(out_dir: str) -> int:
    torch.set_num_threads(1)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(message)s")
    rank, out = int(os.environ["RANK"]), Path(out_dir)
    for name in sorted(CONFIGS):
        if name in PATCH_ONLY:
            batch, encoder = patch_batch(4), tiny_patch_encoder()
        else:
            batch = make_batch(4, 4, 3, seed=1, occ_grid=2, two_views=True, n_classes=3)
            encoder = tiny_encoder(n_positions(4, 3), seed=rank)  # ranks start apart: DDP must align them
        objective = seeded(rank, lambda: build_objective(name, encoder, CONFIGS[name]))
        # One process group per training on a fresh file store (torchrun's store serves one rendezvous only).
        dist.init_process_group("gloo", init_method=f"file://{out / f'group-{name}'}", rank=rank, world_size=2)
        result = train(
            objective,
            EpochData(lambda epoch: Indices(), lambda index, b=batch: rows(b, index)),
            TrainConfig(steps=3, batch_size=BATCH, grad_accum=2, lr=1e-3, checkpoint_every=10),
            out / name,
            config_hash="ddp",
        )
        dist.destroy_process_group()
        (out / f"{name}.rank{rank}.json").write_text(
            json.dumps({"loss": result.final_loss, "sha": weights_sha(objective)})
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
