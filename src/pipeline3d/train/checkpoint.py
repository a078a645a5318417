"""Training checkpoints ("ckpt"): one ``last.ckpt`` per run in an undeclared state folder.

Snakemake deletes a job's declared outputs before it starts, so the state folder is not one of them; a rerun after
a crash or preemption finds ``last.ckpt`` and continues. Writes go to a temporary file that is renamed into place,
so a kill during the write leaves the previous checkpoint intact. Only tensors and plain containers are stored
(``torch.load(weights_only=True)`` loads them; nothing is unpickled as code).
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any, Mapping

import torch

from ..io.atomic import atomic_path, stale_temps

CKPT_NAME = "last.ckpt"
FORMAT_VERSION = 1


def ckpt_path(state_dir: Path) -> Path:
    return Path(state_dir) / CKPT_NAME


def save(path: Path, state: dict[str, Any]) -> None:
    """Write ``state`` atomically (temp file + fsync + rename)."""
    with atomic_path(path, suffix=".ckpt") as tmp:
        torch.save(state, tmp)


def load(path: Path) -> dict[str, Any]:
    """Read a checkpoint written by ``save`` (tensors and plain values only)."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or state.get("format_version") != FORMAT_VERSION:
        found = state.get("format_version") if isinstance(state, dict) else type(state).__name__
        raise ValueError(f"{path}: not a pipeline3d training checkpoint of format {FORMAT_VERSION} (found {found})")
    return state


def remove_stale_temps(state_dir: Path) -> list[Path]:
    """Delete temp files left by a writer that was SIGKILLed mid-write (never a finished checkpoint)."""
    removed = stale_temps(ckpt_path(state_dir))
    for tmp in removed:
        tmp.unlink(missing_ok=True)
    return removed


def move_aside(state_dir: Path, tag: str, extra: list[Path] = ()) -> Path:
    """Move ``last.ckpt`` (and ``extra`` files, e.g. the metrics log) into a sibling ``<state_dir>.stale-<tag>[-n]``.

    Used when the configuration changed: the old run is kept for inspection, never silently deleted.
    """
    state_dir = Path(state_dir)
    target = state_dir.parent / f"{state_dir.name}.stale-{tag}"
    n = 1
    while target.exists():
        n += 1
        target = state_dir.parent / f"{state_dir.name}.stale-{tag}-{n}"
    target.mkdir(parents=True)
    for path in [ckpt_path(state_dir), *extra]:
        if Path(path).exists():
            shutil.move(str(path), str(target / Path(path).name))
    return target


def find_resumable(
    state_dir: Path, fingerprint: dict[str, str], log: logging.Logger, extra_stale: list[Path] = ()
) -> dict[str, Any] | None:
    """The checkpoint in ``state_dir`` if it belongs to this configuration, else None.

    ``fingerprint`` maps names (``config_hash``, ``train_hash``) to the values a resumable checkpoint must carry.
    A checkpoint of another configuration, or one that cannot be read, is moved aside with a warning and training
    starts fresh.
    """
    path = ckpt_path(state_dir)
    if not path.exists():
        log.info("no checkpoint at %s: starting fresh", path)
        return None
    try:
        state = load(path)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is handled the same way
        where = move_aside(state_dir, "unreadable", extra_stale)
        log.warning("checkpoint %s cannot be read (%s): starting fresh; it was moved to %s", path, exc, where)
        return None
    changed = {key: (state.get(key), value) for key, value in fingerprint.items() if state.get(key) != value}
    if changed:
        what = ", ".join(f"{key} {old} -> {new}" for key, (old, new) in changed.items())
        tag = str(state.get("config_hash") or "unknown")
        where = move_aside(state_dir, tag, extra_stale)
        log.warning("config changed (%s): starting fresh; the old state was moved to %s", what, where)
        return None
    return state


def input_identity(files: Mapping[str, Any]) -> list[list[Any]]:
    """(name, path, size, mtime_ns) of every input file: what a resume checkpoint is only valid for.

    Snakemake reruns a training job when an input was rewritten (a rebuilt cache, a new pretrained encoder); the
    job must then start fresh, not "resume" a finished run trained on the old inputs. A file's size and mtime
    change whenever it is rewritten and never while a preempted job waits for its rerun; hashing the bytes of a
    large cache instead would cost minutes per job.
    """
    identity = []
    for name in sorted(files):
        paths = files[name] if isinstance(files[name], (list, tuple)) else [files[name]]
        for path in paths:
            stat = Path(path).stat()
            identity.append([name, str(path), stat.st_size, stat.st_mtime_ns])
    return identity


def run_fingerprint(params: Mapping[str, Any], files: Mapping[str, Any]) -> str:
    """The resume fingerprint of a training job: its params and the identity of its input files."""
    from ..config import canonical_json, cfg_hash

    return cfg_hash(canonical_json({"params": dict(params), "inputs": input_identity(files)}))
