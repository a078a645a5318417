"""Encoder registry: lookup, clear errors, overrides, config round trip, and the reference parameter count."""

from __future__ import annotations

import pytest
import torch

from overfit import single_thread  # noqa: F401 (autouse fixture)
from pipeline3d.models import create_encoder, encoder_from_config, list_encoders, register_encoder
from pipeline3d.models.registry import _ENCODERS

# nepa3d-spec §5: 8 blocks x 1.774M + token MLP 0.154M + pos 0.197M + pred head 0.148M ~= 14.7M (256/256 legacy)
REF_BLOCK, REF_MLP, REF_POS, REF_HEAD = 1.774e6, 0.154e6, 0.197e6, 0.148e6
REF_TOTAL = 8 * REF_BLOCK + REF_MLP + REF_POS + REF_HEAD


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_sizes_are_registered_and_listed_sorted():
    names = list_encoders()
    assert {"query_nepa", "query_nepa_tiny", "query_nepa_small", "query_nepa_base"} <= set(names)
    assert names == sorted(names)
    assert list_encoders("query_nepa_t*") == ["query_nepa_tiny"]


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(KeyError, match="query_nepa_tiny") as err:
        create_encoder("query_nepa_huge")
    assert "query_nepa_huge" in str(err.value)


def test_unknown_keyword_names_the_encoder():
    with pytest.raises(TypeError, match="query_nepa_tiny.*widthh"):
        create_encoder("query_nepa_tiny", widthh=3)


def test_duplicate_registration_is_refused():
    with pytest.raises(ValueError, match="already registered"):
        register_encoder("query_nepa_tiny")(lambda **kw: None)


def test_register_and_create_a_new_encoder():
    @register_encoder("_test_linear")
    def _factory(width: int = 3) -> torch.nn.Module:
        return torch.nn.Linear(width, width)

    try:
        enc = create_encoder("_test_linear", width=5)
        assert enc.weight.shape == (5, 5) and enc.config == {"name": "_test_linear"}
    finally:
        del _ENCODERS["_test_linear"]


@pytest.mark.parametrize(
    "name, d, depth, heads",
    [("query_nepa_tiny", 32, 2, 2), ("query_nepa_small", 128, 4, 4), ("query_nepa_base", 384, 8, 6)],
)
def test_size_presets(name, d, depth, heads):
    with torch.device("meta"):  # shapes only, no memory or init cost
        enc = create_encoder(name)
    assert (enc.d_model, enc.depth, len(enc.blocks), enc.blocks[0].heads) == (d, depth, depth, heads)
    assert enc.config["name"] == name and enc.config["d_model"] == d


def test_overrides_replace_preset_values():
    enc = create_encoder("query_nepa_tiny", n_positions=77, depth=3)
    assert enc.pos_emb.num_embeddings == 77 and len(enc.blocks) == 3 and enc.d_model == 32


def test_config_round_trip_rebuilds_the_same_architecture():
    enc = create_encoder("query_nepa_tiny", n_positions=40)
    again = encoder_from_config(dict(enc.config))
    assert again.config == enc.config
    assert {k: v.shape for k, v in again.state_dict().items()} == {k: v.shape for k, v in enc.state_dict().items()}
    again.load_state_dict(enc.state_dict())  # strict: identical keys and shapes


def test_base_matches_the_reference_parameter_breakdown():
    from pipeline3d.objectives import build_objective

    with torch.device("meta"):
        enc = create_encoder("query_nepa_base", n_positions=514)  # 2 + 256 + 256
        nepa = build_objective("nepa", enc, {})
    per_block = n_params(enc.blocks[0])
    assert per_block == pytest.approx(REF_BLOCK, rel=0.002)
    assert n_params(enc.token_mlp) == pytest.approx(REF_MLP, rel=0.005)
    assert n_params(enc.pos_emb) == pytest.approx(REF_POS, rel=0.005)
    assert n_params(nepa.pred_head) == pytest.approx(REF_HEAD, rel=0.005)
    # encoder + NEPA head ~= 14.7M; the extra type rows (10 vs 5) and the final LayerNorm are ~0.03%
    assert n_params(nepa) == pytest.approx(REF_TOTAL, rel=0.01)
    assert n_params(nepa) == pytest.approx(14.7e6, rel=0.01)
