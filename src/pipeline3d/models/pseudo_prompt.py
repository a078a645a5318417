"""Run a frozen open_clip text tower on a prompt whose placeholder word is replaced by learned token embeddings.

Textual inversion (PromptSG, Pic2Word): a template such as "a 3D model of a {} object" is tokenised with a
placeholder word in the "{}" slot; the placeholder's token embedding is cut out and ``n_tokens`` pseudo-token
embeddings (one set per row, e.g. produced from a shape feature) are spliced in. The rest of the forward pass is
open_clip's ``encode_text`` for CLIP-style towers: + positional embedding, transformer with the causal mask,
ln_final, pooling at the end-of-text token (which moves right by ``n_tokens - 1``), text projection.

Supported layouts: ``open_clip.CLIP`` (token_embedding, positional_embedding, transformer, ln_final,
text_projection, attn_mask, text_pool_type on the model) and ``CustomTextCLIP`` whose ``model.text`` is an open_clip
``TextTransformer`` without a class token or padding mask. Anything else (Hugging Face text towers, CoCa) is
refused with an error saying why.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

# A word the CLIP BPE vocabulary holds as one token and that does not occur in ordinary prompts.
DEFAULT_PLACEHOLDER = "*"
_SLOT = "{}"


@dataclass(frozen=True)
class TextTower:
    """The modules of a CLIP-style text tower (attributes of ``CLIP`` or of ``CustomTextCLIP.text``)."""

    token_embedding: nn.Embedding
    positional_embedding: torch.Tensor
    transformer: nn.Module
    ln_final: nn.Module
    text_projection: Any  # nn.Parameter (D_w, D), nn.Linear or None
    attn_mask: torch.Tensor | None
    pool_type: str
    eos_id: int | None

    @property
    def width(self) -> int:
        return int(self.token_embedding.weight.shape[1])


_REQUIRED = ("token_embedding", "positional_embedding", "transformer", "ln_final", "text_projection")


def text_tower(model: nn.Module) -> TextTower:
    """The text tower of an open_clip model, or a ValueError naming what makes the layout unsupported."""
    owner, where = model, type(model).__name__
    if not all(hasattr(model, name) for name in _REQUIRED) and hasattr(model, "text"):
        owner, where = model.text, f"{type(model).__name__}.text ({type(model.text).__name__})"
    missing = [name for name in _REQUIRED if not hasattr(owner, name)]
    if missing:
        raise ValueError(
            f"pseudo-token prompts need a CLIP-style open_clip text tower; {where} lacks {missing} "
            "(Hugging Face text towers are not supported)"
        )
    if getattr(owner, "cls_emb", None) is not None:
        raise ValueError(f"{where} appends a class token (CoCa-style); pseudo-token prompts support EOT pooling only")
    if getattr(owner, "use_pad_mask", False):
        raise ValueError(f"{where} uses a padding attention mask; pseudo-token prompts support causal CLIP towers")
    pool_type = getattr(owner, "text_pool_type", None) or getattr(owner, "pool_type", "argmax")
    if pool_type not in ("argmax", "eos", "first", "last"):
        raise ValueError(f"{where}: text pooling {pool_type!r} is not supported (argmax, eos, first, last)")
    eos_id = getattr(owner, "text_eos_id", None) if owner is model else getattr(owner, "eos_id", None)
    return TextTower(
        owner.token_embedding,
        owner.positional_embedding,
        owner.transformer,
        owner.ln_final,
        owner.text_projection,
        getattr(owner, "attn_mask", None),
        pool_type,
        eos_id,
    )


def _token_ids(tokenizer, text: str) -> list[int]:
    """The non-padding token ids of ``text`` (start and end tokens included)."""
    ids = tokenizer([text])[0].tolist()
    while ids and ids[-1] == 0:
        ids.pop()
    return ids


@dataclass(frozen=True)
class PromptTemplate:
    """A tokenised template: ``ids`` (context_length,) with the placeholder at ``slot``."""

    template: str
    placeholder: str
    ids: torch.Tensor
    slot: int
    length: int  # non-padding tokens, start and end included


def prepare_template(tokenizer, template: str, *, placeholder: str = DEFAULT_PLACEHOLDER) -> PromptTemplate:
    """Tokenise ``template`` (exactly one "{}") with ``placeholder`` in the slot and locate its token."""
    if template.count(_SLOT) != 1:
        raise ValueError(f"prompt template {template!r} must contain exactly one {_SLOT!r}")
    word = _token_ids(tokenizer, placeholder)
    if len(word) != 3:
        raise ValueError(f"placeholder {placeholder!r} is {len(word) - 2} tokens for this tokenizer; it must be one")
    ids = tokenizer([template.format(placeholder)])[0]
    hits = (ids == word[1]).nonzero().flatten().tolist()
    if len(hits) != 1:
        raise ValueError(
            f"placeholder {placeholder!r} occurs {len(hits)} times in the tokenised template "
            f"{template!r}; "
            "choose a template (or placeholder) where it occurs once"
        )
    length = len(_token_ids(tokenizer, template.format(placeholder)))
    return PromptTemplate(template, placeholder, ids, hits[0], length)


def encode_with_pseudo_tokens(
    text_backbone, template: str | PromptTemplate, pseudo: torch.Tensor, *, placeholder: str = DEFAULT_PLACEHOLDER
) -> torch.Tensor:
    """(N, D) text features (not normalised, like ``encode_text``) of ``template`` with its slot holding ``pseudo``.

    ``text_backbone``: a ``pipeline3d.embed.backbones.TextBackbone`` (or anything with ``.model`` and
    ``.tokenizer``). ``pseudo``: (N, n_tokens, width) embeddings in the token-embedding space. Gradients flow into
    ``pseudo``; the tower's own parameters stay as they are (frozen by the backbone builder).
    """
    tower = text_tower(text_backbone.model)
    prompt = (
        template
        if isinstance(template, PromptTemplate)
        else prepare_template(text_backbone.tokenizer, template, placeholder=placeholder)
    )
    if pseudo.ndim != 3 or pseudo.shape[1] < 1 or pseudo.shape[2] != tower.width:
        raise ValueError(f"pseudo tokens must be (N, n_tokens, {tower.width}), got {tuple(pseudo.shape)}")
    n, n_tokens = int(pseudo.shape[0]), int(pseudo.shape[1])
    context = int(prompt.ids.shape[0])
    if prompt.length - 1 + n_tokens > context:
        raise ValueError(
            f"template {prompt.template!r} with {n_tokens} pseudo tokens needs "
            f"{prompt.length - 1 + n_tokens} positions; the text tower has {context}"
        )
    device = tower.token_embedding.weight.device
    cast_dtype = tower.transformer.get_cast_dtype() if hasattr(tower.transformer, "get_cast_dtype") else pseudo.dtype
    ids = prompt.ids.to(device)
    # Token ids of the spliced sequence (the slot repeated n_tokens times, padding cut at the end): they locate the
    # end-of-text token for pooling exactly as the tokenizer's ids do for a plain sentence.
    spliced_ids = torch.cat(
        [
            ids[: prompt.slot],
            ids[prompt.slot : prompt.slot + 1].repeat(n_tokens),
            ids[prompt.slot + 1 : context - n_tokens + 1],
        ]
    )
    embedded = tower.token_embedding(ids).to(cast_dtype)
    x = torch.cat(
        [
            embedded[: prompt.slot].expand(n, -1, -1),
            pseudo.to(device=device, dtype=cast_dtype),
            embedded[prompt.slot + 1 : context - n_tokens + 1].expand(n, -1, -1),
        ],
        dim=1,
    )
    x = x + tower.positional_embedding.to(cast_dtype)
    mask = tower.attn_mask
    if tower.pool_type in ("argmax", "eos") and _is_causal(mask):
        # Under a causal mask no position sees a later one, so the padding after the pooled end-of-text token
        # cannot change it: run only the prompt's own positions (a ~5x cheaper pass for a short template).
        used = prompt.length - 1 + n_tokens
        x, mask, spliced_ids = x[:, :used], mask[:used, :used], spliced_ids[:used]
    x = tower.transformer(x, attn_mask=mask)
    x = tower.ln_final(x)
    x = _pool(x, spliced_ids.expand(n, -1), tower)
    if tower.text_projection is not None:
        x = tower.text_projection(x) if isinstance(tower.text_projection, nn.Linear) else x @ tower.text_projection
    return x


def _is_causal(mask: torch.Tensor | None) -> bool:
    """True for an additive (L, L) mask that blocks exactly the positions after each query (CLIP's text mask)."""
    if mask is None or mask.ndim != 2 or mask.shape[0] != mask.shape[1] or mask.dtype == torch.bool:
        return False
    upper = torch.ones(mask.shape, dtype=torch.bool, device=mask.device).triu(1)
    return bool(torch.isneginf(mask[upper]).all() and (mask[~upper] == 0).all())


def _pool(x: torch.Tensor, ids: torch.Tensor, tower: TextTower) -> torch.Tensor:
    from open_clip.transformer import text_global_pool

    return text_global_pool(x, ids, tower.pool_type, eos_token_id=tower.eos_id)


def word_embeddings(text_backbone, word: str) -> torch.Tensor:
    """(n_tokens, width) token embeddings of ``word`` (its BPE pieces, without start/end tokens)."""
    ids = _token_ids(text_backbone.tokenizer, word)[1:-1]
    tower = text_tower(text_backbone.model)
    return tower.token_embedding(torch.tensor(ids, device=tower.token_embedding.weight.device))
