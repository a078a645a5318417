"""`pipeline3d status` during a real SLURM run (ci/start-slurm.sh): queued, running, done, failed and a job killed by
scancel, from squeue's public output and the stage logs only (the SLURM executor plugin's --comment and -D).

Skipped when no SLURM controller answers, unless PIPELINE3D_REQUIRE_SLURM=1.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline3d.status import Status, collect

pytestmark = [pytest.mark.e2e, pytest.mark.slurm]

# work[a] succeeds, work[b] fails (exit 1), work[d] is scancel'ed while it runs, later[c] may not start for an hour.
# The CI node has 2 CPUs: one of the three work jobs waits for the others (queued, reason Resources).
SNAKEFILE = """
rule all:
    input: expand("out/{s}.txt", s=["a", "b", "d"]), "out/c.txt"

rule work:
    output: "out/{s}.txt"
    log: "logs/work/{s}.log"
    resources: mem_mb=100, runtime=5
    shell: "{PY} stage.py {wildcards.s} {output} > {log} 2>&1"

rule later:
    output: "out/c.txt"
    log: "logs/later/c.log"
    resources: mem_mb=100, runtime=5, slurm_extra="'--begin=now+1hour'"
    shell: "{PY} stage.py c {output} > {log} 2>&1"
""".replace("{PY}", sys.executable)

# A stage as pipeline3d writes them: header at the start, end line with the exit code; it waits for a "go" file.
STAGE = """
import logging, pathlib, sys, time
from pipeline3d.log import log_stage_end, log_stage_start, setup_logging
setup_logging()
log = logging.getLogger("pipeline3d.work")
s, out = sys.argv[1], sys.argv[2]
log_stage_start(log, "work", "{}", out=out)
while not pathlib.Path("go_d" if s == "d" else "go").exists():
    time.sleep(0.5)
if s == "b":
    log.error("bad input %s", s)
    sys.exit(log_stage_end(log, "work", 1))
pathlib.Path(out).write_text(s)
sys.exit(log_stage_end(log, "work", 0))
"""


def slurm_answers() -> bool:
    if not shutil.which("sinfo"):
        return False
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=20, check=False)
    except subprocess.TimeoutExpired:
        return False
    return out.returncode == 0 and any(state in out.stdout for state in ("idle", "mix", "alloc"))


def states(status: Status) -> dict[str, tuple[str, str, str | None]]:
    return {f"{j.rule}[{j.wildcards}]": (j.state, j.detail, j.external_jobid) for j in status.jobs}


def wait_for(workdir: Path, done, timeout: float = 180) -> Status:
    deadline = time.monotonic() + timeout
    while True:
        status = collect(workdir, "all")
        if done(states(status)) or time.monotonic() > deadline:
            return status
        time.sleep(2)


def test_status_follows_a_slurm_run(tmp_path: Path) -> None:
    if not slurm_answers():
        message = "no SLURM cluster answers (start one with: sudo bash ci/start-slurm.sh)"
        if os.environ.get("PIPELINE3D_REQUIRE_SLURM") == "1":
            pytest.fail(message)
        pytest.skip(message)
    (tmp_path / "Snakefile").write_text(SNAKEFILE)
    (tmp_path / "stage.py").write_text(STAGE)
    cmd = [
        sys.executable,
        "-m",
        "snakemake",
        "--executor",
        "slurm",
        "--jobs",
        "10",
        "--keep-going",
        "--slurm-init-seconds-before-status-checks",
        "2",
        "--slurm-status-command",
        "squeue",
        "--latency-wait",
        "5",
        "all",
    ]
    run = subprocess.Popen(
        cmd, cwd=tmp_path, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    job_ids: set[str] = set()
    try:

        def work(s: dict) -> list[str]:
            return sorted(s[f"work[s={x}]"][0] for x in "abd")

        status = wait_for(
            tmp_path, lambda s: work(s) == ["queued", "running", "running"] and s["later[]"][0] == "queued"
        )
        now = states(status)
        job_ids |= {v[2] for v in now.values() if v[2]}
        assert work(now) == ["queued", "running", "running"], now
        assert now["later[]"][0] == "queued" and now["later[]"][1].endswith("is PENDING"), now
        assert status.run_active

        (tmp_path / "go").touch()  # a and b end; d starts and waits for go_d
        status = wait_for(
            tmp_path,
            lambda s: s["work[s=a]"][0] == "done" and s["work[s=b]"][0] == "failed" and s["work[s=d]"][0] == "running",
        )
        now = states(status)
        job_ids |= {v[2] for v in now.values() if v[2]}
        assert now["work[s=a]"][0] == "done", now
        assert now["work[s=b]"][0] == "failed" and now["work[s=b]"][1].startswith("exit 1: "), now
        assert "bad input b" in now["work[s=b]"][1]
        assert now["work[s=d]"][0] == "running", now

        # a job killed while it runs (time limit, memory, scancel): no end line, its SLURM job ended or gone
        subprocess.run(["scancel", now["work[s=d]"][2]], check=True, timeout=30)
        status = wait_for(tmp_path, lambda s: s["work[s=d]"][0] == "failed")
        now = states(status)
        assert now["work[s=d]"][0] == "failed" and "interrupted" in now["work[s=d]"][1], now
        assert now["later[]"][0] == "queued", now
        assert status.counts["work"] == {"done": 1, "running": 0, "queued": 0, "failed": 2, "pending": 0}
    finally:
        run.send_signal(signal.SIGINT)  # Snakemake cancels its SLURM jobs
        try:
            run.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            run.kill()
            run.communicate()
        if job_ids:
            subprocess.run(["scancel", *sorted(job_ids)], capture_output=True, timeout=30, check=False)
