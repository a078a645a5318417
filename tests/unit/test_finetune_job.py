"""The few-shot fine-tune job is a function of its config and inputs: two fresh runs give the same metrics and the
same weights, whatever torch's process-wide seed happens to be (it is random per process in recent torch).

Inputs: a tiny real mesh cache (tokens_fixtures) and an exported random-init query_nepa encoder.
"""

from __future__ import annotations

import logging

import pandas as pd
import pytest
import torch

from pipeline3d.jobs import finetune
from tokens_fixtures import write_labelled_mesh_dataset

TOKENS = {"n_point": 24, "n_ray": 12, "qa_tokens": True, "add_eos": True, "eval_seed": 0}
CLASS_NAMES = {0: "ring", 1: "solid"}
SPLIT = {
    "ds/ring/torus": "train",
    "ds/solid/box": "train",
    "ds/ring/annulus": "test",
    "ds/solid/ball": "test",
    "ds/solid/capsule": "val",
}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("finetune")
    files = write_labelled_mesh_dataset(root, SPLIT, CLASS_NAMES, TOKENS)
    pd.DataFrame(columns=["k", "seed", "shape_id", "label", "role"]).to_parquet(root / "fewshot.parquet")
    return {**files, "fewshot": str(root / "fewshot.parquet")}


def params(method: str) -> dict:
    return {
        "dataset": "ds",
        "method": method,
        "k": 0,
        "seed": 3,
        "eval_seed": 0,
        "stage_version": 1,
        "tokens": TOKENS,
        "model": {"encoder": "query_nepa_tiny", "d_model": 16, "depth": 1, "heads": 2},
        "finetune": {
            "backend": "pointcloud_noray",
            "batch_size": 2,
            "steps": 3,
            "eval_every": 1,
            "freeze_encoder": False,
            "label_smoothing": 0.0,
            "lr": 1e-3,
            "mc_draws_test": 2,
            "mc_draws_val": 1,
            "n_point": 16,
            "n_ray": 0,
            "num_workers": 0,
            "pool": "eos",
            "selection": "last",
            "warmup_frac": 0.0,
            "weight_decay": 0.05,
        },
    }


def run_fresh(method: str, files: dict, state_dir, process_seed: int) -> tuple[dict, dict]:
    torch.manual_seed(process_seed)  # stands in for the random default seed of a new process
    metrics, result = finetune.run(params(method), files, state_dir, log=logging.getLogger("test"))
    assert metrics is not None and not result.interrupted
    state = torch.load(state_dir / "last.ckpt", weights_only=True)["model"]
    return metrics, state


@pytest.mark.parametrize("method", ["nepa", "scratch"])
def test_two_fresh_runs_give_the_same_metrics_and_weights(tmp_path, files, method):
    first, first_state = run_fresh(method, files, tmp_path / "a", process_seed=1)
    second, second_state = run_fresh(method, files, tmp_path / "b", process_seed=2)
    assert first == second
    assert first_state.keys() == second_state.keys()
    changed = [name for name in first_state if not torch.equal(first_state[name], second_state[name])]
    assert not changed, changed  # the head too, which a loaded encoder used to leave to the process seed


PATCH_TOKENS = {**TOKENS, "kind": "patch", "patch": {"points": 64, "groups": 8, "group_size": 8}}


def patch_encoder_files(files: dict, root) -> dict:
    """``files`` with an exported random-init point-patch encoder (pretrained on patch tokens, bidirectional)."""
    from pipeline3d.models.registry import create_encoder
    from pipeline3d.train.export import save_encoder

    torch.manual_seed(0)
    encoder = create_encoder(
        "point_patch_tiny", group_size=8, point_dim=3, d_model=16, depth=1, heads=2, embed_hidden=16
    )
    save_encoder(
        encoder,
        root / "patch.safetensors",
        root / "patch.json",
        extra={"method": "point_mae", "causal": False, "tokens": PATCH_TOKENS},
    )
    return {**files, "weights": str(root / "patch.safetensors"), "encoder_json": str(root / "patch.json")}


def test_a_linear_probe_trains_the_head_only_on_the_tokens_the_encoder_was_pretrained_on(tmp_path, files):
    from pipeline3d.train.export import load_encoder

    probe = params("point_mae-linear") | {"row_kind": "linear", "freeze_encoder": True}
    files = patch_encoder_files(files, tmp_path)
    metrics, result = finetune.run(probe, files, tmp_path / "state", log=logging.getLogger("test"))
    assert metrics is not None and metrics["steps"] == 3 and 0.0 <= metrics["train_accuracy"] <= 1.0
    trained = torch.load(tmp_path / "state" / "last.ckpt", weights_only=True)["model"]
    pretrained = load_encoder(files["weights"], files["encoder_json"]).state_dict()
    assert all(torch.equal(trained[f"encoder.{name}"], value) for name, value in pretrained.items())
    assert any(
        not torch.equal(trained[name], value) for name, value in seeded_head(probe, trained).items()
    )  # the head did move


def seeded_head(probe: dict, trained: dict) -> dict:
    """The head's initial weights (the job seeds it by its key) next to the trained ones' names."""
    from pipeline3d.models.heads import ClassificationHead
    from pipeline3d.objectives.classify import ClassifyObjective  # noqa: F401 (the head's module)
    from pipeline3d.rng import stable_hash

    key = f"{probe['dataset']}|{probe['method']}|k{probe['k']}|s{probe['seed']}"
    torch.manual_seed(stable_hash(f"{probe['seed']}|head|{key}") % 2**63)
    n_classes, width = trained["head.fc.weight"].shape
    head = ClassificationHead(width, n_classes)
    return {f"head.{name}": value for name, value in head.state_dict().items()}


def test_a_scratch_patch_row_builds_its_own_encoder_and_fits_its_training_shapes(tmp_path, files):
    row = params("scratch_patch") | {
        "row_kind": "scratch",
        "tokens": PATCH_TOKENS,
        "model": {"encoder": "point_patch_tiny"},
    }
    row["finetune"] = row["finetune"] | {"steps": 30, "lr": 1e-3, "label_smoothing": 0.0, "pool": "meanmax"}
    metrics, _ = finetune.run(row, files, tmp_path / "state", log=logging.getLogger("test"))
    assert metrics["train_accuracy"] == 1.0  # two training shapes, two classes: a working recipe fits them
    assert metrics["steps"] == 30


def test_query_and_patch_encoders_refuse_each_others_tokens(tmp_path, files):
    row = params("scratch") | {"row_kind": "scratch", "tokens": PATCH_TOKENS}  # a query_nepa model, patch tokens
    with pytest.raises(ValueError, match="cannot read tokens.kind 'patch'"):
        finetune.run(row, files, tmp_path / "state", log=logging.getLogger("test"))


def test_validation_selection_breaks_accuracy_ties_by_the_lower_loss(monkeypatch):
    """Tiny K-shot validation sets tie on accuracy; the later, better-trained weights (lower loss) must win a tie,
    and an accuracy gain must win over any loss."""
    import numpy as np

    class Labels:
        labels = np.array([0, 1])

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

    reads = iter(
        [
            np.array([[[0.6, 0.4]], [[0.4, 0.6]]]),  # step 10: acc 1.0, unsure
            np.array([[[5.0, -5.0]], [[-5.0, 5.0]]]),  # step 20: acc 1.0, confident -> wins the tie
            np.array([[[0.0, 9.0]], [[-9.0, 9.0]]]),
        ]
    )  # step 30: acc 0.5 -> never wins
    monkeypatch.setattr(finetune, "predict", lambda objective, dataset, batch_size, num_workers=0: next(reads))
    hook = finetune.BestOnValidation(Labels(), every=10, batch_size=2, log=logging.getLogger("test"))
    model = Model()
    for step in (10, 20, 30):
        model.w.data.fill_(step)
        hook(step, model)
    assert hook.best_step == 20 and hook.best_acc == 1.0 and float(hook.best_state["w"]) == 20.0
