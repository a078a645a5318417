"""`pipeline3d status`: job states from a real (tiny) Snakemake run: done, failed, pending, running, interrupted."""

from __future__ import annotations

import base64
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline3d.cli import main
from pipeline3d.status import (Job, Status, StatusError, classify, collect, incomplete_markers, log_failure,
                               parse_job_blocks, render_table)

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
    proc = subprocess.run([sys.executable, "-m", "snakemake", "--cores", "1", "--keep-going", "all"], cwd=root,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True)
    assert proc.returncode != 0, "make_b[y] should have failed"
    assert (root / "results/b/x.txt").exists() and not (root / "results/b/y.txt").exists()
    return root


@pytest.fixture(scope="module")
def status(workflow) -> Status:
    return collect(workflow, "all")


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


def _mark_incomplete(workflow: Path, output: str, jobid: str | None) -> Path:
    # Snakemake's file persistence: .snakemake/incomplete/<urlsafe-b64 of the output path>
    marker = workflow / ".snakemake" / "incomplete" / base64.urlsafe_b64encode(output.encode()).decode()
    marker.write_text(json.dumps({"external_jobid": jobid}))
    return marker


def fake_squeue(folder: Path, line: str) -> Path:
    """An executable that records its arguments and prints ``line`` as squeue would."""
    script = folder / "squeue"
    script.write_text(f"#!/bin/sh\necho \"$@\" > {folder / 'squeue-args'}\necho '{line}'\n")
    script.chmod(0o755)
    return script


def test_running_needs_marker_and_live_lock_else_interrupted(workflow, status, tmp_path):
    marker = _mark_incomplete(workflow, "results/c/all.txt", "4242")
    lock_dir = workflow / ".snakemake" / "locks"
    lock_dir.mkdir(exist_ok=True)
    lock = lock_dir / "0.output.lock"
    try:
        assert incomplete_markers(workflow / ".snakemake") == {"results/c/all.txt": "4242"}
        summary = {o: ("missing", "update pending") for j in status.jobs if j.state != "done" for o in j.outputs}
        summary |= {o: ("ok", "no update") for j in status.jobs if j.state == "done" for o in j.outputs}

        def fresh() -> list[Job]:
            return [Job(j.rule, j.outputs, j.logs, j.wildcards) for j in status.jobs]

        lock.write_text("results/c/all.txt\nresults/b/y.txt\n")
        jobs, active = classify(fresh(), summary, workflow, squeue=(str(tmp_path / "no-squeue-here"),))
        make_c = next(j for j in jobs if j.rule == "make_c")
        assert active and make_c.state == "running" and make_c.external_jobid == "4242"
        # where squeue runs, a submitted job still waiting in the queue is told apart from a started one
        for slurm_state, expected in (("PENDING", "queued"), ("RUNNING", "running"), ("REQUEUED", "queued")):
            fake = fake_squeue(tmp_path, f"4242|{slurm_state}")
            jobs, _ = classify(fresh(), summary, workflow, squeue=(str(fake),))
            make_c = next(j for j in jobs if j.rule == "make_c")
            assert make_c.state == expected, slurm_state
            assert "--jobs=4242" in (tmp_path / "squeue-args").read_text()
        assert counts(jobs)["make_b"]["failed"] == 1  # its marker-less failure is unaffected by the lock

        lock.unlink()  # the run is gone but the marker stayed: killed mid-job
        jobs, active = classify(fresh(), summary, workflow)
        make_c = next(j for j in jobs if j.rule == "make_c")
        assert not active and make_c.state == "failed" and "interrupted" in make_c.detail
    finally:
        marker.unlink()
        lock.unlink(missing_ok=True)


def test_done_wins_over_an_old_failure_log(workflow, status):
    summary = {o: ("ok", "no update") for j in status.jobs for o in j.outputs}
    jobs, _ = classify([Job(j.rule, j.outputs, j.logs, j.wildcards) for j in status.jobs], summary, workflow)
    assert all(j.state == "done" for j in jobs)


def test_log_failure_reads_the_tail(tmp_path):
    log = tmp_path / "x.log"
    log.write_text("2026 | INFO | s | start\nTraceback (most recent call last):\n  File x\nKeyError: 'k'\n")
    assert log_failure(log) == "KeyError: 'k'"
    log.write_text("2026 | ERROR | s | retrying\n" + "2026 | INFO | s | step\n" * 60)  # recovered long ago
    assert log_failure(log) is None
    assert log_failure(tmp_path / "absent.log") is None


def test_parse_job_blocks_with_shell_commands_and_localrules():
    text = ("rule a:\n    output: o/1.txt, o/1.aux\n    log: l/1.log\n    jobid: 1\n    wildcards: s=1\n"
            "echo hi > o/1.txt\n\nlocalrule all:\n    input: o/1.txt\n    jobid: 0\n"
            "checkpoint c:\n    output: o/c\n    jobid: 2\n")
    jobs = parse_job_blocks(text)
    assert [(j.rule, j.outputs, j.logs, j.wildcards) for j in jobs] == [
        ("a", ("o/1.txt", "o/1.aux"), ("l/1.log",), "s=1"), ("c", ("o/c",), (), "")]


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


def test_cli_json_and_exit_code(workflow, capsys):
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
