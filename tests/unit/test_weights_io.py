"""Published weights (io.weights): repeatable bytes, sidecar format checks and the sha256 gate, each error naming
the file."""

from __future__ import annotations

import json

import pytest
import torch

from pipeline3d.io.weights import file_sha256, load_verified, read_sidecar, write_weights

TENSORS = {"b.weight": torch.arange(6.0).reshape(2, 3), "a.bias": torch.ones(3)}
DESCRIPTION = {"format": "toy", "format_version": 1, "config": {"z": 1, "a": [1, 2]}}


def test_same_tensors_and_description_give_the_same_bytes_and_the_returned_hash(tmp_path):
    first = write_weights(tmp_path / "a.safetensors", TENSORS, DESCRIPTION)
    # another insertion order of both maps: safetensors and the JSON header must not depend on it
    second = write_weights(
        tmp_path / "b.safetensors", dict(reversed(TENSORS.items())), dict(reversed(DESCRIPTION.items()))
    )
    assert first == second == file_sha256(tmp_path / "a.safetensors")
    assert (tmp_path / "a.safetensors").read_bytes() == (tmp_path / "b.safetensors").read_bytes()
    loaded = load_verified(tmp_path / "a.safetensors", first, "head.json")
    assert loaded.keys() == TENSORS.keys() and all(torch.equal(loaded[k], TENSORS[k]) for k in TENSORS)


def test_weights_that_do_not_match_the_description_are_refused(tmp_path):
    sha = write_weights(tmp_path / "w.safetensors", TENSORS, DESCRIPTION)
    write_weights(tmp_path / "w.safetensors", {"b.weight": torch.zeros(2, 3), "a.bias": torch.ones(3)}, DESCRIPTION)
    with pytest.raises(ValueError, match=r"w\.safetensors: sha256 .* does not match head\.json"):
        load_verified(tmp_path / "w.safetensors", sha, "head.json")


@pytest.mark.parametrize(
    "content, problem",
    [
        ("{not json", "cannot read the toy head description"),
        (json.dumps({"format": "other", "format_version": 1}), r"not a toy v1 description \(format 'other' v1\)"),
        (json.dumps({"format": "toy", "format_version": 2}), r"not a toy v1 description \(format 'toy' v2\)"),
        (json.dumps([1, 2]), "not a toy v1 description"),
    ],
)
def test_sidecar_problems_name_the_file(tmp_path, content, problem):
    path = tmp_path / "head.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=rf"head\.json: {problem}"):
        read_sidecar(path, fmt="toy", version=1, what="toy head")


def test_a_sidecar_is_returned_whole_when_it_fits(tmp_path):
    path = tmp_path / "head.json"
    path.write_text(json.dumps({**DESCRIPTION, "sha256": "ab"}))
    assert read_sidecar(path, fmt="toy", version=1, what="toy head")["config"] == {"z": 1, "a": [1, 2]}
    assert read_sidecar(path, fmt="toy", version=None, what="toy head")["sha256"] == "ab"
