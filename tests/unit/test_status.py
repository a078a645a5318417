"""`pipeline3d status`: job states from a real (tiny) Snakemake run (done, failed, pending) and from the stage logs'
lifecycle lines, live and killed processes and squeue (running, queued, interrupted); nothing under .snakemake/."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from pipeline3d.cli import main
from pipeline3d.log import FORMAT, log_stage_end, log_stage_start, slurm_job_id
from pipeline3d.status import (
    Job,
    Status,
    StatusError,
    _is_snakemake_run,
    classify,
    collect,
    log_failure,
    parse_job_blocks,
    read_job_log,
    render_table,
    slurm_comment,
)

# make_a: 3 jobs with two outputs each; make_b fails for s=y (traceback + ERROR line in its log, exit 1);
# make_c needs every make_b output, so it stays pending.
SNAKEFILE = """
rule all:
    input: expand("results/b/{s}.txt", s=["x", "y", "z"]), "results/c/all.txt"

rule make_a:
    output: "results/a/{s}.txt", "results/a/{s}.aux"
    log: "results/logs/make_a/{s}.log"
    shell: "echo {wildcards.s} > {output[0]}; touch {output[1]}; echo ok > {log}"

rule make_b:
    input: "results/a/{s}.txt"
    output: "results/b/{s}.txt"
    log: "results/logs/make_b/{s}.log"
    shell:
        "if [ {wildcards.s} = y ]; then"
        " printf 'Traceback (most recent call last):\\\\nValueError: bad mesh\\\\n"
        "2026-01-01 | ERROR | pipeline3d.make_b | bad mesh y\\\\n' > {log}; exit 1; fi;"
        " cp {input} {output}; echo ok > {log}"

rule make_c:
    input: expand("results/b/{s}.txt", s=["x", "y", "z"])
    output: "results/c/all.txt"
    log: "results/logs/make_c/all.log"
    shell: "cat {input} > {output}"
"""


@pytest.fixture(scope="module")
def workflow(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("wf")
    (root / "Snakefile").write_text(SNAKEFILE)
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "--cores", "1", "--keep-going", "all"],
        cwd=root,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
    )
    assert proc.returncode != 0, "make_b[y] should have failed"
    assert (root / "results/b/x.txt").exists() and not (root / "results/b/y.txt").exists()
    return root


NO_SQUEUE = ("no-squeue-here",)  # where squeue is installed without a controller, it hangs for ~30 s


@pytest.fixture(scope="module")
def status(workflow) -> Status:
    return collect(workflow, "all", squeue=NO_SQUEUE)


def counts(jobs: list[Job]) -> dict[str, dict[str, int]]:
    return Status("w", "all", jobs, False).counts


def test_counts_from_a_real_run(status):
    assert status.counts == {
        "make_a": {"done": 3, "running": 0, "queued": 0, "failed": 0, "pending": 0},
        "make_b": {"done": 2, "running": 0, "queued": 0, "failed": 1, "pending": 0},
        "make_c": {"done": 0, "running": 0, "queued": 0, "failed": 0, "pending": 1},
    }
    failed = [j for j in status.jobs if j.state == "failed"]
    assert [(j.rule, j.wildcards, j.logs) for j in failed] == [("make_b", "s=y", ("results/logs/make_b/y.log",))]
    assert "make_b" in failed[0].detail and "bad mesh y" in failed[0].detail  # Snakemake's error + the log line
    assert not status.run_active
    make_a = sorted(j.outputs for j in status.jobs if j.rule == "make_a")
    assert make_a[0] == ("results/a/x.txt", "results/a/x.aux")  # outputs grouped per job, not per file


def test_status_leaves_no_snakemake_logs_behind(workflow, status):
    logs = list((workflow / ".snakemake" / "log").glob("*.snakemake.log"))
    assert len(logs) == 1  # only the real run's; the dry-runs of `collect` write none


# --------------------------------------------------------------------------------------------- job lifecycle
SRC = str(Path(__file__).resolve().parents[2] / "src")
MISSING = {"out/x.txt": ("missing", "update pending")}


def stage_job() -> Job:
    return Job("embed_x", ("out/x.txt",), ("logs/x.log",), "dataset=demo/img, model=m1")


def stage_program(log: Path, body: str, *, as_stage: bool = True, env: dict | None = None) -> subprocess.Popen:
    """A Python process that logs like a stage into ``log`` (the rule's ``> {log} 2>&1``), then runs ``body``.
    ``as_stage``: it runs as a pipeline3d program (``python -m pipeline3d.stages.x``), which arms the exit hook."""
    log.parent.mkdir(parents=True, exist_ok=True)
    code = textwrap.dedent(f"""
        import sys, time, types
        if {as_stage}:
            sys.modules["__main__"].__spec__ = types.SimpleNamespace(name="pipeline3d.stages.embed_x")
        import logging
        from pipeline3d.log import log_stage_end, log_stage_start, setup_logging
        setup_logging()
        log = logging.getLogger("pipeline3d.embed_x")
        log_stage_start(log, "embed_x", '{{"k": 1}}', out="out/x.txt")
    """) + textwrap.dedent(body)
    with open(log, "w") as out:
        outside_slurm = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}  # even under srun
        return subprocess.Popen(
            [sys.executable, "-c", code],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**outside_slurm, "PYTHONPATH": SRC, **(env or {})},
        )


def run_stage_program(log: Path, body: str, **kwargs) -> int:
    return stage_program(log, body, **kwargs).wait(timeout=60)


def state_of(tmp_path: Path, squeue=NO_SQUEUE, **kwargs) -> Job:
    jobs, _ = classify([stage_job()], MISSING, tmp_path, squeue=squeue, **kwargs)
    return jobs[0]


def test_the_lifecycle_lines_round_trip(tmp_path, monkeypatch):
    log_path = tmp_path / "x.log"
    handler = logging.FileHandler(log_path)
    handler.setFormatter(logging.Formatter(FORMAT))
    logger = logging.getLogger("pipeline3d.test_lifecycle")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    monkeypatch.delenv("SLURM_ARRAY_JOB_ID", raising=False)
    try:
        log_stage_start(logger, "embed_x", '{"k": 1}', out="o")
        record = read_job_log(log_path)
        assert record.started and record.exit is None and record.pid == os.getpid() and record.slurm_job == "77"
        logger.info("vectors 10/10")
        assert log_stage_end(logger, "embed_x", None) == 0
    finally:
        logger.removeHandler(handler)
        handler.close()
    record = read_job_log(log_path)
    assert record.exit == "0" and record.tail[-2].endswith("vectors 10/10")
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "70")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "3")
    assert slurm_job_id() == "70_3"  # an array task, as squeue lists it
    assert read_job_log(tmp_path / "absent.log") is None


def test_a_live_stage_is_running_and_a_killed_one_failed(tmp_path):
    proc = stage_program(tmp_path / "logs/x.log", "time.sleep(120)\n")
    try:
        deadline = time.monotonic() + 30
        while read_job_log(tmp_path / "logs/x.log").pid is None and time.monotonic() < deadline:
            time.sleep(0.05)
        job = state_of(tmp_path)
        assert job.state == "running" and f"pid {proc.pid}, alive" in job.detail
        # run from another host, the pid cannot be checked: counted as running, said so
        job = state_of(tmp_path, host="elsewhere")
        assert job.state == "running" and "not checkable" in job.detail
    finally:
        proc.send_signal(signal.SIGKILL)  # what the OOM killer does: no end line, no exit hook
        proc.wait(timeout=30)
    job = state_of(tmp_path)
    assert job.state == "failed" and "interrupted" in job.detail and job.external_jobid is None
    assert "end |" not in (tmp_path / "logs/x.log").read_text()


def test_the_end_line_decides_between_failed_and_pending(tmp_path):
    log = tmp_path / "logs/x.log"
    # exit 0 but the outputs are missing (deleted, or outdated): pending, with Snakemake's reason
    assert run_stage_program(log, "log.info('wrote'); sys.exit(log_stage_end(log, 'embed_x', 0))\n") == 0
    job = state_of(tmp_path)
    assert (job.state, job.detail) == ("pending", "missing")
    assert log.read_text().count(" end | exit ") == 1  # the exit hook adds nothing after log_stage_end
    # a non-zero code is a failure even without an error line (exit 75: checkpointed, the retry resumes)
    body = "log.warning('interrupted at step 5; checkpoint saved'); sys.exit(log_stage_end(log, 'embed_x', 75))\n"
    assert run_stage_program(log, body) == 75
    job = state_of(tmp_path)
    assert job.state == "failed" and job.detail.startswith("exit 75: ") and "checkpoint saved" in job.detail
    # done wins over any log
    jobs, _ = classify([stage_job()], {"out/x.txt": ("ok", "no update")}, tmp_path, NO_SQUEUE)
    assert jobs[0].state == "done"


def test_the_exit_hook_ends_a_stage_that_did_not_call_log_stage_end(tmp_path):
    log = tmp_path / "logs/x.log"
    assert run_stage_program(log, "log.error('no such shard'); sys.exit(2)\n") == 2
    assert log.read_text().rstrip().endswith("stage embed_x end | exit ?")
    job = state_of(tmp_path)  # the code is unknown: judged by the tail, as before
    assert job.state == "failed" and job.detail.endswith("no such shard")
    assert run_stage_program(log, "log.info('fine'); sys.exit(0)\n") == 0
    assert state_of(tmp_path).state == "pending"
    assert run_stage_program(log, "raise ValueError('bad mesh')\n") == 1
    assert log.read_text().rstrip().endswith("stage embed_x end | exit 1")
    job = state_of(tmp_path)
    assert job.state == "failed" and job.detail == "exit 1: ValueError: bad mesh"
    # a stage main called in-process (tests, notebooks) arms no hook: no end line appears in someone else's stderr
    assert run_stage_program(log, "sys.exit(0)\n", as_stage=False) == 0
    assert " end | " not in log.read_text()


def fake_squeue(folder: Path, *lines: str) -> Path:
    """An executable that records its arguments and prints ``lines`` as squeue would (tab-separated)."""
    (folder / "squeue-out").write_text("".join(line + "\n" for line in lines))
    script = folder / "squeue"
    script.write_text(f'#!/bin/sh\necho "$@" > {folder / "squeue-args"}\ncat {folder / "squeue-out"}\n')
    script.chmod(0o755)
    return script


def test_slurm_jobs_are_queued_running_or_failed_from_squeue(tmp_path):
    comment = slurm_comment(stage_job())
    assert comment == "rule_embed_x_wildcards_demo_img_m1"  # the plugin's comment: values joined, / -> _
    wd = str(tmp_path)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()

    def with_squeue(*lines: str) -> Job:
        return state_of(tmp_path, squeue=(str(fake_squeue(bin_dir, *lines)),))

    # submitted, not started: no log yet; the newest submission of this rule+wildcards in this directory counts
    job = with_squeue(
        f"40\tFAILED\t{wd}\t{comment}", f"41\tPENDING\t{wd}\t{comment}", f"99\tRUNNING\t/elsewhere\t{comment}"
    )
    assert (job.state, job.detail, job.external_jobid) == ("queued", "SLURM job 41 is PENDING", "41")
    args = (bin_dir / "squeue-args").read_text()
    assert "--states=all" in args and "--user=" in args and "%Z" in args and "%k" in args
    assert with_squeue(f"41\tRUNNING\t{wd}\t{comment}").state == "running"
    assert with_squeue(f"41\tREQUEUED\t{wd}\t{comment}").state == "queued"
    # died before its stage wrote anything (e.g. out of memory at start-up)
    job = with_squeue(f"41\tOUT_OF_MEMORY\t{wd}\t{comment}")
    assert (job.state, job.detail) == ("failed", "SLURM job 41 OUT_OF_MEMORY")
    assert with_squeue(f"41\tCOMPLETED\t{wd}\t{comment}").state == "pending"

    # started inside SLURM job 4242 and killed there (no end line): the header's job id is looked up
    proc = stage_program(tmp_path / "logs/x.log", "import os; os._exit(0)\n", env={"SLURM_JOB_ID": "4242"})
    proc.wait(timeout=60)
    assert read_job_log(tmp_path / "logs/x.log").slurm_job == "4242"
    job = with_squeue(f"4242\tRUNNING\t{wd}\tsome_other_comment")
    assert (job.state, job.external_jobid) == ("running", "4242")
    job = with_squeue(f"4242\tTIMEOUT\t{wd}\t{comment}")
    assert job.state == "failed" and "SLURM job 4242 ended TIMEOUT" in job.detail
    job = with_squeue()  # SLURM no longer lists it
    assert job.state == "failed" and "SLURM job 4242 is gone" in job.detail
    job = state_of(tmp_path)  # no squeue here (not the submit host): it cannot be told, counted as running
    assert job.state == "running" and "squeue does not answer here" in job.detail and job.external_jobid == "4242"

    # the stage returned 0 in SLURM job 4242, but the job failed after it (Snakemake found no outputs)
    run_stage_program(
        tmp_path / "logs/x.log", "sys.exit(log_stage_end(log, 'embed_x', 0))\n", env={"SLURM_JOB_ID": "4242"}
    )
    job = with_squeue(f"4242\tFAILED\t{wd}\t{comment}")
    assert (job.state, job.detail) == ("failed", "SLURM job 4242 FAILED")


def test_a_squeue_without_controller_does_not_stall_status(tmp_path, monkeypatch):
    hang = tmp_path / "squeue"
    hang.write_text("#!/bin/sh\nexec sleep 60\n")  # what squeue does for ~30 s when no controller answers
    hang.chmod(0o755)
    monkeypatch.setattr("pipeline3d.status.SQUEUE_GRACE", 0.5)
    started = time.monotonic()
    job = state_of(tmp_path, squeue=(str(hang),))  # no log names a SLURM job: only the grace is waited for
    assert job.state == "pending" and time.monotonic() - started < 10


def test_a_run_is_active_only_for_a_real_snakemake_call():
    assert _is_snakemake_run(["/v/bin/python", "/v/bin/snakemake", "--profile", "slurm", "all"])
    assert _is_snakemake_run(["python3", "-m", "snakemake", "--executor", "slurm-jobstep"])
    assert not _is_snakemake_run(["python3", "-m", "snakemake", "--dry-run", "--forceall", "all"])
    assert not _is_snakemake_run(["python3", "-m", "snakemake", "--summary", "-n", "all"])
    assert not _is_snakemake_run(["vim", "snakemake.txt"])


def test_nothing_under_dot_snakemake_is_read(workflow, status):
    opened: list[str] = []
    hook_on = [True]

    def hook(event: str, args: tuple) -> None:
        if hook_on[0] and event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
            opened.append(os.fsdecode(args[0]))

    sys.addaudithook(hook)  # stays installed (audit hooks cannot be removed); off after this test
    try:
        summary = {o: ("missing", "update pending") for j in status.jobs for o in j.outputs}
        classify([Job(j.rule, j.outputs, j.logs, j.wildcards) for j in status.jobs], summary, workflow, NO_SQUEUE)
    finally:
        hook_on[0] = False
    assert any("results/logs" in path for path in opened)  # the job logs are read ...
    assert not [path for path in opened if ".snakemake" in path]  # ... Snakemake's own records are not


def test_done_wins_over_an_old_failure_log(workflow, status):
    summary = {o: ("ok", "no update") for j in status.jobs for o in j.outputs}
    jobs, _ = classify([Job(j.rule, j.outputs, j.logs, j.wildcards) for j in status.jobs], summary, workflow, NO_SQUEUE)
    assert all(j.state == "done" for j in jobs)


def test_log_failure_reads_the_tail(tmp_path):
    log = tmp_path / "x.log"
    log.write_text("2026 | INFO | s | start\nTraceback (most recent call last):\n  File x\nKeyError: 'k'\n")
    assert log_failure(log) == "KeyError: 'k'"
    log.write_text("2026 | ERROR | s | retrying\n" + "2026 | INFO | s | step\n" * 60)  # recovered long ago
    assert log_failure(log) is None
    assert log_failure(tmp_path / "absent.log") is None


def test_parse_job_blocks_with_shell_commands_and_localrules():
    text = (
        "rule a:\n    output: o/1.txt, o/1.aux\n    log: l/1.log\n    jobid: 1\n    wildcards: s=1\n"
        "echo hi > o/1.txt\n\nlocalrule all:\n    input: o/1.txt\n    jobid: 0\n"
        "checkpoint c:\n    output: o/c\n    jobid: 2\n"
    )
    jobs = parse_job_blocks(text)
    assert [(j.rule, j.outputs, j.logs, j.wildcards) for j in jobs] == [
        ("a", ("o/1.txt", "o/1.aux"), ("l/1.log",), "s=1"),
        ("c", ("o/c",), (), ""),
    ]


def test_table_is_aligned_and_coloured_only_when_asked(status):
    plain = render_table(status, colour=False)
    assert "\033[" not in plain
    table = plain.split("\n\n")[0].splitlines()[:-1]  # header, rules, totals (not the trailing note)
    assert table[0].split() == ["rule", "done", "running", "queued", "failed", "pending", "total"]
    assert {len(line) for line in table} == {len(table[0])}  # every row as wide as the header
    assert table[-1].split() == ["total", "5", "0", "0", "1", "1", "7"]
    assert "make_b [s=y] log: results/logs/make_b/y.log" in plain
    coloured = render_table(status, colour=True)
    assert re.search(r"\033\[31m\s*1\033\[0m", coloured)  # the failed count in red
    assert re.sub(r"\033\[\d+m", "", coloured) == plain


def test_cli_json_and_exit_code(workflow, capsys, monkeypatch):
    monkeypatch.setattr("pipeline3d.status.SQUEUE", NO_SQUEUE)
    assert main(["status", "--directory", str(workflow), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["totals"] == {"done": 5, "running": 0, "queued": 0, "failed": 1, "pending": 1, "total": 7}
    assert out["rules"]["make_b"]["failed"] == 1
    assert {j["state"] for j in out["jobs"] if j["rule"] == "make_a"} == {"done"}


def test_a_failing_snakemake_call_is_reported(tmp_path):
    # stands in for a broken Snakefile / unknown target without paying for another Snakemake start-up
    fake = [sys.executable, "-c", "import sys; print('no rule named nope', file=sys.stderr); sys.exit(1)"]
    with pytest.raises(StatusError, match="no rule named nope"):
        collect(tmp_path, "nope", snakemake=fake)
