"""Eval-mode token batches, built by DataLoader workers and delivered in order.

Evaluation, validation and embedding read every (shape, draw) pair of an eval-mode ``ShapeTokenDataset``. Drawing
and tokenizing a shape costs more than encoding it on a GPU, so with ``num_workers > 0`` worker processes build the
batches while the model runs. A pair's tokens depend only on (seed, shape id, draw), never on the process that
draws them, so the results are the same with any number of workers.
"""

from __future__ import annotations

from typing import Iterator

from torch.utils.data import DataLoader, Dataset

from .collate import collate
from .dataset import ShapeTokenDataset

Pair = tuple[int, int]  # (shape index, draw)


class _Chunks(Dataset):
    """Item j: the collated tokens of the j-th run of ``batch_size`` pairs."""

    def __init__(self, dataset: ShapeTokenDataset, chunks: list[list[Pair]]) -> None:
        self.dataset, self.chunks = dataset, chunks

    def __len__(self) -> int:
        return len(self.chunks)

    def __getitem__(self, j: int) -> dict:
        return collate([self.dataset.item(i, 0, d) for i, d in self.chunks[j]])


def _as_is(batch: dict) -> dict:  # the worker already collated (module level: picklable under spawn)
    return batch


def eval_batches(
    dataset: ShapeTokenDataset, batch_size: int, *, num_workers: int = 0, pin_memory: bool = False
) -> Iterator[tuple[list[Pair], dict]]:
    """(pairs, batch) for every (shape, draw) pair of ``dataset`` in order, ``batch_size`` pairs per batch.

    Workers are only started when there is more than one batch to build (a K-shot validation set is one batch;
    starting processes for it would cost more than it saves).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    pairs = [(i, d) for i in range(len(dataset)) for d in range(dataset.mc_draws)]
    chunks = [pairs[start : start + batch_size] for start in range(0, len(pairs), batch_size)]
    workers = min(int(num_workers), max(len(chunks) - 1, 0))
    loader = DataLoader(
        _Chunks(dataset, chunks),
        batch_size=None,
        shuffle=False,
        num_workers=workers,
        collate_fn=_as_is,
        pin_memory=pin_memory,
    )
    yield from zip(chunks, loader)
