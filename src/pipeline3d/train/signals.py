"""Graceful stop on SLURM preemption / time limit.

SLURM sends SIGTERM (and, with ``--signal=USR1@<seconds>``, SIGUSR1 ahead of the limit). The handlers only set a
flag; the training loop looks at it at each step boundary, writes a checkpoint and stops, and the stage exits with
``EXIT_INTERRUPTED`` so Snakemake marks the job failed and a rerun resumes from the checkpoint. A second signal
while the first is pending acts immediately (the default action), for a run that never reaches a step boundary.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from typing import Iterator, Mapping

EXIT_INTERRUPTED = 75  # EX_TEMPFAIL: "try again later", which is what a rerun does
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
WARNING_SIGNAL = signal.SIGUSR1  # what the SLURM profile's --signal asks for ahead of the time limit


def ignore_warning_signal_in_slurm_job(environ: Mapping[str, str] | None = None) -> bool:
    """Ignore ``WARNING_SIGNAL`` in this process when it runs inside a SLURM job; True if it did.

    Called by the Snakefile. ``sbatch --signal=USR1@N`` signals every process of the job's steps, and the SLURM
    executor runs Snakemake itself in the step beside the stage: USR1's default action would kill it, and with it
    the job. Ignored dispositions are inherited across fork/exec, so the shell and stages between Snakemake and a
    training stage ignore it too, until ``stop_on_signals`` installs the stage's handler. (``--signal=B:USR1``
    is no alternative: it reaches only the batch shell, which dies of it.)
    """
    env = os.environ if environ is None else environ
    if "SLURM_JOB_ID" not in env or threading.current_thread() is not threading.main_thread():
        return False
    signal.signal(WARNING_SIGNAL, signal.SIG_IGN)
    return True


class StopRequest:
    """Set by a signal handler, read by the loop between steps."""

    def __init__(self) -> None:
        self.signal_name: str | None = None

    @property
    def requested(self) -> bool:
        return self.signal_name is not None

    def request(self, signum: int) -> None:
        if self.signal_name is None:  # keep the first signal for the log line
            self.signal_name = signal.Signals(signum).name


@contextlib.contextmanager
def stop_on_signals(log: logging.Logger, signals: tuple[int, ...] = STOP_SIGNALS) -> Iterator[StopRequest]:
    """Install flag-setting handlers for ``signals`` for the duration of the block, then restore the old ones.

    Handlers can only be installed from the main thread; elsewhere (e.g. a notebook worker thread) the block runs
    without them and says so.
    """
    stop = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        log.warning("not in the main thread: SIGTERM/SIGUSR1 will not trigger a checkpoint")
        yield stop
        return

    def handler(signum, frame):  # noqa: ARG001 - signature fixed by the signal module
        if stop.requested:
            # A second signal means "now": e.g. the run hangs in a collective and never reaches a step boundary.
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        stop.request(signum)

    previous = {sig: signal.signal(sig, handler) for sig in signals}
    try:
        yield stop
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
