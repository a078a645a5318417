"""Mixed corpora (weights, pure function of (seed, epoch), without-replacement permutations, repeat draws),
EpochView, and collate (padding to the batch's longest sequence)."""

import numpy as np
import pytest
import torch

from pipeline3d.tokens import EpochView, MixedCorpus, ShapeTokenDataset, collate
from pipeline3d.tokens import layout as L
from pipeline3d.tokens.corpus import occurrence_index
from pipeline3d.tokens.dataset import resolve_entries
from tokens_fixtures import LABELS, write_mesh_cache


class Sized:
    """A stand-in component: the corpus order only needs the length."""

    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n


def test_weights_are_normalised_and_respected():
    corpus = MixedCorpus([(Sized(10), 2.0), (Sized(3), 1.0), (Sized(50), 1.0)], samples_per_epoch=40000, seed=7)
    np.testing.assert_allclose(corpus.weights, [0.5, 0.25, 0.25])
    order = corpus.order(0)
    assert order.shape == (40000, 2) and order.dtype == np.int64
    share = np.bincount(order[:, 0], minlength=3) / len(order)
    np.testing.assert_allclose(share, [0.5, 0.25, 0.25], atol=0.015)
    for c, size in enumerate((10, 3, 50)):
        local = order[order[:, 0] == c, 1]
        assert local.min() == 0 and local.max() == size - 1
        counts = np.bincount(local, minlength=size)
        assert counts.min() > 0.6 * counts.mean()  # uniform within a component


def test_order_is_a_pure_function_of_seed_and_epoch():
    def make(seed):
        return MixedCorpus([(Sized(5), 1.0), (Sized(7), 3.0)], samples_per_epoch=100, seed=seed)

    assert np.array_equal(make(0).order(3), make(0).order(3))
    assert not np.array_equal(make(0).order(3), make(0).order(4))
    assert not np.array_equal(make(0).order(3), make(1).order(3))


def test_without_replacement_is_a_seeded_permutation_of_every_item():
    corpus = MixedCorpus(
        [(Sized(4), 9.0), (Sized(0), 0.0), (Sized(6), 1.0)], samples_per_epoch=None, seed=0, replacement=False
    )
    order = corpus.order(0)
    assert len(corpus) == 10
    assert sorted(map(tuple, order.tolist())) == [(0, i) for i in range(4)] + [(2, i) for i in range(6)]
    assert not np.array_equal(order, corpus.order(1))
    assert np.array_equal(
        order, MixedCorpus([(Sized(4), 1), (Sized(0), 0), (Sized(6), 1)], None, 0, replacement=False).order(0)
    )
    cut = MixedCorpus([(Sized(4), 1.0), (Sized(6), 1.0)], samples_per_epoch=7, seed=0, replacement=False)
    assert len(set(map(tuple, cut.order(0).tolist()))) == 7
    with pytest.raises(ValueError, match="exceeds"):
        MixedCorpus([(Sized(4), 1.0)], samples_per_epoch=5, seed=0, replacement=False)


def test_bad_components_are_refused():
    with pytest.raises(ValueError, match="weights"):
        MixedCorpus([(Sized(4), -1.0), (Sized(4), 2.0)], 10, 0)
    with pytest.raises(ValueError, match="weights"):
        MixedCorpus([(Sized(4), 0.0)], 10, 0)
    with pytest.raises(ValueError, match="no items"):
        MixedCorpus([(Sized(0), 1.0), (Sized(4), 1.0)], 10, 0)


def test_occurrence_index_numbers_repeats():
    pairs = np.array([[0, 1], [1, 1], [0, 1], [0, 2], [0, 1], [1, 1]])
    assert occurrence_index(pairs).tolist() == [0, 0, 1, 0, 2, 1]
    plan = MixedCorpus([(Sized(3), 1.0), (Sized(2), 1.0)], samples_per_epoch=30, seed=0).plan(0)
    seen: dict[tuple[int, int], int] = {}
    for c, i, d in plan.tolist():  # each repeat of an item gets the next draw number
        assert d == seen.get((c, i), 0)
        seen[(c, i)] = d + 1
    assert max(seen.values()) > 1


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    root = tmp_path_factory.mktemp("cache")
    index, shards = write_mesh_cache(root)
    ids = sorted(LABELS)
    entries = resolve_entries(index, shards, ids, [LABELS[s] for s in ids])
    tok = {"n_point": 6, "n_ray": 4, "qa_tokens": False}
    return (
        ShapeTokenDataset(entries, "mesh", tok, seed=0, mode="train"),
        ShapeTokenDataset(entries, "pointcloud_noray", tok, seed=0, mode="train", mc_draws=3),
    )


def test_repeated_items_in_an_epoch_get_different_tokens(datasets):
    mesh, _ = datasets
    corpus = MixedCorpus([(mesh, 1.0)], samples_per_epoch=20, seed=0)
    view = EpochView(corpus, epoch=0)
    plan = view.plan
    repeats = [(a, b) for a in range(20) for b in range(a + 1, 20) if plan[a, 1] == plan[b, 1]]
    assert repeats  # 20 draws of 5 shapes
    for a, b in repeats:
        assert not np.array_equal(view[a]["feat"], view[b]["feat"])


def test_epoch_view_over_a_dataset_enumerates_shapes_and_draws(datasets):
    _, noray = datasets
    view = EpochView(noray, epoch=0)
    assert len(view) == 3 * len(noray)
    got = [(int(view[i]["shape_index"]), int(view[i]["draw"])) for i in range(len(view))]
    assert got == [(s, d) for s in range(len(noray)) for d in range(3)]
    assert np.array_equal(view[4]["feat"], noray.item(1, 0, 1)["feat"])
    with pytest.raises(TypeError):
        EpochView([1, 2], 0)


def test_collate_pads_to_the_longest_sequence(datasets):
    mesh, noray = datasets
    samples = [noray.item(0), mesh.item(1), noray.item(2)]
    samples[1]["occ_target"] = np.ones(8, dtype=np.float32)
    for s in (samples[0], samples[2]):
        s["occ_target"] = np.zeros(8, dtype=np.float32)
    batch = collate(samples)
    lengths = [len(s["type_id"]) for s in samples]
    assert lengths == [1 + 6 + 1, 1 + 6 + 4 + 1, 8]
    T = max(lengths)
    assert batch["feat"].shape == (3, T, 15) and batch["feat"].dtype == torch.float32
    assert batch["valid"].sum(1).tolist() == lengths
    for b, s in enumerate(samples):
        n = lengths[b]
        assert torch.equal(batch["feat"][b, :n], torch.from_numpy(s["feat"]))
        assert torch.equal(batch["type_id"][b, :n], torch.from_numpy(s["type_id"]))
        assert torch.equal(batch["pos"][b, :n], torch.from_numpy(s["pos"]))
        assert (batch["type_id"][b, n:] == L.PAD).all() and (batch["pos"][b, n:] == 0).all()
        assert not batch["feat"][b, n:].any() and not batch["valid"][b, n:].any()
    assert batch["shape_index"].tolist() == [0, 1, 2] and batch["label"].dtype == torch.int64
    assert batch["occ_target"].shape == (3, 8) and batch["occ_target"][1].sum() == 8
    assert "v2_feat" not in batch
    with pytest.raises(ValueError):
        collate([])


def test_collate_pads_two_views_separately():
    def sample(n, n2):
        return {
            "feat": np.ones((n, 15), np.float32),
            "type_id": np.ones(n, np.int64),
            "pos": np.arange(n),
            "v2_feat": np.ones((n2, 15), np.float32),
            "v2_type_id": np.ones(n2, np.int64),
            "v2_pos": np.arange(n2),
            "shape_index": 0,
            "label": -1,
        }

    batch = collate([sample(5, 3), sample(2, 4)])
    assert batch["feat"].shape == (2, 5, 15) and batch["v2_feat"].shape == (2, 4, 15)
    assert batch["valid"].sum(1).tolist() == [5, 2] and batch["v2_valid"].sum(1).tolist() == [3, 4]
