"""What every metrics JSON records besides its results: the protocol, the code version and the wall time."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from ..log import git_describe


def provenance(params: Mapping[str, Any], started: float) -> dict[str, Any]:
    """``protocol`` (the stage's params, every knob), ``git`` (the code) and ``seconds`` since ``started``
    (``time.time()``; the report drops it, so reruns compare byte for byte)."""
    return {"protocol": params, "git": git_describe(), "seconds": round(time.time() - started, 1)}
