"""Encoder export: safetensors + JSON sidecar, and the rebuild from the pair."""

from __future__ import annotations

import json

import pytest
import torch

from pipeline3d.train import load_encoder, save_encoder
from train_toy import ToyEncoder


def _factory(name, **config):
    assert name == "toy_mlp"
    return ToyEncoder(**config)


def test_round_trip_restores_every_tensor(tmp_path):
    torch.manual_seed(0)
    encoder = ToyEncoder(width=16, dropout=0.0)
    sidecar = save_encoder(encoder, tmp_path / "enc.safetensors", tmp_path / "enc.json", {"steps": 12, "run": "x"})
    on_disk = json.loads((tmp_path / "enc.json").read_text())
    assert on_disk == sidecar
    assert (on_disk["encoder"], on_disk["config"], on_disk["extra"]) == (
        "toy_mlp",
        encoder.config,
        {"steps": 12, "run": "x"},
    )
    assert on_disk["n_params"] == sum(p.numel() for p in encoder.parameters())

    rebuilt = load_encoder(tmp_path / "enc.safetensors", tmp_path / "enc.json", factory=_factory)
    assert rebuilt.config == encoder.config
    for (k, a), (k2, b) in zip(encoder.state_dict().items(), rebuilt.state_dict().items()):
        assert k == k2 and a.dtype == b.dtype and a.numpy().tobytes() == b.numpy().tobytes()


def test_export_is_deterministic_and_atomic(tmp_path):
    torch.manual_seed(0)
    encoder = ToyEncoder()
    save_encoder(encoder, tmp_path / "a.safetensors", tmp_path / "a.json", {})
    save_encoder(encoder, tmp_path / "b.safetensors", tmp_path / "b.json", {})
    assert (tmp_path / "a.safetensors").read_bytes() == (tmp_path / "b.safetensors").read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "a.safetensors", "b.json", "b.safetensors"]


def test_mismatched_or_foreign_files_are_refused(tmp_path):
    torch.manual_seed(0)
    save_encoder(ToyEncoder(), tmp_path / "a.safetensors", tmp_path / "a.json", {})
    torch.manual_seed(1)
    save_encoder(ToyEncoder(), tmp_path / "b.safetensors", tmp_path / "b.json", {})
    with pytest.raises(ValueError, match="does not match"):
        load_encoder(tmp_path / "b.safetensors", tmp_path / "a.json", factory=_factory)
    (tmp_path / "c.json").write_text('{"format": "something else"}')
    with pytest.raises(ValueError, match="not a pipeline3d-encoder"):
        load_encoder(tmp_path / "a.safetensors", tmp_path / "c.json", factory=_factory)
    with pytest.raises(ValueError, match="registry_name"):
        save_encoder(torch.nn.Linear(2, 2), tmp_path / "d.safetensors", tmp_path / "d.json", {})


def test_round_trip_through_the_model_registry(tmp_path):
    registry = pytest.importorskip("pipeline3d.models.registry")
    name = "query_nepa_tiny"
    if name not in registry.list_encoders():
        pytest.skip(f"{name} not registered")
    torch.manual_seed(0)
    encoder = registry.create_encoder(name)
    save_encoder(encoder, tmp_path / "e.safetensors", tmp_path / "e.json", {"note": "registry"})
    rebuilt = load_encoder(tmp_path / "e.safetensors", tmp_path / "e.json")
    assert type(rebuilt) is type(encoder)
    for a, b in zip(encoder.state_dict().values(), rebuilt.state_dict().values()):
        assert torch.equal(a, b)
