"""The config's ``logging`` section, handed to training jobs through the environment.

Logging (e.g. a W&B mirror) must not be part of a job's params: switching it on or off would rerun every training
job. The workflow exports the section once at parse time (``export_logging``); jobs inherit the variable, and
``pipeline3d.train.wandb_sink.metrics_sinks`` reads it (``logging_settings``). Import-light: common.smk calls it.
"""

from __future__ import annotations

import json
import os
from typing import Any, Mapping

LOGGING_ENV = "PIPELINE3D_LOGGING"


def export_logging(section: Mapping[str, Any]) -> None:
    """Put the ``logging`` section into this process's environment (inherited by every job it starts)."""
    os.environ[LOGGING_ENV] = json.dumps(dict(section), sort_keys=True)


def logging_settings() -> dict[str, Any]:
    """The exported ``logging`` section ({} when none was exported)."""
    return json.loads(os.environ.get(LOGGING_ENV) or "{}")
