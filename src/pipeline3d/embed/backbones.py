"""Frozen image (timm) and text (open_clip) encoders built from local weight files only.

Weights come from a file named in the config, never from a hub: ``HF_HUB_OFFLINE=1`` is set before timm or
open_clip import ``huggingface_hub``, hub-schema model names are refused, and a missing file is an error that
names the config key and the path. Random initialisation happens only when the caller passes
``allow_random_init=True`` (the config says so explicitly); it is logged as a WARNING and seeded from the config
seed, so a random-init run is still reproducible.

* timm: ``create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=...), num_classes=0)``. timm's own
  checkpoint filters then adapt the file to the model, e.g. a DINOv2 ViT trained at 518 px built with
  ``img_size=224`` gets its position embeddings resampled to the 16 x 16 grid. The classifier is dropped
  (``num_classes=0``), so the model returns pooled features.
* open_clip: ``create_model_and_transforms(name, pretrained=<file>)`` for a built-in architecture name, or
  ``local-dir:<folder>`` (``open_clip_config.json`` + one weights file). Only the text tower is kept.

Each backbone records what makes its vectors reproducible: model name, weights sha256 and the preprocessing
(image: input size, interpolation, crop, mean/std; text: tokenizer and context length). ``describe()`` turns that
into the string key-value metadata of the embeddings parquet.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

# Must precede the first import of huggingface_hub (through timm or open_clip): it reads the flag at import time.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from torch import nn  # noqa: E402

from ..io.weights import file_sha256  # noqa: E402
from ..rng import rng_for  # noqa: E402

log = logging.getLogger(__name__)

RANDOM_INIT = "random-init"
# Model-name schemas that make timm or open_clip fetch configs or weights from a hub.
_HUB_SCHEMAS = ("hf-hub:", "hf_hub:")
_OPEN_CLIP_LOCAL_DIR = "local-dir:"
# File names open_clip accepts as weights inside a local-dir folder.
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pth", ".pt")


class MissingWeightsError(FileNotFoundError):
    """A configured weight file does not exist (or none was configured and random init was not allowed)."""


class WeightsLoadError(RuntimeError):
    """A weight file exists but does not fit the configured architecture."""


# What an embedding stage reports as bad input (named file / key / problem) rather than as a bug.
EMBEDDING_ERRORS = (ValueError, KeyError, MissingWeightsError, WeightsLoadError)


@dataclass(frozen=True)
class WeightsInfo:
    """Where a backbone's weights came from: ``source`` is "file" or "random-init"."""

    source: str
    path: str
    sha256: str


def state_dict_sha256(module: nn.Module) -> str:
    """sha256 over the names, dtypes, shapes and bytes of a module's tensors (identifies random-init weights)."""
    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        t = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _refuse_hub_name(name: str, config_key: str) -> None:
    if name.lower().startswith(_HUB_SCHEMAS):
        raise ValueError(
            f"{config_key}: model name {name!r} loads from a hub, and downloads are disabled; "
            "name the architecture and give a local weight file"
        )


def resolve_weights(
    weights: str | os.PathLike | None, config_key: str, what: str, allow_random_init: bool
) -> Path | None:
    """The weight file to load, or None for an explicitly allowed random init.

    A path that is given but missing is always an error, even with ``allow_random_init``: a typo must not silently
    turn into random features.
    """
    if weights is None or str(weights) == "":
        if allow_random_init:
            return None
        raise MissingWeightsError(
            f"{config_key}: no weight file configured for {what}. Weights are loaded from local files only "
            f"(no downloads): set {config_key} to the file, or allow random init explicitly for a smoke test."
        )
    path = Path(weights).expanduser()
    if not path.is_file():
        raise MissingWeightsError(
            f"{config_key}: weight file for {what} not found: {path}. Weights are loaded from local files only "
            "(no downloads): put the file there or fix the path in the config."
        )
    return path.resolve()


def _torch_seed(seed: int, name: str) -> int:
    return int(rng_for(seed, "embed.random_init", name).integers(0, 2**63 - 1))


@contextmanager
def _seeded_init(seed: int, name: str, random_init: bool) -> Iterator[None]:
    """Seed torch's global generator for a random init, without disturbing the caller's RNG state."""
    if not random_init:
        yield
        return
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_torch_seed(seed, name))
        yield


def _warn_random_init(kind: str, name: str, config_key: str) -> None:
    log.warning(
        "%s backbone %s has RANDOM weights (%s unset, random init allowed explicitly): its vectors carry "
        "no learned meaning; use this only for smoke tests",
        kind,
        name,
        config_key,
    )


def _metadata(
    model: str, weights: WeightsInfo, preprocessing: dict[str, Any], dim: int, modality: str
) -> dict[str, str]:
    return {
        "model": model,
        "modality": modality,
        "weights_sha256": weights.sha256,
        "weights_source": weights.source,
        "weights_file": Path(weights.path).name if weights.path else "",
        "preprocessing": json.dumps(preprocessing, sort_keys=True),
        "dim": str(dim),
    }


# ----------------------------------------------------------------------------------------------------------------
# Image backbones (timm)


@dataclass
class ImageBackbone:
    """A frozen timm model returning pooled features, with the eval transform it was trained with."""

    name: str
    model: nn.Module
    transform: Callable  # PIL.Image (RGB) -> float tensor (3, H, W)
    preprocessing: dict[str, Any]
    weights: WeightsInfo
    dim: int

    def describe(self) -> dict[str, str]:
        """Parquet key-value metadata for vectors made with this backbone."""
        return _metadata(self.name, self.weights, self.preprocessing, self.dim, "image")


def build_image_backbone(
    name: str,
    weights: str | os.PathLike | None,
    *,
    config_key: str = "embed.image.weights",
    img_size: int | None = None,
    allow_random_init: bool = False,
    seed: int = 0,
    **model_kwargs: Any,
) -> ImageBackbone:
    """A timm model ``name`` with the weights of the local file ``weights`` (safetensors or a torch state dict).

    ``img_size`` builds the model for that input size (ViTs resample their position embeddings from the
    checkpoint's grid; e.g. 224 for a DINOv2 model trained at 518) and sets the preprocessing to match.
    ``model_kwargs`` go to ``timm.create_model`` unchanged.
    """
    import timm
    from timm.data import create_transform, resolve_model_data_config

    _refuse_hub_name(name, config_key)
    path = resolve_weights(weights, config_key, f"timm model {name!r}", allow_random_init)
    kwargs = dict(model_kwargs)
    if img_size is not None:
        kwargs["img_size"] = int(img_size)
    with _seeded_init(seed, name, random_init=path is None):
        try:
            if path is None:
                _warn_random_init("image", name, config_key)
                model = timm.create_model(name, pretrained=False, num_classes=0, **kwargs)
            else:
                log.info("image backbone %s: loading weights from %s", name, path)
                model = timm.create_model(
                    name, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), num_classes=0, **kwargs
                )
        except TypeError as exc:  # e.g. img_size for a CNN, whose input size is free anyway
            raise ValueError(f"timm model {name!r} does not take the arguments {sorted(kwargs)}: {exc}") from exc
        except (RuntimeError, KeyError, ValueError) as exc:
            if path is None:
                raise
            raise WeightsLoadError(f"{config_key}: {path} does not load into timm model {name!r}: {exc}") from exc
    model.eval().requires_grad_(False)

    data_cfg = resolve_model_data_config(model)
    if img_size is not None:
        # The pretrained cfg keeps the checkpoint's input size (518 for DINOv2); the model now expects img_size.
        data_cfg["input_size"] = (data_cfg["input_size"][0], int(img_size), int(img_size))
    transform = create_transform(**data_cfg, is_training=False)
    preprocessing = {
        "library": f"timm {timm.__version__}",
        "input_size": list(data_cfg["input_size"]),
        "interpolation": data_cfg["interpolation"],
        "crop_pct": float(data_cfg["crop_pct"]),
        "crop_mode": data_cfg.get("crop_mode", "center"),
        "mean": [float(v) for v in data_cfg["mean"]],
        "std": [float(v) for v in data_cfg["std"]],
        "color": "RGB (grey replicated; alpha composited on black; 16-bit grey scaled to 8 bits)",
        "pooling": "timm default (num_classes=0)",
        "normalize": "l2",
    }
    info = (
        WeightsInfo("file", str(path), file_sha256(path))
        if path is not None
        else WeightsInfo(RANDOM_INIT, "", state_dict_sha256(model))
    )
    # Pooled-feature width; models with a conv head after pooling (MobileNetV3) report it as head_hidden_size.
    dim = int(getattr(model, "head_hidden_size", None) or model.num_features)
    backbone = ImageBackbone(
        name=name, model=model, transform=transform, preprocessing=preprocessing, weights=info, dim=dim
    )
    log.info(
        "image backbone %s: dim %d | weights %s %s | preprocessing %s",
        name,
        backbone.dim,
        info.source,
        info.sha256[:16],
        json.dumps(preprocessing, sort_keys=True),
    )
    return backbone


def configured_image_backbone(img: dict[str, Any], *, seed: int) -> ImageBackbone:
    """The backbone an ``embed.image`` config section describes (its ``contract.IMAGE_BACKBONE_KEYS``): what the
    embedding stage embeds with and what PromptSG trains on image datasets."""
    return build_image_backbone(
        img["model"],
        img.get("weights"),
        config_key="embed.image.weights",
        img_size=img.get("img_size"),
        allow_random_init=bool(img.get("random_init")),
        seed=int(seed),
        **dict(img.get("model_kwargs") or {}),
    )


# ----------------------------------------------------------------------------------------------------------------
# Text backbones (open_clip)


@dataclass
class TextBackbone:
    """An open_clip model of which only the text tower is used (``encode_text``), with its tokenizer."""

    name: str
    model: nn.Module
    tokenizer: Callable  # list[str] -> LongTensor (N, context_length)
    context_length: int
    preprocessing: dict[str, Any]
    weights: WeightsInfo
    dim: int
    image_transform: Callable | None = field(default=None, repr=False)  # only when the image tower was kept

    def describe(self) -> dict[str, str]:
        """Parquet key-value metadata for vectors made with this backbone."""
        return _metadata(self.name, self.weights, self.preprocessing, self.dim, "text")

    @property
    def cache_namespace(self) -> str:
        """What, besides the caption, determines a caption's vector (the text-cache key)."""
        return f"{self.name}|{self.weights.sha256}|ctx{self.context_length}"


def _local_dir_weights(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in _WEIGHT_SUFFIXES)


def _combined_sha256(files: list[Path]) -> str:
    """One file: its sha256. Several (open_clip then picks one by its own preference): a digest over all."""
    if len(files) == 1:
        return file_sha256(files[0])
    digest = hashlib.sha256()
    for f in files:
        digest.update(f"{f.name}\0{file_sha256(f)}\n".encode())
    return digest.hexdigest()


def build_text_backbone(
    name: str,
    weights: str | os.PathLike | None = None,
    *,
    config_key: str = "embed.text.weights",
    allow_random_init: bool = False,
    seed: int = 0,
    keep_image_tower: bool = False,
) -> TextBackbone:
    """The open_clip text tower of architecture ``name`` with the CLIP weights in the local file ``weights``.

    ``name`` is a built-in open_clip architecture (e.g. "EVA02-L-14-336") or ``local-dir:<folder>`` holding
    ``open_clip_config.json`` and the weights (then ``weights`` must be None). The image tower is dropped after
    loading to free memory unless ``keep_image_tower``.
    """
    import open_clip

    _refuse_hub_name(name, config_key)
    if name.startswith(_OPEN_CLIP_LOCAL_DIR):
        folder = Path(name[len(_OPEN_CLIP_LOCAL_DIR) :]).expanduser()
        if weights is not None and str(weights) != "":
            raise ValueError(f"{config_key}: {name!r} reads its weights from the folder; leave {config_key} empty")
        if not (folder / "open_clip_config.json").is_file():
            raise MissingWeightsError(f"{config_key}: open_clip folder {folder} has no open_clip_config.json")
        files = _local_dir_weights(folder)
        if not files and not allow_random_init:
            raise MissingWeightsError(
                f"{config_key}: no weight file ({', '.join(_WEIGHT_SUFFIXES)}) in open_clip folder {folder}. "
                "Weights are loaded from local files only (no downloads)."
            )
        path = folder.resolve() if files else None
        create_args: dict[str, Any] = {}
        # Seed a random init by the folder's config, not its location, so it is the same on every machine.
        seed_key = "local-dir:" + file_sha256(folder / "open_clip_config.json")
    else:
        path = resolve_weights(weights, config_key, f"open_clip model {name!r}", allow_random_init)
        files = [path] if path is not None else []
        # An absolute path is never mistaken for one of open_clip's download tags.
        create_args = {"pretrained": str(path)} if path is not None else {}
        seed_key = name

    with _seeded_init(seed, seed_key, random_init=path is None):
        if path is None:
            _warn_random_init("text", name, config_key)
        else:
            log.info("text backbone %s: loading weights from %s", name, path)
        try:
            model, _, image_transform = open_clip.create_model_and_transforms(
                name,
                device="cpu",
                precision="fp32",
                pretrained_image=False,
                pretrained_text=False,
                load_weights=path is not None,
                **create_args,
            )
        except (RuntimeError, KeyError, ValueError) as exc:
            if path is None:
                raise
            raise WeightsLoadError(f"{config_key}: {path} does not load into open_clip model {name!r}: {exc}") from exc
    if not keep_image_tower:
        model.visual = None
        image_transform = None
    model.eval().requires_grad_(False)
    tokenizer = open_clip.get_tokenizer(name)
    context_length = int(getattr(tokenizer, "context_length", 0) or getattr(model, "context_length", 77))

    info = (
        WeightsInfo("file", str(path), _combined_sha256(files))
        if path is not None
        else WeightsInfo(RANDOM_INIT, "", state_dict_sha256(model))
    )
    with torch.inference_mode():
        dim = int(model.encode_text(tokenizer([""])).shape[-1])
    preprocessing = {
        "library": f"open_clip {open_clip.__version__}",
        "tokenizer": type(tokenizer).__name__,
        "context_length": context_length,
        "normalize": "l2",
    }
    backbone = TextBackbone(
        name=name,
        model=model,
        tokenizer=tokenizer,
        context_length=context_length,
        preprocessing=preprocessing,
        weights=info,
        dim=dim,
        image_transform=image_transform,
    )
    log.info(
        "text backbone %s: dim %d | weights %s %s | context %d",
        name,
        dim,
        info.source,
        info.sha256[:16],
        context_length,
    )
    return backbone
