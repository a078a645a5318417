"""Export a trained encoder as safetensors weights + a JSON sidecar, and rebuild it from the pair.

The weights file holds only tensors (no pickled code); the JSON names the registry entry and the keyword arguments
it was created with (``encoder.config``), the sha256 of the weights file and caller metadata (run config, steps,
git describe ...). Both are written atomically, the JSON last, so a JSON on disk always describes finished weights.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from ..io.atomic import write_json
from ..io.weights import load_verified, read_sidecar, write_weights

FORMAT = "pipeline3d-encoder"
FORMAT_VERSION = 1


def registry_name(encoder: nn.Module) -> str:
    """The name ``create_encoder`` knows the encoder by: ``encoder.registry_name`` or ``encoder.config["name"]``."""
    name = getattr(encoder, "registry_name", None) or (getattr(encoder, "config", None) or {}).get("name")
    if not name:
        raise ValueError(
            f"{type(encoder).__name__} has no registry_name attribute (and no 'name' in its config): "
            "pass name= to save_encoder"
        )
    return str(name)


def save_encoder(
    encoder: nn.Module,
    safetensors_path: str | Path,
    json_path: str | Path,
    extra: dict[str, Any],
    *,
    name: str | None = None,
) -> dict[str, Any]:
    """Write ``encoder``'s state dict to ``safetensors_path`` and its description to ``json_path``; return the JSON.

    ``extra`` must be JSON-serialisable. Tensors are copied to contiguous CPU memory (tied weights become separate
    tensors, which safetensors requires and ``load_state_dict`` accepts).
    """
    name = name or registry_name(encoder)
    config = dict(getattr(encoder, "config", None) or {})
    config.pop("name", None)
    tensors = encoder.state_dict()
    description = {"format": FORMAT, "format_version": FORMAT_VERSION, "encoder": name, "config": config}
    safetensors_path = Path(safetensors_path)
    sha256 = write_weights(safetensors_path, tensors, description)
    sidecar = {
        **description,
        "weights": safetensors_path.name,
        "sha256": sha256,
        "n_params": int(sum(p.numel() for p in encoder.parameters())),
        "tensors": len(tensors),
        "extra": extra,
    }
    write_json(json_path, sidecar)
    return sidecar


def load_encoder(
    safetensors_path: str | Path,
    json_path: str | Path,
    *,
    factory: Callable[..., nn.Module] | None = None,
    device: str | torch.device = "cpu",
) -> nn.Module:
    """Rebuild an exported encoder: ``factory(name, **config)`` (default: the model registry's ``create_encoder``),
    then load the weights strictly after checking the file's sha256 against the JSON; the encoder is moved to
    ``device`` after (read on the CPU, so any device works, ``meta`` included)."""
    sidecar = read_sidecar(json_path, fmt=FORMAT, version=FORMAT_VERSION, what="encoder")
    tensors = load_verified(safetensors_path, sidecar.get("sha256"), json_path, device="cpu")
    if factory is None:
        from ..models.registry import create_encoder  # lazy: keeps this module importable without the models

        factory = create_encoder
    encoder = factory(sidecar["encoder"], **sidecar["config"])
    encoder.load_state_dict(tensors, strict=True)
    return encoder.to(device)
