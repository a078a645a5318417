"""eval_batches: every (shape, draw) pair in order, the same tokens with or without DataLoader workers."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from pipeline3d.tokens.eval_batches import eval_batches


class Recording:
    """A stand-in eval dataset: item(i, 0, d) -> tokens that encode (i, d) and the pid that drew them."""

    def __init__(self, n: int, draws: int):
        self.n, self.mc_draws = n, draws

    def __len__(self) -> int:
        return self.n

    def item(self, index: int, epoch: int, draw: int) -> dict:
        assert epoch == 0
        feat = np.array([[10 * index + draw, os.getpid()]] * 2, dtype=np.float32)  # pids fit a float32 exactly
        return {"feat": feat, "type_id": np.zeros(2, np.int64), "pos": np.arange(2), "shape_index": index, "draw": draw}


def pids(batch: dict) -> set[int]:
    return {int(p) for p in batch["feat"][:, 0, 1]}


def test_pairs_in_order_and_workers_change_nothing_but_the_process():
    data = Recording(5, 2)
    plain = list(eval_batches(data, 3))
    assert [pair for chunk, _ in plain for pair in chunk] == [(i, d) for i in range(5) for d in range(2)]
    assert [len(chunk) for chunk, _ in plain] == [3, 3, 3, 1]
    for chunk, batch in plain:
        assert batch["feat"].shape == (len(chunk), 2, 2)
        assert [int(v) for v in batch["feat"][:, 0, 0]] == [10 * i + d for i, d in chunk]
        assert batch["shape_index"].tolist() == [i for i, _ in chunk] and pids(batch) == {os.getpid()}

    workers = list(eval_batches(data, 3, num_workers=2))
    assert [c for c, _ in workers] == [c for c, _ in plain]
    assert all(torch.equal(a["feat"][..., 0], b["feat"][..., 0]) for (_, a), (_, b) in zip(plain, workers))
    assert os.getpid() not in set().union(*(pids(b) for _, b in workers))  # built in the workers


def test_one_batch_starts_no_worker_and_a_bad_batch_size_is_refused():
    ((_, batch),) = eval_batches(Recording(2, 1), 8, num_workers=4)
    assert pids(batch) == {os.getpid()}
    with pytest.raises(ValueError, match="batch_size"):
        list(eval_batches(Recording(2, 1), 0))
