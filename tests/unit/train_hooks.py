"""Train-loop hooks shared by the resume tests."""

from __future__ import annotations

import os
import signal


class SignalAt:
    """Sends this process ``signum`` (SIGTERM by default) when the loop calls it (every ``every`` steps) at
    ``step``, or at its first call when ``step`` is None; the loop's handler turns SIGTERM / SIGUSR1 into a
    checkpoint and a stop at the next step boundary."""

    def __init__(self, step: int | None = None, *, every: int = 1, signum: int = signal.SIGTERM):
        self.step, self.every, self.signum = step, every, signum

    def __call__(self, step: int, objective) -> dict[str, float]:
        if self.step is None or step == self.step:
            os.kill(os.getpid(), self.signum)
        return {}

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state) -> None:
        pass
