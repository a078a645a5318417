"""``pipeline3d status``: per rule, how many jobs of a target are done, running, queued, failed or pending.

Everything comes from Snakemake's own view of the workflow plus the files it leaves behind; nothing is guessed from
path conventions. Two read-only Snakemake calls (run concurrently, both safe while a run holds the lock):

- ``snakemake --dry-run --forceall <target>``: every job of the target's DAG as a job block (rule, outputs, declared
  log files, wildcards). This is what groups output files into jobs and names the log of jobs that never ran.
- ``snakemake --dry-run --summary <target>``: one row per output file with Snakemake's plan for its job ("update
  pending" or "no update") and the file's status ("ok", "missing", "params changed", ...). It ignores incomplete
  markers and the lock, so it also works during a run or after a kill.

A job's state, first match wins:

1. **done**: no output of the job has plan "update pending" (outputs present and up to date for Snakemake).
2. **running**: an output has an incomplete marker (``.snakemake/incomplete/``, written when Snakemake starts or
   submits the job, removed when it ends) and is listed in a lock of a live run (``.snakemake/locks/*.output.lock``).
   **queued** instead when the marker names a SLURM job that ``squeue`` reports as waiting (PENDING, REQUEUED ...):
   submitted, not started.
3. **failed**: the job must run and either (a) its output is among the "Error in rule" blocks of the newest
   Snakemake run log (``.snakemake/log/*.snakemake.log``; covers a non-zero exit that wrote no log, e.g. SLURM
   OOM), or (b) the tail of one of its declared log files shows a failure (a Python traceback, an ``ERROR`` or
   ``CRITICAL`` line of the stage logger, ``Killed``), or (c) it has an incomplete marker but no run holds a lock
   (the run was killed mid-job; Snakemake will rerun it, never trust it).
4. **pending**: everything else that must run (never ran, upstream not ready, or outdated: params / code / input
   changed; the reason is kept in ``--json``).

Limits: queued and started SLURM jobs are told apart only where ``squeue`` runs (the submit host); elsewhere, or
when it fails, a submitted job counts as running (its SLURM id is in ``--json`` as ``external_jobid``). A
lock left by a run killed with SIGKILL looks like a live run until ``snakemake --unlock``, so its incomplete jobs
show as running. A failure is only recognised in the job's log tail or the newest run log: a job whose earlier
attempt failed in an older run and whose log was overwritten or deleted shows as pending. Only Snakemake's default
file persistence backend is read for markers (``--persistence-backend db`` keeps them in SQLite: no job is shown
running there). Rules without outputs (e.g. ``all``) are not jobs here.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import re
import shutil
import subprocess
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

STATES = ("done", "running", "queued", "failed", "pending")
# squeue's long state names of a job that was submitted but has not started (or was put back in the queue)
SLURM_WAITING = frozenset({"PENDING", "CONFIGURING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESV_DEL_HOLD"})
PENDING_PLAN = "update pending"
LOG_TAIL_LINES = 40
# Failure signatures in the tail of a job log: Python's traceback header, the stage logger's error levels (see
# pipeline3d.log.FORMAT), a kernel OOM kill reported by the shell, SLURM's own cancellation notice.
_FAILURE_PATTERNS = (
    re.compile(r"^Traceback \(most recent call last\):"),
    re.compile(r"\| (ERROR|CRITICAL) \|"),
    re.compile(r"^(ERROR|CRITICAL)\b"),
    re.compile(r"\bKilled\b"),
    re.compile(r"slurmstepd: error:"),
)
_EXECUTED = re.compile(r"^(Select jobs to execute|Execute \d+ jobs)", re.MULTILINE)
_BLOCK_HEAD = re.compile(r"^(?:local)?(?:rule|checkpoint) (\S+):$")


class StatusError(RuntimeError):
    """Snakemake could not build the DAG (bad Snakefile, config, target ...): the message has its output."""


@dataclass
class Job:
    rule: str
    outputs: tuple[str, ...]
    logs: tuple[str, ...] = ()
    wildcards: str = ""
    state: str = "pending"
    detail: str = ""  # why it is in that state (failure line, Snakemake's file status, ...)
    external_jobid: str | None = None


@dataclass
class Status:
    workdir: str
    target: str
    jobs: list[Job]
    run_active: bool  # a Snakemake run holds the lock of this working directory
    counts: dict[str, dict[str, int]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        counts: dict[str, dict[str, int]] = {}
        for job in self.jobs:
            row = counts.setdefault(job.rule, dict.fromkeys(STATES, 0))
            row[job.state] += 1
        self.counts = {rule: counts[rule] for rule in sorted(counts)}

    def totals(self) -> dict[str, int]:
        return {state: sum(row[state] for row in self.counts.values()) for state in STATES}

    def to_dict(self) -> dict:
        return {
            "workdir": self.workdir,
            "target": self.target,
            "run_active": self.run_active,
            "rules": {rule: {**row, "total": sum(row.values())} for rule, row in self.counts.items()},
            "totals": {**self.totals(), "total": len(self.jobs)},
            "jobs": [dataclasses.asdict(job) for job in self.jobs],
        }


# --------------------------------------------------------------------------------------------- Snakemake output
def parse_job_blocks(text: str) -> list[Job]:
    """Jobs from a dry-run's job blocks (``rule x:`` + indented ``key: value`` lines); jobs without outputs skipped."""
    jobs: list[Job] = []
    current: dict[str, str] | None = None
    rule = ""

    def close() -> None:
        if current is not None and current.get("output"):
            jobs.append(Job(rule=rule, outputs=_split_paths(current["output"]),
                            logs=_split_paths(current.get("log", "")), wildcards=current.get("wildcards", "")))

    for line in text.splitlines():
        head = _BLOCK_HEAD.match(line)
        if head:
            close()
            current, rule = {}, head.group(1)
        elif current is not None and line.startswith("    ") and ": " in line:
            key, value = line.strip().split(": ", 1)
            current.setdefault(key, value)
        elif current is not None and line.strip():
            close()
            current = None
    close()
    return jobs


def _split_paths(value: str) -> tuple[str, ...]:
    value = value.removesuffix(" (check log file(s) for error details)")
    return tuple(p for p in (s.strip() for s in value.split(", ")) if p)


def parse_summary(text: str) -> dict[str, tuple[str, str]]:
    """``output file -> (status, plan)`` from ``snakemake --summary`` (tab-separated, header line first)."""
    rows: dict[str, tuple[str, str]] = {}
    header: list[str] | None = None
    for line in text.splitlines():
        cells = line.split("\t")
        if header is None:
            if cells[:1] == ["output_file"]:
                header = cells
            continue
        if len(cells) != len(header):
            continue
        row = dict(zip(header, cells))
        rows[row["output_file"]] = (row["status"], row["plan"])
    if header is None:
        raise StatusError("snakemake --summary printed no table")
    return rows


# --------------------------------------------------------------------------------------------- .snakemake records
def incomplete_markers(smk_dir: Path) -> dict[str, str | None]:
    """``output path -> external job id`` of Snakemake's incomplete markers (file persistence backend).

    A marker's path is the url-safe base64 of the output path, split into ``@``-prefixed folder chunks when longer
    than a file name may be; its content is ``{"external_jobid": ...}``.
    """
    import json

    root = smk_dir / "incomplete"
    markers: dict[str, str | None] = {}
    if not root.is_dir():
        return markers
    for path in root.rglob("*"):
        if not path.is_file():
            continue
        parts = path.relative_to(root).parts
        encoded = "".join(p.removeprefix("@") for p in parts[:-1]) + parts[-1]
        try:
            output = base64.urlsafe_b64decode(encoded.encode()).decode()
        except (binascii.Error, UnicodeDecodeError, ValueError):
            continue  # e.g. Snakemake's own "migration_underway" flag
        try:
            jobid = json.loads(path.read_text() or "{}").get("external_jobid")
        except (OSError, json.JSONDecodeError):
            jobid = None
        markers[output] = jobid
    return markers


def locked_outputs(smk_dir: Path) -> set[str] | None:
    """Outputs locked by live runs (``.snakemake/locks/<n>.output.lock``: one path a line); None when no lock."""
    lock_dir = smk_dir / "locks"
    files = sorted(lock_dir.glob("*.lock")) if lock_dir.is_dir() else []
    if not files:
        return None
    locked: set[str] = set()
    for path in files:
        if path.name.endswith(".output.lock"):
            locked.update(line.strip() for line in path.read_text().splitlines() if line.strip())
    return locked


def errors_in_last_run(smk_dir: Path) -> dict[str, str]:
    """``output -> message`` of the "Error in rule" blocks of the newest Snakemake log that executed jobs.

    Other invocations (``--summary`` without ``-n``, ``--unlock``, ``--list``) leave short logs too: skipped.
    """
    log_dir = smk_dir / "log"
    for path in sorted(log_dir.glob("*.snakemake.log"), reverse=True) if log_dir.is_dir() else []:
        text = path.read_text(errors="replace")
        if _EXECUTED.search(text):
            return _error_blocks(text, path.name)
    return {}


def _error_blocks(text: str, name: str) -> dict[str, str]:
    errors: dict[str, str] = {}
    in_block, rule = False, ""
    for line in text.splitlines():
        head = re.match(r"^Error in rule (\S+):$", line)
        if head:
            in_block, rule = True, head.group(1)
        elif in_block and line.startswith("    output: "):
            for output in _split_paths(line.split(": ", 1)[1]):
                errors[output] = f"snakemake reported an error in rule {rule} (.snakemake/log/{name})"
        elif in_block and line and not line.startswith(" "):
            in_block = False
    return errors


def log_failure(path: Path) -> str | None:
    """The failure line in the tail of a job log, or None (no log, or it ends without a failure signature)."""
    try:
        lines = [ln.rstrip() for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return None
    tail = lines[-LOG_TAIL_LINES:]
    hits = [ln for ln in tail if any(p.search(ln) for p in _FAILURE_PATTERNS)]
    if not hits:
        return None
    # The most telling line: the last ERROR line, else the exception line that ends a traceback.
    errors = [ln for ln in hits if "ERROR" in ln or "CRITICAL" in ln or "Killed" in ln or "slurmstepd" in ln]
    return (errors[-1] if errors else tail[-1]).strip()[:300]


def slurm_states(jobids: Iterable[str], squeue: Sequence[str] = ("squeue",)) -> dict[str, str]:
    """``job id -> squeue state`` of the given SLURM jobs; {} when squeue is missing or fails (then nothing is
    reported as queued). Jobs squeue no longer lists (finished) are absent."""
    wanted = sorted({str(j) for j in jobids if j})
    if not wanted or shutil.which(squeue[0]) is None:
        return {}
    try:
        proc = subprocess.run([*squeue, "--noheader", "--format=%i|%T", f"--jobs={','.join(wanted)}"],
                              stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return {}
    states = {}
    for line in proc.stdout.splitlines():
        jobid, _, state = line.strip().partition("|")
        if jobid in wanted:
            states[jobid] = state.strip()
    return states


# --------------------------------------------------------------------------------------------- classification
def classify(jobs: Sequence[Job], summary: dict[str, tuple[str, str]], workdir: Path,
             squeue: Sequence[str] = ("squeue",)) -> tuple[list[Job], bool]:
    """Set each job's state (see the module docstring); returns the jobs and whether a run holds the lock."""
    smk_dir = workdir / ".snakemake"
    markers = incomplete_markers(smk_dir)
    locked = locked_outputs(smk_dir)
    last_errors = errors_in_last_run(smk_dir)
    for job in jobs:
        rows = [summary[o] for o in job.outputs if o in summary]
        pending = any(plan == PENDING_PLAN for _, plan in rows) or len(rows) < len(job.outputs)
        marked = [o for o in job.outputs if o in markers]
        job.external_jobid = next((markers[o] for o in marked if markers[o]), None)
        if not pending:
            job.state, job.detail = "done", ""
        elif marked and locked is not None and any(o in locked for o in marked):
            job.state, job.detail = "running", "incomplete marker + lock of a live run"
        elif marked:
            job.state, job.detail = "failed", "interrupted: incomplete output and no run holds the lock"
        elif (error := next((last_errors[o] for o in job.outputs if o in last_errors), None)) is not None:
            job.state, job.detail = "failed", _with_log_line(job, workdir, error)
        elif (line := next(filter(None, (log_failure(workdir / p) for p in job.logs)), None)) is not None:
            job.state, job.detail = "failed", line
        else:
            statuses = sorted({status for status, _ in rows if status != "ok"})
            job.state, job.detail = "pending", ", ".join(statuses)
    submitted = [job for job in jobs if job.state == "running" and job.external_jobid]
    states = slurm_states((job.external_jobid for job in submitted), squeue) if submitted else {}
    for job in submitted:
        if states.get(str(job.external_jobid)) in SLURM_WAITING:
            job.state, job.detail = "queued", f"SLURM job {job.external_jobid} is {states[str(job.external_jobid)]}"
    return list(jobs), locked is not None


def _with_log_line(job: Job, workdir: Path, message: str) -> str:
    line = next(filter(None, (log_failure(workdir / p) for p in job.logs)), None)
    return f"{message}: {line}" if line else message


# --------------------------------------------------------------------------------------------- running Snakemake
def snakemake_args(target: str, configfiles: Iterable[str] = (), profiles: Iterable[str] = ()) -> list[str]:
    """Target + options; paths that exist relative to the caller's folder are made absolute (Snakemake runs in the
    workflow directory). A profile that is not a path is passed as given (Snakemake looks it up by name)."""
    def resolve(value: str) -> str:
        return str(Path(value).resolve()) if Path(value).exists() else str(value)

    args = [target]
    for path in configfiles:
        args += ["--configfile", resolve(path)]
    for profile in profiles:
        args += ["--profile", resolve(profile)]
    return args


def collect(workdir: str | Path = ".", target: str = "all", *, configfiles: Sequence[str] = (),
            profiles: Sequence[str] = (), snakemake: Sequence[str] | None = None,
            squeue: Sequence[str] = ("squeue",)) -> Status:
    """Ask Snakemake about ``target`` in ``workdir`` and classify every job (see the module docstring)."""
    workdir = Path(workdir).resolve()
    base = list(snakemake or [sys.executable, "-m", "snakemake"])
    common = snakemake_args(target, configfiles, profiles)
    # --forceall lists every job of the DAG whatever its state; --quiet is not given: it would hide the blocks.
    calls = {
        "jobs": [*base, "--dry-run", "--forceall", "--nocolor", *common],
        # --dry-run with --summary: same table, but no .snakemake/log file is left behind for every status call
        "summary": [*base, "--dry-run", "--summary", "--nocolor", *common],
    }
    procs = {name: subprocess.Popen(cmd, cwd=workdir, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True) for name, cmd in calls.items()}
    outputs = {}
    for name, proc in procs.items():
        out, err = proc.communicate()
        if proc.returncode != 0:
            raise StatusError(f"`{' '.join(calls[name][len(base):])}` failed in {workdir} "
                              f"(exit {proc.returncode}):\n{(out + err)[-3000:]}")
        outputs[name] = (out, err)
    jobs = parse_job_blocks(outputs["jobs"][1] + "\n" + outputs["jobs"][0])
    summary = parse_summary(outputs["summary"][0])
    jobs, active = classify(jobs, summary, workdir, squeue)
    return Status(str(workdir), target, jobs, active)


# --------------------------------------------------------------------------------------------- rendering
_COLOURS = {"done": "32", "running": "33", "queued": "36", "failed": "31"}


def render_table(status: Status, *, colour: bool = False, max_failed: int = 20) -> str:
    """A compact aligned table (one row per rule, then totals) and the failed jobs with their log lines."""
    header = ["rule", *STATES, "total"]
    rows = [[rule, *(str(row[s]) for s in STATES), str(sum(row.values()))] for rule, row in status.counts.items()]
    totals = status.totals()
    rows.append(["total", *(str(totals[s]) for s in STATES), str(len(status.jobs))])
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def fmt(cells: list[str], paint: bool) -> str:
        out = [cells[0].ljust(widths[0])]
        for i, cell in enumerate(cells[1:], start=1):
            text = cell.rjust(widths[i])
            state = header[i]
            if paint and colour and state in _COLOURS and cell != "0":
                text = f"\033[{_COLOURS[state]}m{text}\033[0m"
            out.append(text)
        return "  ".join(out).rstrip()

    rule_line = "  ".join("-" * w for w in widths)
    lines = [fmt(header, False), rule_line, *(fmt(r, True) for r in rows[:-1]), rule_line, fmt(rows[-1], True)]
    lines.append(f"target {status.target} in {status.workdir}"
                 + ("; a Snakemake run holds the lock" if status.run_active else ""))
    failed = [job for job in status.jobs if job.state == "failed"]
    if failed:
        lines.append("")
        lines.append("failed jobs:")
        for job in failed[:max_failed]:
            where = f" [{job.wildcards}]" if job.wildcards else ""
            log = f" log: {', '.join(job.logs)}" if job.logs else ""
            lines.append(f"  {job.rule}{where}{log}")
            if job.detail:
                lines.append(f"      {job.detail}")
        if len(failed) > max_failed:
            lines.append(f"  ... and {len(failed) - max_failed} more (--json lists them all)")
    return "\n".join(lines)
