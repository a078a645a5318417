"""SIGTERM/SIGUSR1 handling (the loop's use of it, exit 75 and resume, is in test_train_resume/test_train_loop)."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading

import pytest

from pipeline3d.train.signals import EXIT_INTERRUPTED, ignore_warning_signal_in_slurm_job, stop_on_signals

LOG = logging.getLogger("test")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR1])
def test_signal_sets_the_flag_and_handlers_are_restored(sig):
    before = signal.getsignal(sig)
    with stop_on_signals(LOG) as stop:
        assert not stop.requested
        os.kill(os.getpid(), sig)
        assert stop.requested and stop.signal_name == signal.Signals(sig).name
    assert signal.getsignal(sig) is before


def test_first_signal_name_is_kept():
    with stop_on_signals(LOG, signals=(signal.SIGUSR1, signal.SIGUSR2)) as stop:
        os.kill(os.getpid(), signal.SIGUSR2)
        assert stop.signal_name == "SIGUSR2"


def test_second_signal_acts_immediately():
    """A run stuck before the next step boundary can still be stopped: the second SIGTERM takes the default action."""
    pid = os.fork()
    if pid == 0:  # child: never return into pytest
        try:
            with stop_on_signals(LOG):
                os.kill(os.getpid(), signal.SIGTERM)
                os.kill(os.getpid(), signal.SIGTERM)
                signal.pause()  # not reached: the second signal ends the process
        finally:
            os._exit(3)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGTERM


def test_outside_the_main_thread_runs_without_handlers(caplog):
    seen = {}

    def worker():
        with stop_on_signals(LOG) as stop:
            seen["requested"] = stop.requested

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    assert seen == {"requested": False}
    assert "not in the main thread" in caplog.text


def test_exit_code_means_try_again():
    assert EXIT_INTERRUPTED == 75  # EX_TEMPFAIL


def test_snakemake_in_a_slurm_job_ignores_the_warning_signal_and_a_stage_under_it_still_checkpoints():
    """What the Snakefile does in a SLURM job step: USR1 ignored there (and in the shell it starts), while a stage
    started from it still gets the signal once ``stop_on_signals`` is active."""
    before = signal.getsignal(signal.SIGUSR1)
    try:
        assert not ignore_warning_signal_in_slurm_job({})  # outside SLURM: nothing changes
        assert signal.getsignal(signal.SIGUSR1) is before
        assert ignore_warning_signal_in_slurm_job({"SLURM_JOB_ID": "7"})
        assert signal.getsignal(signal.SIGUSR1) == signal.SIG_IGN
        os.kill(os.getpid(), signal.SIGUSR1)  # survived
        stage = (
            "import logging, os, signal\n"
            "from pipeline3d.train.signals import stop_on_signals\n"
            "os.kill(os.getpid(), signal.SIGUSR1)  # before the handler: inherited ignore, no death\n"
            "with stop_on_signals(logging.getLogger()) as stop:\n"
            "    os.kill(os.getpid(), signal.SIGUSR1)\n"
            "    print(stop.signal_name)\n"
        )
        # through a shell, as Snakemake runs a rule's command
        out = subprocess.run(
            ["bash", "-c", f'"{sys.executable}" -c "$0"', stage], capture_output=True, text=True, timeout=120
        )
        assert out.returncode == 0 and out.stdout.strip() == "SIGUSR1", out.stderr
    finally:
        signal.signal(signal.SIGUSR1, before)
