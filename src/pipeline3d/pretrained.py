"""Using the pipeline's models outside the workflow: load what it published, save and reload a model as a folder.

    import pipeline3d
    encoder = pipeline3d.load_encoder("results/models/nepa")
    head = pipeline3d.load_retrieval_head("results/heads/retrieval/demo-mesh/nepa")
    model = pipeline3d.load_promptsg("results/heads/promptsg/demo-img/full/model")
    pipeline3d.save_pretrained(head, "my-head")     # config.json + model.safetensors
    head = pipeline3d.from_pretrained("my-head")    # any kind, told by config.json

Each ``load_*`` takes a folder: one the workflow wrote (``encoder.json`` + ``encoder.safetensors``, or ``head.json``
+ the files it names) or one ``save_pretrained`` wrote; the encoder and the two heads also take the explicit weights
and JSON paths. The folder layout of ``save_pretrained`` is ``huggingface_hub``'s ``ModelHubMixin`` one:
``config.json`` is the kind's usual JSON description (its ``format`` names the kind; it holds the registry name and
sizes or the architecture, the provenance, the weights' file name and sha256) and ``model.safetensors`` the weights.
An alignment keeps its unfrozen text weights beside them in ``text_tower.safetensors``; its frozen rest is rebuilt
from the base text weights, whose sha256 the JSON records (pass ``text_weights`` unless it was a random init or a
``local-dir:`` model). Writes are atomic, the JSON last; every load checks the weights' sha256 against the JSON.

The builders and loaders are the pipeline's own (``train.export``, ``embed.metric_head``, ``embed.retrieval_head``,
``embed.text3d_alignment``); this module finds the files and picks the loader. A loaded model keeps the JSON it came
from in ``.sidecar`` (an alignment: ``.head``), which ``save_pretrained`` carries over.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from torch import nn

from .embed import metric_head as _metric
from .embed import retrieval_head as _retrieval
from .embed import text3d_alignment as _alignment
from .embed.backbones import RANDOM_INIT
from .embed.retrieval_head import RetrievalModel
from .embed.text3d_alignment import LoadedAlignment
from .models.heads import ProjectionHead
from .train import export as _encoder

CONFIG_NAME = "config.json"  # huggingface_hub.constants.CONFIG_NAME
WEIGHTS_NAME = "model.safetensors"  # huggingface_hub.constants.SAFETENSORS_SINGLE_FILE
TEXT_TOWER_NAME = "text_tower.safetensors"  # an alignment's unfrozen text weights, beside its projection

Device = str | torch.device


@dataclass(frozen=True)
class Kind:
    name: str  # for messages
    format: str  # the JSON's "format"
    json: str  # the JSON's name in the workflow's results
    folder: str  # where the workflow writes it
    loader: str  # the function of this module that loads it


ENCODER = Kind("encoder", _encoder.FORMAT, "encoder.json", "results/models/<method>/", "load_encoder")
METRIC_HEAD = Kind(
    "metric head", _metric.FORMAT, "head.json", "results/heads/metric/<modality>/<dataset>/<model>/", "load_metric_head"
)
RETRIEVAL_HEAD = Kind(
    "retrieval head",
    _retrieval.FORMAT,
    "head.json",
    "results/heads/retrieval/<dataset>/<method>/",
    "load_retrieval_head",
)
ALIGNMENT = Kind(
    "text-3D alignment",
    _alignment.FORMAT,
    "head.json",
    "results/align_text3d/<dataset>/<method>/fold<k>/",
    "load_alignment",
)
KINDS = {kind.format: kind for kind in (ENCODER, METRIC_HEAD, RETRIEVAL_HEAD, ALIGNMENT)}


# ---- finding the files ------------------------------------------------------------------------------------------


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: cannot read it as JSON: {exc}") from exc
    return data if isinstance(data, dict) else {}


def _holds(path: Path, kind: Kind | None) -> bool:
    """Whether the JSON ``path`` describes a model of ``kind`` (any kind: None); for hints, so never raises."""
    try:
        found = KINDS.get(json.loads(path.read_text()).get("format"))
    except (OSError, ValueError, AttributeError):
        return False
    return found is not None and kind in (None, found)


def _find(directory: str | Path, kind: Kind | None) -> tuple[Path, dict[str, Any], Kind]:
    """The JSON describing the model in ``directory`` (``config.json`` first, then the workflow's name), its content
    and its kind; wrong kinds and empty folders are errors naming the folder."""
    folder = Path(directory)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such directory")
    names = [CONFIG_NAME, *dict.fromkeys(k.json for k in ([kind] if kind else KINDS.values()))]
    for name in names:
        path = folder / name
        if not path.is_file():
            continue
        sidecar = _read_json(path)
        found = KINDS.get(sidecar.get("format"))
        if found is None:
            raise ValueError(f"{path}: format {sidecar.get('format')!r} is none of pipeline3d's ({', '.join(KINDS)})")
        if kind is not None and found is not kind:
            raise ValueError(
                f"{folder}: holds a {found.name} ({path.name}), not a {kind.name}: use pipeline3d.{found.loader}"
            )
        return path, sidecar, found
    inside = sorted({p.parent.name for name in names for p in folder.glob(f"*/{name}") if _holds(p, kind)})
    what = kind.name if kind else "pipeline3d model"
    where = f"{kind.json} (the workflow's {kind.folder})" if kind else "encoder.json or head.json (the workflow's)"
    raise FileNotFoundError(
        f"{folder}: no {what} here: no {CONFIG_NAME} (save_pretrained) nor {where}"
        + (f"; these subfolders hold one: {', '.join(inside)}" if inside else "")
    )


def _named_file(json_path: Path, name: Any) -> Path:
    """The file ``name`` (as the JSON records it) beside ``json_path``; missing is an error naming both."""
    if not name:
        raise ValueError(f"{json_path}: names no weights file")
    path = json_path.parent / Path(str(name)).name
    if not path.is_file():
        raise FileNotFoundError(f"{json_path.parent}: {path.name} is missing (described by {json_path.name})")
    return path


def _pair(path: str | Path, json_path: str | Path | None, kind: Kind) -> tuple[Path, Path]:
    """(weights, JSON): the explicit pair, or the ones in the folder ``path``."""
    if json_path is not None:
        return Path(path), Path(json_path)
    if Path(path).is_file():
        raise ValueError(f"{path}: is a file; pass its JSON too (json_path=...) or the folder that holds both")
    found, sidecar, _ = _find(path, kind)
    return _named_file(found, sidecar.get("weights")), found


def _keep(model: nn.Module, json_path: Path) -> nn.Module:
    model.sidecar = _read_json(json_path)
    return model


# ---- loading ----------------------------------------------------------------------------------------------------


def load_encoder(path: str | Path, json_path: str | Path | None = None, *, device: Device = "cpu") -> nn.Module:
    """An exported encoder (the model registry rebuilds it by name and sizes) from its folder or its two files."""
    weights, json_path = _pair(path, json_path, ENCODER)
    return _keep(_encoder.load_encoder(weights, json_path, device=device), json_path)


def load_metric_head(path: str | Path, json_path: str | Path | None = None, *, device: Device = "cpu") -> nn.Module:
    """A metric head (``ProjectionHead``, eval mode; ``embed.metric_head.project`` embeds with it)."""
    weights, json_path = _pair(path, json_path, METRIC_HEAD)
    return _keep(_metric.load_metric_head(weights, json_path).to(device), json_path)


def load_retrieval_head(
    path: str | Path, json_path: str | Path | None = None, *, device: Device = "cpu"
) -> RetrievalModel:
    """A retrieval head (eval mode; ``.embed(vectors)`` gives the post-BN retrieval features)."""
    weights, json_path = _pair(path, json_path, RETRIEVAL_HEAD)
    return _keep(_retrieval.load_retrieval_head(weights, json_path, device=device), json_path)


def load_alignment(
    directory: str | Path, *, text_weights: str | Path | None = None, device: Device = "cpu"
) -> LoadedAlignment:
    """A text-3D alignment (one fold's folder): the text backbone with its trained blocks, and the projection.

    The frozen part of the text tower is rebuilt from the base weights it was trained from: ``text_weights`` names
    that file (not needed for a random init or a ``local-dir:`` model, whose folder holds its weights)."""
    json_path, head, _ = _find(directory, ALIGNMENT)
    text = head.get("text") or {}
    projection = _named_file(json_path, (head.get("projection") or {}).get("file"))
    tower = _named_file(json_path, text.get("file"))
    model = str(text.get("model"))
    random_init = text.get("weights_source") == RANDOM_INIT
    if text_weights is None and not random_init and not model.startswith("local-dir:"):
        raise ValueError(
            f"{json_path}: the text tower was trained from the base weights {text.get('weights_file')!r} "
            f"of {model} (sha256 {str(text.get('base_weights_sha256'))[:16]}...): "
            "pass text_weights=<that file>"
        )
    text_config = {"model": model, "weights": text_weights, "random_init": random_init}
    return _alignment.load_alignment(json_path, projection, tower, text_config, device=device)


def load_promptsg(
    directory: str | Path, *, text_weights: str | Path | None = None, device: Device = "cpu"
) -> nn.Module:
    """A PromptSG model (the ``model/`` folder of a train_promptsg job; eval mode, ``.embed(batch)`` gives the
    retrieval features): its trained backbone (a 3D encoder or a timm image backbone), its head and the frozen text
    tower, rebuilt from ``text_weights`` (default: the file the JSON records) and checked against its sha256."""
    from .embed.promptsg import load_promptsg as _load

    return _load(directory, text_weights=text_weights, device=device)


def from_pretrained(
    directory: str | Path, *, device: Device = "cpu", text_weights: str | Path | None = None
) -> nn.Module | LoadedAlignment:
    """Whatever model ``directory`` holds (a ``save_pretrained`` folder or a workflow one), by its JSON's format."""
    _, _, kind = _find(directory, None)
    if kind is ALIGNMENT:
        return load_alignment(directory, text_weights=text_weights, device=device)
    loader = {ENCODER: load_encoder, METRIC_HEAD: load_metric_head, RETRIEVAL_HEAD: load_retrieval_head}[kind]
    return loader(directory, device=device)


# ---- saving -----------------------------------------------------------------------------------------------------


def _projection_config(head: ProjectionHead) -> dict[str, Any]:
    """``build_head``'s arguments for this head, read off its layers."""
    linears = [m for m in head.net if isinstance(m, nn.Linear)]
    dropouts = [m.p for m in head.net if isinstance(m, nn.Dropout)]
    return {
        "in_dim": linears[0].in_features,
        "out_dim": linears[-1].out_features,
        "hidden": linears[0].out_features if len(linears) > 1 else None,
        "layers": len(linears),
        "dropout": float(dropouts[0]) if dropouts else 0.0,
        "normalize": bool(head.normalize),
        "standardize": bool(head.standardize),
    }


def _save_alignment(loaded: LoadedAlignment, folder: Path) -> None:
    head, text = loaded.head, loaded.head["text"]
    own = {"format", "format_version", "projection", "text", "trainable_blocks", "temperature"}
    # save_alignment reads only these three attributes of the training objective
    parts = SimpleNamespace(
        text_tower=loaded.tower, projection=loaded.projection, loss=SimpleNamespace(temperature=head["temperature"])
    )
    _alignment.save_alignment(
        parts,
        loaded.backbone,
        folder / WEIGHTS_NAME,
        folder / TEXT_TOWER_NAME,
        folder / CONFIG_NAME,
        projection_config=head["projection"]["config"],
        text_config={"model": text["model"]},
        seed=int(text["seed"]),
        extra={k: v for k, v in head.items() if k not in own},
    )


def save_pretrained(model: nn.Module | LoadedAlignment, directory: str | Path) -> Path:
    """Write ``model`` to ``directory`` as ``config.json`` + ``model.safetensors`` (an alignment: + its
    ``text_tower.safetensors``); returns the folder. Models: a registry encoder, a metric head
    (``ProjectionHead``), a ``RetrievalModel``, or a ``LoadedAlignment`` (``load_alignment``'s result)."""
    folder = Path(directory)  # created by the (atomic) writers
    weights, config = folder / WEIGHTS_NAME, folder / CONFIG_NAME
    old = getattr(model, "sidecar", None) or {}  # the JSON it was loaded from: its provenance is kept
    if isinstance(model, LoadedAlignment):
        _save_alignment(model, folder)
    elif isinstance(model, RetrievalModel):
        _retrieval.save_retrieval_head(
            model, {k: v for k, v in old.items() if k not in ("weights", "sha256")}, weights, config
        )
    elif isinstance(model, ProjectionHead):
        source = old.get("source") or {"model": None, "weights_sha256": None}  # unknown for a head built here
        _metric.save_metric_head(
            model, weights, config, {**old.get("extra", {}), "config": _projection_config(model), "source": source}
        )
    elif isinstance(model, nn.Module):
        _encoder.save_encoder(model, weights, config, dict(old.get("extra", {})), name=old.get("encoder"))
    else:
        raise TypeError(
            f"save_pretrained: cannot save a {type(model).__name__} (an encoder, a metric or retrieval "
            "head, or a loaded alignment)"
        )
    return folder
