"""Texts paired with shapes for text-3D alignment: real captions from a manifest, or class prompts.

* Captions: rows of a caption dataset's manifest whose ``meta`` JSON holds a caption (``meta[field]``) and a shape
  reference (``meta[shape_field]``). The reference names a shape of the mesh dataset: ``<mesh dataset>/<value>``
  (a value that already starts with ``<mesh dataset>/`` is taken as is). A caption is relevant to its own shape.
* Class prompts (no caption dataset): each class's prompts from the templates (``embed.text.templates``); a prompt
  is relevant to every shape of its class. Their ids are ``prompt/<label>/<template index>``.

Both give a ``CaptionTable``: caption_id, text, shape_id ("" for a class prompt) and label, sorted by caption id so
every ranking is independent of manifest order.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..io.tables import read_parquet
from .text import prompt_texts

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CaptionTable:
    """Texts to align with shapes; ``shape_ids[i] == ""`` marks a class prompt (relevant by label)."""

    caption_ids: list[str]
    texts: list[str]
    shape_ids: list[str]
    labels: np.ndarray  # int64 (C,)
    source: str  # "captions" or "class prompts"

    def __len__(self) -> int:
        return len(self.caption_ids)

    def relevance(self, shape_ids: Sequence[str], shape_labels: Sequence[int]) -> np.ndarray:
        """bool (C, S): caption i describes shape j (its own shape, or its class for a prompt)."""
        own = np.asarray(self.shape_ids, dtype=object)[:, None] == np.asarray(shape_ids, dtype=object)[None, :]
        prompt = (np.asarray(self.shape_ids, dtype=object) == "")[:, None]
        same_class = self.labels[:, None] == np.asarray(shape_labels, dtype=np.int64)[None, :]
        return np.where(prompt, same_class, own).astype(bool)

    def candidates(self) -> "CaptionCandidates":
        """Caption indices per shape id (captions) or per label (class prompts), for sampling training pairs."""
        by_shape: dict[str, list[int]] = {}
        by_label: dict[int, list[int]] = {}
        for i, (shape_id, label) in enumerate(zip(self.shape_ids, self.labels.tolist())):
            if shape_id:
                by_shape.setdefault(shape_id, []).append(i)
            else:
                by_label.setdefault(int(label), []).append(i)
        return CaptionCandidates(
            {k: np.asarray(v, dtype=np.int64) for k, v in by_shape.items()},
            {k: np.asarray(v, dtype=np.int64) for k, v in by_label.items()},
        )

    def subset(self, keep: np.ndarray) -> "CaptionTable":
        idx = np.flatnonzero(keep)
        return CaptionTable(
            [self.caption_ids[i] for i in idx],
            [self.texts[i] for i in idx],
            [self.shape_ids[i] for i in idx],
            self.labels[idx],
            self.source,
        )

    def for_shapes(self, shape_ids: Sequence[str], shape_labels: Sequence[int]) -> "CaptionTable":
        """The captions describing at least one of the given shapes."""
        shapes, labels = set(shape_ids), {int(v) for v in shape_labels}
        keep = [s in shapes if s else int(label) in labels for s, label in zip(self.shape_ids, self.labels.tolist())]
        return self.subset(np.asarray(keep, dtype=bool))


@dataclass(frozen=True)
class CaptionCandidates:
    """The captions describing a shape: its own captions plus the prompts of its class."""

    by_shape: dict[str, np.ndarray]
    by_label: dict[int, np.ndarray]

    def of(self, shape_id: str, label: int) -> np.ndarray:
        empty = np.zeros(0, dtype=np.int64)
        return np.concatenate([self.by_shape.get(shape_id, empty), self.by_label.get(int(label), empty)])


def _shape_ref(value: object, mesh_dataset: str) -> str:
    text = str(value).strip().strip("/")
    return text if text.startswith(mesh_dataset + "/") else f"{mesh_dataset}/{text}"


def manifest_captions(
    manifest_path: str | Path, *, field: str, shape_field: str, mesh_dataset: str, shape_labels: Mapping[str, int]
) -> CaptionTable:
    """Captions of a caption dataset's manifest that refer to shapes of ``mesh_dataset`` (``shape_labels``: the
    mesh shapes and their labels). Captions of unknown shapes are dropped and counted in the log; rows without the
    caption or shape field are skipped with a warning, and an error when no row has them (a wrong ``field``
    must not silently give no pairs)."""
    table = read_parquet(manifest_path, columns=["shape_id", "meta"])
    ids, texts, shapes, missing, unknown = [], [], [], [], 0
    for caption_id, meta_json in zip(table["shape_id"].astype(str), table["meta"]):
        try:
            meta = json.loads(meta_json) if isinstance(meta_json, str) and meta_json else {}
        except json.JSONDecodeError as exc:
            raise ValueError(f"{manifest_path}: meta of {caption_id} is not valid JSON: {exc}") from exc
        text, ref = meta.get(field), meta.get(shape_field)
        if not isinstance(text, str) or not text.strip() or ref in (None, ""):
            missing.append(caption_id)
            continue
        shape_id = _shape_ref(ref, mesh_dataset)
        if shape_id not in shape_labels:
            unknown += 1
            continue
        ids.append(caption_id)
        texts.append(text.strip())
        shapes.append(shape_id)
    if missing and len(missing) == len(table):
        raise ValueError(
            f"{manifest_path}: no row has both meta[{field!r}] (text) and meta[{shape_field!r}] "
            f"(shape reference), e.g. {missing[:3]}; fix align_text3d.captions"
        )
    if missing:
        log.warning(
            "%s: %d of %d rows lack meta[%r] or meta[%r] and are not used, e.g. %s",
            manifest_path,
            len(missing),
            len(table),
            field,
            shape_field,
            missing[:3],
        )
    if not ids:
        raise ValueError(
            f"{manifest_path}: none of its {len(table)} captions refers to a shape of {mesh_dataset} "
            f"(meta[{shape_field!r}] -> '{mesh_dataset}/<value>')"
        )
    if unknown:
        log.info(
            "%s: %d of %d captions refer to shapes outside %s and are not used",
            manifest_path,
            unknown,
            len(table),
            mesh_dataset,
        )
    order = np.argsort(np.asarray(ids, dtype=object), kind="stable")
    labels = np.array([shape_labels[shapes[i]] for i in order], dtype=np.int64)
    out = CaptionTable(
        [ids[i] for i in order], [texts[i] for i in order], [shapes[i] for i in order], labels, "captions"
    )
    log.info("%d captions of %d shapes from %s", len(out), len(set(out.shape_ids)), manifest_path)
    return out


def class_prompts(class_names: Sequence[str], labels: Sequence[int], templates: Sequence[str]) -> CaptionTable:
    """Every template for every class in ``labels`` (the classes present), ids ``prompt/<label>/<j>``."""
    ids, texts, out_labels = [], [], []
    for label in sorted({int(v) for v in labels}):
        if label >= len(class_names):
            raise ValueError(f"label {label} has no class name ({len(class_names)} names)")
        for j, text in enumerate(prompt_texts(class_names[label], templates)):
            ids.append(f"prompt/{label:04d}/{j:02d}")
            texts.append(text)
            out_labels.append(label)
    return CaptionTable(ids, texts, [""] * len(ids), np.array(out_labels, dtype=np.int64), "class prompts")
