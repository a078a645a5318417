"""Export a trained encoder as safetensors weights + a JSON sidecar, and rebuild it from the pair.

The weights file holds only tensors (no pickled code); the JSON names the registry entry and the keyword arguments
it was created with (``encoder.config``), the sha256 of the weights file and caller metadata (run config, steps,
git describe ...). Both are written atomically, the JSON last, so a JSON on disk always describes finished weights.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from ..io.atomic import write_bytes, write_json

FORMAT = "pipeline3d-encoder"
FORMAT_VERSION = 1


def registry_name(encoder: nn.Module) -> str:
    """The name ``create_encoder`` knows the encoder by: ``encoder.registry_name`` or ``encoder.config["name"]``."""
    name = getattr(encoder, "registry_name", None) or (getattr(encoder, "config", None) or {}).get("name")
    if not name:
        raise ValueError(f"{type(encoder).__name__} has no registry_name attribute (and no 'name' in its config): "
                         "pass name= to save_encoder")
    return str(name)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def save_encoder(encoder: nn.Module, safetensors_path: str | Path, json_path: str | Path, extra: dict[str, Any],
                 *, name: str | None = None) -> dict[str, Any]:
    """Write ``encoder``'s state dict to ``safetensors_path`` and its description to ``json_path``; return the JSON.

    ``extra`` must be JSON-serialisable. Tensors are copied to contiguous CPU memory (tied weights become separate
    tensors, which safetensors requires and ``load_state_dict`` accepts).
    """
    from safetensors.torch import save

    name = name or registry_name(encoder)
    config = dict(getattr(encoder, "config", None) or {})
    config.pop("name", None)
    tensors = {key: value.detach().to("cpu").contiguous().clone() for key, value in encoder.state_dict().items()}
    description = {"format": FORMAT, "format_version": FORMAT_VERSION, "encoder": name, "config": config}
    # One metadata key: safetensors writes its metadata map in no fixed order, and we want identical bytes.
    header = {"pipeline3d": json.dumps(description, sort_keys=True)}
    safetensors_path, json_path = Path(safetensors_path), Path(json_path)
    write_bytes(safetensors_path, save(tensors, metadata=header))
    sidecar = {**description, "weights": safetensors_path.name, "sha256": _sha256(safetensors_path),
               "n_params": int(sum(p.numel() for p in encoder.parameters())), "tensors": len(tensors),
               "extra": extra}
    write_json(json_path, sidecar)
    return sidecar


def load_encoder(safetensors_path: str | Path, json_path: str | Path, *,
                 factory: Callable[..., nn.Module] | None = None, device: str | torch.device = "cpu") -> nn.Module:
    """Rebuild an exported encoder: ``factory(name, **config)`` (default: the model registry's ``create_encoder``),
    then load the weights strictly after checking the file's sha256 against the JSON."""
    from safetensors.torch import load_file

    safetensors_path, json_path = Path(safetensors_path), Path(json_path)
    try:
        sidecar = json.loads(json_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{json_path}: cannot read the encoder description: {exc}") from exc
    if sidecar.get("format") != FORMAT or sidecar.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{json_path}: not a {FORMAT} v{FORMAT_VERSION} description "
                         f"(format {sidecar.get('format')!r} v{sidecar.get('format_version')!r})")
    actual = _sha256(safetensors_path)
    if actual != sidecar["sha256"]:
        raise ValueError(f"{safetensors_path}: sha256 {actual[:12]} does not match {json_path} "
                         f"({sidecar['sha256'][:12]}); the weights do not belong to this description")
    if factory is None:
        from ..models.registry import create_encoder  # lazy: keeps this module importable without the models

        factory = create_encoder
    encoder = factory(sidecar["encoder"], **sidecar["config"])
    encoder.load_state_dict(load_file(str(safetensors_path), device=str(device)), strict=True)
    return encoder.to(device)
