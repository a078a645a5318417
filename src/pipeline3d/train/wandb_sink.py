"""Optional mirrors of the training log: every record the loop appends to ``train_log.jsonl`` also goes to W&B.

Config (``logging`` section, passed in the params of the training stages)::

    logging:
      wandb: {enabled: false, project: pipeline3d, mode: offline}

``metrics_sinks(params, state_dir)`` returns the sinks to hand to ``train(..., sinks=...)``: ``[]`` when disabled
(wandb is then never imported) or on ranks other than 0 under torchrun/srun, else one ``WandbSink``.
``mode: offline`` writes the run under ``<state_dir>/wandb/`` and never opens a network connection (upload later
with ``wandb sync <dir>``); ``online`` streams to the W&B server; ``disabled`` makes wandb a no-op. The JSONL
file stays the record of truth: W&B is a view of it.

The run id is a hash of the state folder and the params, so a resumed job (same folder, same params) continues the
same W&B run, and a job whose params changed (the loop then starts fresh) gets a new one. After a resume the steps
between the checkpoint and the interruption are logged again; W&B keeps the first values it saw for them.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

from .distributed import detect_launch
from .logging_env import logging_settings

MODES = ("offline", "online", "disabled")


class MetricsSink(Protocol):
    """What the training loop calls: ``log`` for every record it appends (rank 0 only), ``close`` once at the end."""

    def log(self, record: Mapping[str, Any]) -> None: ...

    def close(self) -> None: ...


class WandbSink:
    def __init__(
        self,
        *,
        project: str,
        mode: str,
        run_dir: str | Path,
        run_id: str,
        name: str | None = None,
        config: Mapping[str, Any] | None = None,
        log: logging.Logger | None = None,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"logging.wandb.mode must be one of {MODES} (got {mode!r})")
        try:
            wandb = importlib.import_module("wandb")
        except ImportError as exc:
            raise RuntimeError(
                "logging.wandb.enabled is true but the 'wandb' package is not installed: install it "
                "(pip install wandb) or set logging.wandb.enabled: false"
            ) from exc
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        # console="off": the stage's stdout/stderr already go to the job log; W&B need not wrap them.
        settings = wandb.Settings(console="off", silent=True)
        self._wandb = wandb
        self._run = wandb.init(
            project=project,
            mode=mode,
            dir=str(run_dir),
            id=run_id,
            name=name,
            config=dict(config or {}),
            resume="allow",
            settings=settings,
            reinit="create_new",
        )
        (log or logging.getLogger("pipeline3d.train")).info("wandb %s run %s in %s", mode, run_id, run_dir)

    def log(self, record: Mapping[str, Any]) -> None:
        values = {k: v for k, v in record.items() if k != "step" and isinstance(v, (int, float))}
        self._run.log(values, step=int(record["step"]))

    def close(self) -> None:
        self._run.finish()
        # finish() can return before W&B's service process has written the run's last records; stopping the
        # service flushes them (a training job has no other W&B run to keep alive).
        self._wandb.teardown()


def run_id(params: Mapping[str, Any], state_dir: str | Path) -> str:
    key = json.dumps({"state_dir": str(Path(state_dir).resolve()), "params": params}, sort_keys=True, default=str)
    return hashlib.sha256(key.encode("utf-8")).hexdigest()[:16]


def metrics_sinks(
    params: Mapping[str, Any], state_dir: str | Path, *, name: str | None = None, log: logging.Logger | None = None
) -> list[MetricsSink]:
    """The sinks the job's ``logging`` settings ask for (``[]`` when absent or disabled; wandb is not imported).

    The settings come from ``params["logging"]`` or else from the ``PIPELINE3D_LOGGING`` environment variable (JSON
    of the config's ``logging`` section), which is how the rules pass them: outside the params, so switching W&B
    on or off never reruns a job.
    """
    settings = params.get("logging") or logging_settings()
    cfg = dict((settings or {}).get("wandb") or {})
    if not cfg.get("enabled", False) or detect_launch().rank != 0:  # one W&B run per job: rank 0's
        return []
    return [
        WandbSink(
            project=str(cfg.get("project", "pipeline3d")),
            mode=str(cfg.get("mode", "offline")),
            run_dir=Path(state_dir),
            run_id=run_id(params, state_dir),
            name=name or Path(state_dir).name,
            config=params,
            log=log,
        )
    ]
