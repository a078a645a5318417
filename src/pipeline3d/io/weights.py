"""Published weights: a safetensors file described by a JSON sidecar that records its sha256.

Writers serialise with one fixed metadata key (safetensors orders a metadata map arbitrarily; we want identical
bytes for identical tensors) and write the weights before the sidecar, both atomically. Loaders read the sidecar,
check its format and the file's hash, and only then hand out tensors: weights never load into a model that another
file describes.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from .atomic import write_bytes
from .integrity import IntegrityError

HEADER_KEY = "pipeline3d"


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def safetensors_bytes(tensors: Mapping[str, torch.Tensor], description: Mapping[str, Any]) -> bytes:
    """Contiguous CPU copies of ``tensors`` (tied weights become separate tensors, as safetensors requires), with
    ``description`` as the single metadata entry."""
    from safetensors.torch import save

    header = {HEADER_KEY: json.dumps(dict(description), sort_keys=True)}
    return save({k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}, metadata=header)


def write_weights(path: str | Path, tensors: Mapping[str, torch.Tensor], description: Mapping[str, Any]) -> str:
    """Write the safetensors file atomically; returns its sha256 (for the sidecar, written after it)."""
    data = safetensors_bytes(tensors, description)
    write_bytes(Path(path), data)
    return hashlib.sha256(data).hexdigest()


def read_sidecar(json_path: str | Path, *, fmt: str, version: int | None, what: str) -> dict[str, Any]:
    """The JSON description of ``what``; unreadable files and other formats (or versions) are errors naming it."""
    json_path = Path(json_path)
    try:
        sidecar = json.loads(json_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{json_path}: cannot read the {what} description: {exc}") from exc
    if not isinstance(sidecar, dict):
        sidecar = {}
    if sidecar.get("format") != fmt or (version is not None and sidecar.get("format_version") != version):
        wanted = fmt if version is None else f"{fmt} v{version}"
        raise ValueError(
            f"{json_path}: not a {wanted} description "
            f"(format {sidecar.get('format')!r} v{sidecar.get('format_version')!r})"
        )
    return sidecar


def check_sha256(path: str | Path, expected: Any, described_by: str | Path) -> None:
    actual = file_sha256(path)
    if actual != expected:
        raise IntegrityError(
            f"{path}: sha256 {actual[:12]} does not match {described_by} ({str(expected)[:12]}); "
            "the weights are damaged or do not belong to this description"
        )


def load_verified(
    path: str | Path, expected_sha256: Any, described_by: str | Path, *, device: str | torch.device = "cpu"
) -> dict[str, torch.Tensor]:
    """The tensors of ``path`` after checking its sha256 against the one its description records."""
    from safetensors.torch import load_file

    check_sha256(path, expected_sha256, described_by)
    return load_file(str(path), device=str(device))
