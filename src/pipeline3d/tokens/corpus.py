"""Mixed corpora: (dataset, weight) components sampled into epochs, and the map-style view a DataLoader reads.

``MixedCorpus.order(epoch)`` is a pure function of (seed, epoch) (``rng_for(seed, "corpus", f"e{epoch}")``):

* ``replacement=True`` (the reference's mixture sampler): each of the ``samples_per_epoch`` draws picks a component
  with the normalised weights, then a uniform item of it;
* ``replacement=False``: a seeded permutation of all items of all components (concatenated), cut to
  ``samples_per_epoch`` when that is smaller; the weights play no part (every item appears at most once).

With replacement one item can come up several times in an epoch; ``plan(epoch)`` numbers those occurrences
(draw 0, 1, ...) so each gets its own token draw instead of repeating the first one.

``EpochView(corpus_or_dataset, epoch)`` is a ``torch.utils.data.Dataset`` whose item i is sample i of that epoch's
order, so a DataLoader without shuffling gives the same batches for any ``num_workers``. Over a bare
``ShapeTokenDataset`` it enumerates (shape, draw) pairs, shape-major, ``mc_draws`` per shape.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch.utils.data

from ..rng import rng_for
from .dataset import ShapeTokenDataset

log = logging.getLogger(__name__)

STAGE = "corpus"


def occurrence_index(pairs: np.ndarray) -> np.ndarray:
    """For rows of an (n, 2) int array: how many earlier rows hold the same pair (0 for a first occurrence)."""
    n = len(pairs)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    key = pairs[:, 0].astype(np.int64) * (int(pairs[:, 1].max()) + 1) + pairs[:, 1]
    order = np.argsort(key, kind="stable")
    sorted_key = key[order]
    starts = np.r_[True, sorted_key[1:] != sorted_key[:-1]]
    group_start = np.maximum.accumulate(np.where(starts, np.arange(n), 0))
    out = np.empty(n, dtype=np.int64)
    out[order] = np.arange(n) - group_start
    return out


class MixedCorpus:
    """Weighted components -> per-epoch sample orders (component, local index)."""

    def __init__(
        self,
        components: Sequence[tuple[ShapeTokenDataset, float]],
        samples_per_epoch: int | None,
        seed: int,
        replacement: bool = True,
    ):
        if not components:
            raise ValueError("a corpus needs at least one component")
        self.datasets = [ds for ds, _ in components]
        weights = np.array([float(w) for _, w in components], dtype=np.float64)
        if np.any(~np.isfinite(weights)) or np.any(weights < 0) or weights.sum() <= 0:
            raise ValueError(f"corpus weights must be finite, >= 0 and not all 0 (got {weights.tolist()})")
        self.sizes = np.array([len(ds) for ds in self.datasets], dtype=np.int64)
        empty = [i for i, (size, w) in enumerate(zip(self.sizes, weights)) if size == 0 and w > 0]
        if empty:
            raise ValueError(f"corpus components {empty} have a positive weight but no items")
        self.weights = weights / weights.sum()
        self.seed, self.replacement = int(seed), bool(replacement)
        total = int(self.sizes.sum())
        if replacement:
            if samples_per_epoch is None or samples_per_epoch < 1:
                raise ValueError("samples_per_epoch must be >= 1 when sampling with replacement")
            self.samples_per_epoch = int(samples_per_epoch)
        else:
            if samples_per_epoch is not None and samples_per_epoch > total:
                raise ValueError(
                    f"samples_per_epoch {samples_per_epoch} exceeds the {total} items a corpus without "
                    "replacement holds"
                )
            self.samples_per_epoch = total if samples_per_epoch is None else int(samples_per_epoch)
            log.info(
                "corpus without replacement: %d of %d items per epoch; component weights are not used",
                self.samples_per_epoch,
                total,
            )

    def __len__(self) -> int:
        return self.samples_per_epoch

    def order(self, epoch: int) -> np.ndarray:
        """(n, 2) int64 rows of (component, local index) for ``epoch``."""
        rng = rng_for(self.seed, STAGE, f"e{int(epoch)}")
        n = self.samples_per_epoch
        if self.replacement:
            comp = rng.choice(len(self.datasets), size=n, p=self.weights)
            local = np.floor(rng.random(n) * self.sizes[comp]).astype(np.int64)
            return np.stack([comp.astype(np.int64), np.minimum(local, self.sizes[comp] - 1)], axis=1)
        flat = rng.permutation(int(self.sizes.sum()))[:n]
        offsets = np.cumsum(self.sizes) - self.sizes
        comp = np.searchsorted(offsets, flat, side="right") - 1
        # skip over empty components: searchsorted lands on the last component starting at or before the item
        return np.stack([comp, flat - offsets[comp]], axis=1).astype(np.int64)

    def plan(self, epoch: int) -> np.ndarray:
        """(n, 3) int64 rows of (component, local index, draw): ``order`` plus the occurrence number of the item."""
        order = self.order(epoch)
        return np.concatenate([order, occurrence_index(order)[:, None]], axis=1)

    def sample(self, epoch: int, component: int, local: int, draw: int = 0) -> dict[str, np.ndarray]:
        return self.datasets[component].item(int(local), epoch, int(draw))


class EpochView(torch.utils.data.Dataset):
    """Sample i of one epoch of a corpus (or of a single dataset's (shape, draw) enumeration)."""

    def __init__(self, source: MixedCorpus | ShapeTokenDataset, epoch: int):
        self.source, self.epoch = source, int(epoch)
        if isinstance(source, MixedCorpus):
            self.plan = source.plan(self.epoch)
        elif isinstance(source, ShapeTokenDataset):
            index = np.repeat(np.arange(len(source), dtype=np.int64), source.mc_draws)
            draw = np.tile(np.arange(source.mc_draws, dtype=np.int64), len(source))
            self.plan = np.stack([np.zeros_like(index), index, draw], axis=1)
        else:
            raise TypeError(f"EpochView needs a MixedCorpus or a ShapeTokenDataset, not {type(source).__name__}")

    def __len__(self) -> int:
        return len(self.plan)

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        component, local, draw = (int(v) for v in self.plan[i])
        if isinstance(self.source, MixedCorpus):
            sample = self.source.sample(self.epoch, component, local, draw)
        else:
            sample = self.source.item(local, self.epoch, draw)
        sample["component"] = np.int64(component)
        return sample
