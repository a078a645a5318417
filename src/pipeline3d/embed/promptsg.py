"""PromptSG (prompt-guided retrieval) over a trainable backbone's token states: the model and what it publishes.

Per item: the backbone gives token states (B, T, d) (a 3D encoder's hidden states of the item's cached tokens, or a
timm image backbone's patch tokens) and their mask; their masked mean is the item's visual vector. With textual
inversion, an MLP maps that vector to pseudo-word embeddings that fill the template's slot ("a 3D model of a {}
object"), and the FROZEN text tower encodes the composed prompt; without it, the prompt is the template with its
placeholder word, the same for every item. With the interaction, the prompt cross-attends to the item's own tokens
and ``layers`` self-attention blocks follow (``models.interaction``): the fused token is the item's feature;
without it, the visual vector is. Then Linear(d -> bnneck_dim), a BNNeck (the post-BN feature is the retrieval
embedding, cosine), and the classifier (``linear`` or ``arcface``) on the post-BN feature.

The text tower is not a submodule: not trained, not in the state dict (it is rebuilt from its weights file, whose
sha256 the JSON records), and its parameters never get a gradient (tested).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..models.heads import BNNeck, TextualInversion
from ..models.interaction import MultiModalInteraction
from ..models.pseudo_prompt import PromptTemplate, encode_with_pseudo_tokens
from ..objectives.arcface import ArcFace

FORMAT = "pipeline3d-promptsg"
FORMAT_VERSION = 1
CLASSIFIERS = ("linear", "arcface")
IMAGE_WEIGHTS = "image_backbone.safetensors"


@dataclass(frozen=True)
class PromptSGConfig:
    """The architecture (what the JSON records to rebuild the trainable part)."""

    token_dim: int  # width of the backbone's token states
    text_dim: int  # the text tower's output width
    word_dim: int  # the text tower's token-embedding width (pseudo tokens live there)
    n_classes: int
    bnneck_dim: int = 1024
    classifier: str = "arcface"
    arcface_margin: float = 0.3
    arcface_scale: float = 30.0
    inversion: bool = True
    n_tokens: int = 1
    interaction: bool = True
    interaction_layers: int = 3
    interaction_heads: int = 8

    def __post_init__(self) -> None:
        if self.classifier not in CLASSIFIERS:
            raise ValueError(f"promptsg classifier must be one of {CLASSIFIERS}, got {self.classifier!r}")

    @classmethod
    def of(cls, values: Mapping[str, Any]) -> PromptSGConfig:
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown PromptSG config keys {unknown}")
        return cls(**values)


def masked_mean(tokens: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """(B, T, d), (B, T) -> (B, d): the mean over each item's valid tokens."""
    w = valid.to(tokens.dtype)[..., None]
    return (tokens * w).sum(1) / w.sum(1).clamp_min(1.0)


class PromptSG(nn.Module):
    """Backbone + textual inversion + prompt + interaction + BNNeck + classifier (the trainable part).

    ``text``: the frozen text backbone (``embed.backbones.TextBackbone``) and ``prompt`` its prepared template;
    both are attached with ``attach_text`` (the model is built before, e.g. when rebuilt from a file)."""

    def __init__(self, backbone: nn.Module, config: PromptSGConfig) -> None:
        super().__init__()
        c = self.config = config
        self.backbone = backbone
        self.inversion = TextualInversion(c.token_dim, c.word_dim, c.n_tokens) if c.inversion else None
        self.to_text = nn.Linear(c.bnneck_dim, c.text_dim) if c.inversion else None
        self.interaction = (
            MultiModalInteraction(c.token_dim, c.text_dim, heads=c.interaction_heads, layers=c.interaction_layers)
            if c.interaction
            else None
        )
        self.fc = nn.Linear(c.token_dim, c.bnneck_dim)
        self.neck = BNNeck(c.bnneck_dim)
        self.classifier = (
            ArcFace(c.bnneck_dim, c.n_classes, margin=c.arcface_margin, scale=c.arcface_scale)
            if c.classifier == "arcface"
            else nn.Linear(c.bnneck_dim, c.n_classes)
        )
        self._text: Any = None
        self._prompt: PromptTemplate | None = None
        # the shared prompt without inversion: computed once from the frozen tower (not trained, not saved)
        self.register_buffer("fixed_prompt", torch.zeros(0), persistent=False)

    @property
    def needs_text(self) -> bool:
        return self.inversion is not None or self.interaction is not None

    def attach_text(self, text_backbone: Any, prompt: PromptTemplate) -> None:
        """The frozen text tower and template (kept outside the module tree: never trained or saved)."""
        for p in text_backbone.model.parameters():
            p.requires_grad_(False)
        text_backbone.model.eval()
        self._text, self._prompt = text_backbone, prompt
        if self.inversion is None:
            with torch.no_grad():
                device = next(text_backbone.model.parameters()).device
                word = text_backbone.tokenizer([prompt.template.format(prompt.placeholder)]).to(device)
                self.fixed_prompt = text_backbone.model.encode_text(word).float().to(self.fc.weight.device)

    def lr_scale_of(self, backbone_scale: float):
        """``lr_scale(name)`` for the optimiser groups: the backbone learns at ``backbone_scale`` x the head's rate."""
        return lambda name: backbone_scale if name.split(".", 1)[0] == "backbone" else 1.0

    def prompt_features(self, visual: torch.Tensor) -> torch.Tensor:
        """(B, text_dim) prompt embeddings: the pseudo-token prompt of each item, or the shared fixed prompt."""
        if self._text is None:
            raise RuntimeError("PromptSG: attach_text(...) first (the frozen text tower)")
        if self.inversion is None:
            return self.fixed_prompt.to(visual.device).expand(visual.shape[0], -1)
        tower_device = next(self._text.model.parameters()).device
        if tower_device != visual.device:
            self._text.model.to(visual.device)
        return encode_with_pseudo_tokens(self._text, self._prompt, self.inversion(visual)).float()

    def forward(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Every feature of a batch: pre/post-BN features, the prompt (None without text) and the fused feature."""
        tokens, valid = self.backbone(batch)
        visual = masked_mean(tokens, valid)
        prompt = self.prompt_features(visual) if self.needs_text else None
        fused = self.interaction(prompt, tokens, valid) if self.interaction is not None else visual
        pre, post = self.neck(self.fc(fused))
        return {"pre": pre, "post": post, "prompt": prompt, "fused": fused}

    def logits(self, post: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Class logits of post-BN features (ArcFace adds its margin to the true class when ``labels`` is given)."""
        if isinstance(self.classifier, ArcFace):
            return self.classifier(post, labels)
        return self.classifier(post)

    @torch.no_grad()
    def embed(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The published retrieval embedding of a batch: post-BN features, BN in inference mode."""
        was_training = self.training
        self.eval()
        try:
            return self(batch)["post"]
        finally:
            self.train(was_training)


class ShapeTokenBackbone(nn.Module):
    """A 3D encoder as a token backbone: a collated token batch -> (final hidden states, valid), run causally or
    not as it was pretrained."""

    def __init__(self, encoder: nn.Module, *, causal: bool) -> None:
        super().__init__()
        self.encoder = encoder
        self.causal = bool(causal)

    @property
    def dim(self) -> int:
        return int(self.encoder.config["d_model"])

    def forward(self, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.encoder(batch["feat"], batch["type_id"], batch["pos"], batch["valid"], causal=self.causal)
        return out.h, batch["valid"]


# ---- publishing -------------------------------------------------------------------------------------------------


def text_info(text_backbone: Any, text_cfg: Mapping[str, Any], prompt: PromptTemplate) -> dict[str, Any]:
    """What the JSON records of the frozen text tower: enough to rebuild it and to check it is the same one."""
    return {
        "model": text_cfg["model"],
        "weights": text_cfg.get("weights"),
        "random_init": bool(text_cfg.get("random_init", False)),
        "weights_sha256": text_backbone.weights.sha256,
        "template": prompt.template,
        "placeholder": prompt.placeholder,
    }


def save_promptsg(model: PromptSG, description: Mapping[str, Any], folder: str | Path) -> dict[str, Any]:
    """Write the trained backbone and ``folder``/head.{safetensors,json} (everything else; the JSON last, naming the
    weights and their sha256). A 3D encoder goes to encoder.{safetensors,json} in the encoder format any loader
    reads; a timm image backbone's state dict to image_backbone.safetensors, a weight file ``embed.image.weights``
    can name (timm loads it as it loads any local checkpoint). ``description`` (JSON-able) holds the text tower
    info (``text``), the class names, the token config (``tokens``) or the image backbone's (``image``)..."""
    from ..io.atomic import write_json
    from ..io.weights import write_weights

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    header = {"format": FORMAT, "format_version": FORMAT_VERSION, "config": asdict(model.config)}
    if isinstance(model.backbone, ShapeTokenBackbone):
        from ..train.export import save_encoder

        encoder = save_encoder(
            model.backbone.encoder,
            folder / "encoder.safetensors",
            folder / "encoder.json",
            extra={"causal": model.backbone.causal, "tokens": description.get("tokens"), "trained_by": FORMAT},
        )
        backbone = {
            "kind": "shape_encoder",
            "weights": "encoder.safetensors",
            "json": "encoder.json",
            "sha256": encoder["sha256"],
            "causal": model.backbone.causal,
        }
    else:
        image = dict(description["image"])
        sha256 = write_weights(folder / IMAGE_WEIGHTS, model.backbone.model.state_dict(), {**header, "image": image})
        backbone = {"kind": "image", "weights": IMAGE_WEIGHTS, "sha256": sha256, **image}
    head_state = {k: v for k, v in model.state_dict().items() if not k.startswith("backbone.")}
    sha256 = write_weights(folder / "head.safetensors", head_state, header)
    sidecar = {**description, **header, "weights": "head.safetensors", "sha256": sha256, "backbone": backbone}
    write_json(folder / "head.json", sidecar)
    return sidecar


def load_backbone(folder: Path, sidecar: Mapping[str, Any], head_json: Path) -> nn.Module:
    """The published backbone, its weights checked against the sha256 ``head.json`` records."""
    from ..io.weights import check_sha256

    bb = sidecar["backbone"]
    path = folder / bb["weights"]
    check_sha256(path, bb.get("sha256"), head_json)
    if bb["kind"] == "image":
        from .backbones import build_image_backbone
        from .image_tokens import ImageTokenBackbone

        image = build_image_backbone(
            bb["model"], path, img_size=bb.get("img_size"), **dict(bb.get("model_kwargs") or {})
        )
        return ImageTokenBackbone(image, trainable=False)
    from ..train.export import load_encoder

    return ShapeTokenBackbone(load_encoder(path, folder / bb["json"]), causal=bool(bb["causal"]))


def load_promptsg(
    folder: str | Path, *, text_weights: str | Path | None = None, device: str | torch.device = "cpu"
) -> PromptSG:
    """Rebuild a published PromptSG model (eval mode, the frozen text tower attached): the backbone from its files
    (a 3D encoder or a timm image backbone), the head from head.safetensors (sha256 checked against head.json),
    the text tower from ``text_weights`` (default: the path the JSON records), refused when its sha256 differs from
    the one it was trained with."""
    from ..embed.backbones import build_text_backbone
    from ..io.weights import load_verified, read_sidecar
    from ..models.pseudo_prompt import prepare_template

    folder = Path(folder)
    head_json = folder / "head.json"
    sidecar = read_sidecar(head_json, fmt=FORMAT, version=FORMAT_VERSION, what="PromptSG model")
    model = PromptSG(load_backbone(folder, sidecar, head_json), PromptSGConfig.of(sidecar["config"]))
    tensors = load_verified(folder / sidecar["weights"], sidecar.get("sha256"), head_json)
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    missing = [k for k in missing if not k.startswith("backbone.")]
    if missing or unexpected:
        raise ValueError(
            f"{folder / sidecar['weights']}: does not fit the model in {head_json} (missing {missing}, "
            f"unexpected {unexpected})"
        )
    text = sidecar["text"]
    if model.needs_text:
        backbone = build_text_backbone(
            text["model"],
            text_weights or text.get("weights"),
            allow_random_init=bool(text.get("random_init", False)),
            seed=int(sidecar.get("seed", 0)),
        )
        if backbone.weights.sha256 != text["weights_sha256"]:
            raise ValueError(
                f"{head_json}: the text weights have sha256 {backbone.weights.sha256[:16]}..., not the "
                f"{text['weights_sha256'][:16]}... it was trained with"
            )
        model.attach_text(
            backbone, prepare_template(backbone.tokenizer, text["template"], placeholder=text["placeholder"])
        )
    return model.to(device).eval()
