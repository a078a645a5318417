"""The kNN's candidate engines: faiss-cpu, faiss-gpu (on GPU nodes; tests/gpu runs the real one) and the check of
an engine's rounding model. Here a GPU engine is stood in for by faiss-cpu on inputs whose mantissas are cut, as a
tensor core's TF32 inputs are."""

from __future__ import annotations

import logging

import faiss
import numpy as np
import pytest

from pipeline3d.embed import knn as knn_module
from pipeline3d.embed.knn import CpuEngine, candidate_engine, knn, search
from pipeline3d.rng import rng_for


def cut_mantissa(a: np.ndarray, bits: int) -> np.ndarray:
    """float32 values with the mantissa cut to ``bits`` bits, toward zero (TF32: 10 bits; bfloat16: 7)."""
    mask = np.uint32((0xFFFFFFFF << (23 - bits)) & 0xFFFFFFFF)
    return (np.ascontiguousarray(a, dtype=np.float32).view(np.uint32) & mask).view(np.float32)


class CutInputsEngine(CpuEngine):
    """faiss-cpu on inputs cut to ``bits`` mantissa bits, certified with the GPU engine's bound (TF32 inputs)."""

    name = "cut-inputs test engine"
    input_unit = knn_module._U_TF32

    def __init__(self, bits: int) -> None:
        self.bits, self.calls = bits, 0

    def top(self, q32, xb, n, metric):
        self.calls += 1
        return faiss.knn(cut_mantissa(q32, self.bits), cut_mantissa(xb, self.bits), n, metric=metric)


def near_duplicates(n: int, d: int, key: str) -> np.ndarray:
    """Gaussian vectors and copies of them moved by 1e-3: many neighbours closer than TF32's rounding."""
    rng = rng_for(0, "test_knn_engines", key)
    base = rng.standard_normal((n // 2, d)).astype(np.float32)
    return np.concatenate([base, base + 1e-3 * rng.standard_normal(base.shape).astype(np.float32)])


@pytest.fixture
def fake_gpu(monkeypatch):
    """A faiss that sees one GPU whose engine is ``CutInputsEngine(bits)`` (bits set by the test)."""
    engines = []

    def make(bits):
        monkeypatch.setattr(knn_module, "faiss_gpus", lambda: 1)
        monkeypatch.setenv("PIPELINE3D_DEVICE", "cuda:0")  # what job_device() says on a GPU node
        monkeypatch.setattr(
            knn_module, "GpuEngine", lambda device: engines.append(CutInputsEngine(bits)) or engines[-1]
        )
        return engines

    return make


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_an_engine_with_tf32_inputs_gives_the_cpu_bytes(metric, fake_gpu, caplog):
    x = near_duplicates(800, 48, metric)
    identity = np.arange(800) % 400  # a vector and its moved copy are one identity: the copy is not a neighbour
    reference = knn(x, 12, metric=metric, identity=identity, block_size=64)
    engines = fake_gpu(10)
    with caplog.at_level(logging.WARNING, logger=knn_module.LOG.name):
        ours = knn(x, 12, metric=metric, identity=identity, block_size=64, engine="gpu")
    assert engines[0].calls > 0 and "rounding bound" not in caplog.text
    np.testing.assert_array_equal(ours.rows, reference.rows)
    np.testing.assert_array_equal(ours.scores, reference.scores)
    # and without identities, where a copy IS the nearest neighbour, closer than the engine can resolve
    plain = knn(x, 12, metric=metric, block_size=64)
    ours = knn(x, 12, metric=metric, block_size=64, engine="auto")
    np.testing.assert_array_equal(ours.rows, plain.rows)
    np.testing.assert_array_equal(ours.scores, plain.scores)
    assert ours.n_rescanned >= plain.n_rescanned  # the wider bound certifies fewer queries, never more


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_an_engine_noisier_than_its_bound_is_caught_and_the_answer_stays_exact(metric, fake_gpu, caplog):
    x = near_duplicates(600, 32, "noisy" + metric)
    queries = near_duplicates(90, 32, "noisy-q" + metric)
    reference = search(queries, x, 10, metric=metric, block_size=32)
    # inputs cut to 5 mantissa bits certified as if TF32 (10 bits): 32x the input error the bound allows (the
    # euclidean bound is the looser one; its candidates show about 4x it, the cosine ones about 9x)
    fake_gpu(5)
    with caplog.at_level(logging.WARNING, logger=knn_module.LOG.name):
        ours = search(queries, x, 10, metric=metric, block_size=32, engine="gpu")
    assert "cut-inputs test engine scores are off by up to" in caplog.text
    np.testing.assert_array_equal(ours.rows, reference.rows)
    np.testing.assert_array_equal(ours.scores, reference.scores)


def test_faiss_cpu_stays_within_its_own_bound(caplog):
    with caplog.at_level(logging.WARNING, logger=knn_module.LOG.name):
        for metric in ("cosine", "euclidean"):
            knn(near_duplicates(1000, 64, "cpu" + metric) * 30.0, 20, metric=metric, block_size=64)
    assert "rounding bound" not in caplog.text


def test_engine_names_and_a_missing_gpu(monkeypatch):
    assert isinstance(candidate_engine("cpu"), CpuEngine)
    assert isinstance(candidate_engine("auto"), CpuEngine)  # faiss-cpu sees no GPU
    with pytest.raises(ValueError, match="faiss sees no GPU.*faiss-gpu"):
        candidate_engine("gpu")
    monkeypatch.setattr(knn_module, "faiss_gpus", lambda: 1)  # faiss-gpu installed, but the job is on the CPU
    monkeypatch.setenv("PIPELINE3D_DEVICE", "cpu")
    assert isinstance(candidate_engine("auto"), CpuEngine)
    with pytest.raises(ValueError, match="the job runs on cpu"):
        candidate_engine("gpu")
    with pytest.raises(ValueError, match="knn engine must be one of"):
        knn(near_duplicates(10, 4, "bad"), 2, engine="cuda")
