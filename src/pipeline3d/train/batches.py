"""Which samples form each micro-batch, and the per-step random generator handed to the objective.

A global batch is ``batch_size`` consecutive samples of the epoch's order (the data source fixes that order as a
pure function of seed and epoch). Rank r of W takes the strided slice ``[r::W]`` and splits it into ``grad_accum``
equal micro-batches. The sampler starts at any batch index, so a resumed run skips the consumed part of an epoch
without loading it, with any number of DataLoader workers.
"""

from __future__ import annotations

from typing import Iterator

import torch
from torch.utils.data import Sampler

from ..rng import stable_hash

_SEED_MASK = (1 << 63) - 1


class MicroBatchSampler(Sampler[list[int]]):
    """Index lists of this rank's micro-batches for global batches ``start_batch .. n_batches - 1``."""

    def __init__(
        self, *, n_batches: int, batch_size: int, start_batch: int, rank: int, world_size: int, grad_accum: int
    ) -> None:
        if batch_size % (world_size * grad_accum):
            raise ValueError(
                f"batch_size {batch_size} is not divisible by world_size {world_size} x grad_accum {grad_accum}"
            )
        self.n_batches, self.batch_size, self.start_batch = n_batches, batch_size, start_batch
        self.rank, self.world_size, self.grad_accum = rank, world_size, grad_accum
        self.micro = batch_size // (world_size * grad_accum)

    def __iter__(self) -> Iterator[list[int]]:
        for b in range(self.start_batch, self.n_batches):
            mine = range(b * self.batch_size, (b + 1) * self.batch_size)[self.rank :: self.world_size]
            for m in range(self.grad_accum):
                yield list(mine[m * self.micro : (m + 1) * self.micro])

    def __len__(self) -> int:
        return max(0, self.n_batches - self.start_batch) * self.grad_accum


def seeded_generator(key: str, device: torch.device | str = "cpu") -> torch.Generator:
    """A torch Generator seeded from a stable hash of ``key`` (same key, same stream, in any process)."""
    gen = torch.Generator(device=device)
    gen.manual_seed(stable_hash(key) & _SEED_MASK)
    return gen


def step_generator(seed: int, step: int, rank: int, micro: int, device: torch.device | str = "cpu") -> torch.Generator:
    """The objective's generator for one micro-batch: a function of (seed, step, rank, micro) only, so it needs no
    saving and a resumed run draws exactly the masks the uninterrupted one would have drawn."""
    return seeded_generator(f"train-step|seed={seed}|step={step}|rank={rank}|micro={micro}", device)


def loader_generator(seed: int, epoch: int, rank: int) -> torch.Generator:
    """The DataLoader's own generator (worker base seeds); keeps it off the global torch RNG."""
    return seeded_generator(f"train-loader|seed={seed}|epoch={epoch}|rank={rank}")
