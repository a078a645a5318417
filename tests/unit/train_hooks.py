"""Train-loop hooks shared by the resume tests."""

from __future__ import annotations

import os
import signal


class SigtermAt:
    """Sends this process SIGTERM when the loop calls it (every ``every`` steps) at ``step``, or at its first call
    when ``step`` is None; the loop's handler turns that into a checkpoint and a stop at the next step boundary."""

    def __init__(self, step: int | None = None, *, every: int = 1):
        self.step, self.every = step, every

    def __call__(self, step: int, objective) -> dict[str, float]:
        if self.step is None or step == self.step:
            os.kill(os.getpid(), signal.SIGTERM)
        return {}

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state) -> None:
        pass
