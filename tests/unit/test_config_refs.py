"""Cross-section config checks: each problem names the key that holds the bad value."""

from __future__ import annotations

import copy

import pytest
import yaml

from pipeline3d.config import ConfigError, validate
from smk import ROOT


@pytest.fixture()
def config() -> dict:
    return yaml.safe_load((ROOT / "config" / "config.yaml").read_text())


def problem(config: dict) -> str:
    with pytest.raises(ConfigError) as info:
        validate(copy.deepcopy(config))
    return str(info.value)


def test_the_demo_config_is_coherent(config: dict) -> None:
    validate(config)


def test_corpus_dataset_must_exist(config: dict) -> None:
    config["pretrain"]["methods"]["nepa"]["corpus"][0]["dataset"] = "nope"
    assert "pretrain.methods.nepa.corpus[0].dataset: 'nope' is not a dataset" in problem(config)


def test_a_pc_store_cannot_feed_a_mesh_backend(config: dict) -> None:
    config["pretrain"]["methods"]["nepa"]["corpus"][0] = {
        "dataset": "demo-mesh",
        "split": "train_pc",
        "backend": "mesh",
    }
    assert "pretrain.methods.nepa.corpus[0].backend: 'mesh' may not read the train_pc store" in problem(config)


def test_mesh_backend_needs_a_mesh_dataset(config: dict) -> None:
    config["pretrain"]["methods"]["nepa"]["corpus"][2]["backend"] = "mesh"
    assert "corpus[2].backend: 'mesh' cannot read pointcloud dataset 'demo-scan'" in problem(config)


def test_finetune_references(config: dict) -> None:
    config["finetune"]["methods"] = ["scratch", "nepa_typo"]
    config["finetune"]["k"] = [0, 7]
    config["finetune"]["n_point"] = 10_000
    text = problem(config)
    assert "finetune.methods[1]: 'nepa_typo' is not a few-shot row (known: descriptor, scratch, mae, nepa" in text
    assert "finetune.k[1]: K=7 has no few-shot split" in text
    assert "finetune.n_point: 10000 is more than the pretrained layout holds" in text


def test_unknown_objective_knob_is_named(config: dict) -> None:
    config["objectives"]["cmae"]["lambda_nse"] = 0.5
    assert "objectives.cmae.lambda_nse: unknown key" in problem(config)


def test_patch_token_references(config: dict) -> None:
    config["pretrain"]["methods"]["bad_pmae"] = {
        "objective": "point_mae",
        "corpus": [{"dataset": "demo-mesh", "split": "train", "backend": "pointcloud_noray", "weight": 1.0}],
    }
    config["pretrain"]["methods"]["udf_patch"] = {
        "objective": "point_mae",
        "tokens": {"kind": "patch"},
        "corpus": [{"dataset": "demo-mesh", "split": "train", "backend": "udfgrid", "weight": 1.0}],
    }
    config["eval"]["ucpr"]["methods"] = ["udf_patch"]
    text = problem(config)
    assert "pretrain.methods.bad_pmae.objective: point_mae needs patch tokens" in text
    assert "pretrain.methods.udf_patch.corpus[0].backend: 'udfgrid' cannot give patch tokens" in text
    assert "eval.ucpr.methods[0]: 'udf_patch' reads patch tokens" in text


def test_promptsg_references(config: dict) -> None:
    config["promptsg"]["method"] = "nepa_typo"
    config["promptsg"]["n_point"] = 10_000
    config["promptsg"]["variants"]["full"] = {"interaction_layerz": 2}
    config["promptsg"]["datasets"] = ["demo-mesh", "nope"]
    text = problem(config)
    assert "promptsg.method: 'nepa_typo' is not a pretrain method" in text
    assert "promptsg.n_point: 10000 exceeds the pretrained layout's tokens.n_point (64)" in text
    assert "promptsg.variants.full.interaction_layerz: not a promptsg setting" in text
    assert "promptsg.datasets" in text and "'nope'" in text


def test_retrieval_heads_on_image_datasets_use_the_image_backbone(config: dict) -> None:
    for section in ("promptsg", "retrieval_head"):
        config[section]["datasets"] = ["demo-img"]
        config[section]["method"] = "not_a_method"  # shapes only: image datasets use embed.image
    config["promptsg"]["n_point"] = 10_000  # a token count: shapes only
    validate(copy.deepcopy(config))  # no problem
    config["promptsg"]["datasets"] = ["demo-img", "demo-mesh"]
    text = problem(config)
    assert "promptsg.method: 'not_a_method' is not a pretrain method" in text and "promptsg.n_point" in text
