"""The GPU suite: `bash ci/test.sh -m gpu` on a node with CUDA (every test here is skipped without it).

What it runs on CUDA: every pretraining objective (a few bf16 steps), the fine-tune job, the embedding stages
(image, text, shape) and CPAC against their CPU results, a resume to the same weights, a 2-process NCCL run when two
GPUs are visible, and the whole demo DAG with one GPU (which runs every other GPU rule: UCPR, the metric and
retrieval heads, the text-3D alignment and its submission). To check this file's own code on a machine without
CUDA: ``PIPELINE3D_GPU_SUITE_DEVICE=cpu pytest -m gpu tests/gpu``.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))  # the unit suites' fixtures and helpers

from overfit import seeded, tiny_encoder  # noqa: E402
from patch_fixtures import patch_batch, tiny_patch_encoder  # noqa: E402
from pipeline3d.device import to_device  # noqa: E402
from pipeline3d.embed import knn  # noqa: E402
from pipeline3d.embed.vectors import read_vectors  # noqa: E402
from pipeline3d.jobs import embed_image as jobs_embed_image  # noqa: E402
from pipeline3d.jobs import embed_shape as jobs_embed_shape
from pipeline3d.jobs import embed_text as jobs_embed_text  # noqa: E402
from pipeline3d.jobs import eval_cpac as jobs_eval_cpac  # noqa: E402
from pipeline3d.jobs import finetune  # noqa: E402
from pipeline3d.objectives import OBJECTIVES, build_objective  # noqa: E402
from smk import run_snakemake  # noqa: E402
from synthetic_tokens import make_batch, n_positions  # noqa: E402
from test_cpac import CPAC, PRETRAIN, cpac_ds  # noqa: E402,F401 (cpac_ds: fixture)
from test_embed_stages import (
    IMAGE_CFG,
    _shape_params,
    _text_params,
    image_ds,  # noqa: E402,F401
)
from test_finetune_job import files, params  # noqa: E402,F401 (files: fixture)
from test_objectives_build import CONFIGS, PATCH_ONLY  # noqa: E402
from train_toy import clean_launch_env, run_script  # noqa: E402,F401 (clean_launch_env: autouse fixture)

pytestmark = pytest.mark.gpu
DEVICE = torch.device(os.environ.get("PIPELINE3D_GPU_SUITE_DEVICE", "cuda"))
LOG = logging.getLogger("gpu-suite")


@pytest.fixture
def ran_on_the_device():
    """After the test: the CUDA allocator saw the job's tensors (it did not quietly run on the CPU)."""
    if DEVICE.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    yield
    if DEVICE.type == "cuda":
        assert torch.cuda.max_memory_allocated() > 0


def _on_cpu(monkeypatch, run):
    """``run()`` with the jobs pinned to the CPU, then the device choice given back to the suite."""
    before = os.environ.get("PIPELINE3D_DEVICE")
    monkeypatch.setenv("PIPELINE3D_DEVICE", "cpu")
    try:
        return run()
    finally:
        if before is None:
            monkeypatch.delenv("PIPELINE3D_DEVICE")
        else:
            monkeypatch.setenv("PIPELINE3D_DEVICE", before)


@pytest.mark.parametrize("name", sorted(set(OBJECTIVES) - {"classify"}))
def test_every_pretraining_objective_trains_on_the_device_in_bf16(name, ran_on_the_device):
    if name in PATCH_ONLY:
        batch, encoder = patch_batch(4), tiny_patch_encoder()
    else:
        batch = make_batch(4, 4, 3, seed=1, occ_grid=2, two_views=True)
        encoder = tiny_encoder(n_positions(4, 3))
    objective = seeded(0, lambda: build_objective(name, encoder, CONFIGS[name])).to(DEVICE)
    batch = to_device(batch, DEVICE)
    opt = torch.optim.AdamW(objective.trainable_parameters(), lr=3e-3)
    losses = []
    for step in range(6):
        with torch.autocast(DEVICE.type, dtype=torch.bfloat16, enabled=DEVICE.type == "cuda"):
            loss, logs = objective(batch, step=step, total_steps=6, generator=torch.Generator(DEVICE).manual_seed(step))
        opt.zero_grad()
        loss.backward()
        opt.step()
        objective.after_step()
        losses.append(float(loss.detach()))
        assert all(v.device.type == DEVICE.type for v in logs.values() if torch.is_tensor(v))
    assert np.isfinite(losses).all() and losses[-1] < losses[0]
    assert not [n for n, t in objective.state_dict().items() if t.dtype == torch.float64]  # no float64 on the GPU


def test_finetune_job_on_the_device(tmp_path, files, ran_on_the_device):
    metrics, result = finetune.run(params("scratch"), files, tmp_path / "state", log=LOG)
    assert metrics is not None and not result.interrupted
    assert 0.0 <= metrics["test"]["accuracy"] <= 1.0


def test_embedding_stages_on_the_device_match_the_cpu(
    tmp_path, image_ds, mesh_ds, clip_dir, monkeypatch, ran_on_the_device
):
    jobs = {
        "image": lambda out: jobs_embed_image.run(
            {"seed": 0, "dataset": "img", "kind": "image", "image": IMAGE_CFG, "stage_version": 1}, image_ds, out, LOG
        ),
        "text": lambda out: jobs_embed_text.run(
            _text_params(clip_dir, "img"),
            {"manifest": image_ds["manifest"]},
            out,
            str(tmp_path / f"cache-{Path(out).stem}"),
            LOG,
        ),
        "shape": lambda out: jobs_embed_shape.run(_shape_params(), mesh_ds, out, LOG),
    }
    for name, job in jobs.items():
        cpu_out, dev_out = str(tmp_path / f"{name}-cpu.parquet"), str(tmp_path / f"{name}-dev.parquet")
        assert _on_cpu(monkeypatch, lambda: job(cpu_out)) == 0
        assert job(dev_out) == 0
        cpu, dev = read_vectors(cpu_out), read_vectors(dev_out)
        assert cpu.ids == dev.ids
        cosine = (cpu.vectors * dev.vectors).sum(1)  # both L2-normalised; TF32 / GPU kernels round differently
        assert cosine.min() > 0.999, (name, cosine.min())


def test_cpac_on_the_device_matches_the_cpu(cpac_ds, monkeypatch, ran_on_the_device):
    params_ = {
        "seed": 0,
        "dataset": "ds",
        "method": "nepa",
        "context_backend": "pointcloud_noray",
        "cpac": CPAC,
        "tokens": PRETRAIN,
        "stage_version": 1,
    }
    inputs = {k: cpac_ds[k] for k in ("manifest", "unpaired", "ttv", "index", "shards")} | cpac_ds["qa"]
    cpu = _on_cpu(monkeypatch, lambda: jobs_eval_cpac.run(params_, inputs, LOG))
    dev = jobs_eval_cpac.run(params_, inputs, LOG)
    a, b = cpu["metrics"]["probe"]["pooled"], dev["metrics"]["probe"]["pooled"]
    assert b["mae"] == pytest.approx(a["mae"], rel=2e-2) and b["n_points"] == a["n_points"]


TOY = {
    "steps": 10,
    "batch_size": 8,
    "grad_accum": 2,
    "lr": 0.01,
    "warmup_steps": 1,
    "checkpoint_every": 4,
    "log_every": 1,
    "num_workers": 0,
    "seed": 7,
}


def _toy_weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


def test_a_run_interrupted_on_the_device_resumes_to_the_same_weights(tmp_path):
    straight = {"state_dir": str(tmp_path / "a"), "out": str(tmp_path / "a.safetensors"), "cfg": TOY}
    stopped = {"state_dir": str(tmp_path / "b"), "out": str(tmp_path / "b.safetensors"), "cfg": TOY}
    phases = [straight, {**stopped, "signal_at": 5, "signal": "SIGUSR1"}, stopped]
    proc = run_script({"phases": phases, "watchdog": 120}, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"device {DEVICE.type}" in proc.stderr and "resuming from step 5" in proc.stderr
    a, b = _toy_weights(tmp_path / "a.safetensors"), _toy_weights(tmp_path / "b.safetensors")
    for key in a:  # stated tolerance: bitwise on the CPU; on CUDA, kernels may reorder float sums
        assert torch.allclose(a[key], b[key], rtol=1e-5, atol=1e-6), key


@pytest.mark.skipif(DEVICE.type != "cuda" or torch.cuda.device_count() < 2, reason="needs two visible GPUs")
def test_two_process_nccl_run(tmp_path):
    spec = {"state_dir": str(tmp_path / "two"), "out": str(tmp_path / "two.safetensors"), "cfg": TOY, "noise": False}
    proc = run_script({"phases": [spec], "watchdog": 120}, nproc=2, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "torchrun launch, 2 processes, backend nccl" in proc.stderr
    assert "gradients: DistributedDataParallel over 2 processes" in proc.stderr
    assert json.loads((tmp_path / "two.result.json").read_text())["steps"] == TOY["steps"]


@pytest.mark.skipif(knn.faiss_gpus() == 0, reason="needs faiss-gpu (installed in place of faiss-cpu) and a GPU")
@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_faiss_gpu_candidates_give_the_cpu_bytes(metric, caplog):
    """The real faiss-gpu engine: same neighbours and scores, bit for bit, as faiss-cpu, with no candidate off its
    rounding bound (the check would log it and fall back to faiss-cpu)."""
    rng = np.random.default_rng(0)
    base = rng.standard_normal((10_000, 256)).astype(np.float32)
    x = np.concatenate([base, base + 1e-3 * rng.standard_normal(base.shape).astype(np.float32)])
    with caplog.at_level(logging.WARNING, logger=knn.LOG.name):
        gpu = knn.knn(x, 50, metric=metric, engine="gpu")
    assert "rounding bound" not in caplog.text
    cpu = knn.knn(x, 50, metric=metric, engine="cpu")
    np.testing.assert_array_equal(gpu.rows, cpu.rows)
    np.testing.assert_array_equal(gpu.scores, cpu.scores)
    LOG.info("faiss-gpu %s: %d of %d queries rescanned (cpu: %d)", metric, gpu.n_rescanned, len(x), cpu.n_rescanned)


@pytest.mark.e2e
def test_the_demo_dag_with_one_gpu(workdir):
    """Every rule of the demo, two cores and one GPU, as a laptop-with-a-GPU user would run it."""
    result = run_snakemake(workdir, "--cores", "2", "--resources", "gpu=1", "all", timeout=3600)
    assert result.returncode == 0, result.output[-5000:]
    logs = "\n".join(p.read_text() for p in (workdir / "results" / "logs" / "pretrain_encoder").glob("*.log"))
    assert f"device {DEVICE.type}" in logs
