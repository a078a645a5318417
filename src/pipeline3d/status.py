"""``pipeline3d status``: per rule, how many jobs of a target are done, running, queued, failed or pending.

Only public interfaces are read, never Snakemake's own files under ``.snakemake/`` (their layout changes between
Snakemake releases):

- ``snakemake --dry-run --forceall <target>``: every job of the target's DAG as a job block (rule, outputs, declared
  log files, wildcards). This is what groups output files into jobs and names the log of each job.
- ``snakemake --dry-run --summary <target>``: one row per output file with Snakemake's plan for its job ("update
  pending" or "no update") and the file's status ("ok", "missing", "params changed", ...). Both calls are
  read-only and work during a run (a dry run takes no lock) or after a kill.
- the job's declared log file, which the pipeline writes itself (``pipeline3d.log``): a header when the stage
  starts, naming its process (host, pid, SLURM job id), and an end line ``stage <name> end | exit <code>`` when it
  returns. A stage killed by a signal (SLURM time limit, out of memory, SIGKILL) writes no end line.
- ``squeue`` (where it runs): the SLURM jobs of this working directory (``%Z``) and their states. The SLURM
  executor plugin submits every job with ``--comment rule_<rule>_wildcards_<values joined by _>`` and
  ``-D <workdir>``, so a job that is submitted but has not started (no log yet) is found too.
- ``/proc`` of this host: whether a stage's pid is still alive, and whether a Snakemake process (not a dry run)
  works in this directory (``run_active``).

A job's state, first match wins:

1. **done**: no output of the job has plan "update pending" (outputs present and up to date for Snakemake).
2. **queued** / **running**: its newest SLURM job in this directory is waiting (PENDING, REQUEUED, ...) / live
   (RUNNING, COMPLETING, ...) in ``squeue``; or its log has a start and no end and the process is alive: the
   SLURM job named in the header is running (queued if requeued), or, outside SLURM, the pid is alive on this
   host and is a pipeline3d process.
3. **failed**: (a) the log has a start and no end and the process is gone (its SLURM job ended or is no longer
   listed, or the pid is dead): killed mid-job, Snakemake will rerun it; (b) the end line has a non-zero exit
   code; (c) the newest SLURM job of the job ended in a failure state (FAILED, TIMEOUT, OUT_OF_MEMORY,
   NODE_FAIL, ...: covers jobs that died before the stage wrote anything); (d) the log has no usable end line
   (an older log, a rule that is not a pipeline3d stage, or ``exit ?``) and its tail shows a failure (a Python
   traceback, an ``ERROR`` or ``CRITICAL`` line of the stage logger, ``Killed``, a ``slurmstepd: error:``).
4. **pending**: everything else that must run (never ran, upstream not ready, ended with exit 0 but outdated or
   its outputs are gone: the reason, Snakemake's file statuses, is kept in ``--json``).

Limits: ``squeue`` is asked for the jobs of the user running ``status``, so run it as the user who submitted the
run, on a host where ``squeue`` works (the submit host). Where it does not, a started SLURM job without an end line
counts as running (its SLURM id is in ``--json`` as ``external_jobid``), a submitted job that has not started shows
as pending, and (c) is not seen. SLURM forgets finished jobs after ``MinJobAge``: from then on (c) is not seen
either. A job started on another host outside SLURM and without an end line counts as running (its pid cannot be
checked from here). A recycled pid that again runs a pipeline3d process looks alive. Array jobs
(``--slurm-array-jobs``) and group jobs carry one comment for several jobs: only the first is matched. The end line
carries the real exit code where the stage calls ``pipeline3d.log.log_stage_end``; otherwise an exit hook writes
``exit 1`` after an uncaught exception and ``exit ?`` (read as "ended", judged by the tail) after ``sys.exit``.
A job that failed before its stage wrote its header (a bad command, a broken environment) is failed only through
(c) or a failure line in its log; a failure whose log was overwritten or deleted shows as pending. ``run_active``
("a Snakemake run holds the lock") means a Snakemake process, not a dry run, works in this directory on this host,
or a job is running or queued; the lock itself is not read. Rules without outputs (e.g. ``all``) are not jobs here.
"""

from __future__ import annotations

import dataclasses
import getpass
import itertools
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

STATES = ("done", "running", "queued", "failed", "pending")
# squeue's long state names of a job that was submitted but has not started (or was put back in the queue)
SLURM_WAITING = frozenset({"PENDING", "CONFIGURING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESV_DEL_HOLD"})
# ... of a job that holds its allocation (its processes may still run)
SLURM_LIVE = frozenset({"RUNNING", "COMPLETING", "SUSPENDED", "STOPPED", "SIGNALING", "STAGE_OUT", "RESIZING"})
# ... of a job that ended badly (COMPLETED and CANCELLED by Snakemake itself are not failures of the job)
SLURM_FAILED = frozenset({"FAILED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "BOOT_FAIL", "DEADLINE", "PREEMPTED"})
PENDING_PLAN = "update pending"
SQUEUE = ("squeue",)
SQUEUE_TIMEOUT = 30.0  # seconds squeue may take where a job log names a SLURM job
SQUEUE_GRACE = 5.0  # ... where none does (it runs beside the Snakemake calls in `collect`, which take longer)
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
# The lifecycle lines of pipeline3d.log (START_LINE, PROCESS_LINE, END_LINE) behind its FORMAT's "... | name | "
_LOG_START = re.compile(r"\| stage (\S+) \| cfg_hash \S+ \| pipeline3d ")
_LOG_PROCESS = re.compile(r"\| host (\S+) \| pid (\d+) \| slurm_job (\S+) \| python ")
_LOG_END = re.compile(r"\| stage (\S+) end \| exit (\S+)\s*$")
_BLOCK_HEAD = re.compile(r"^(?:local)?(?:rule|checkpoint) (\S+):$")
# Arguments of a Snakemake call that only looks (status's own calls among them): not a run
_LOOK_ONLY = frozenset(
    {
        "-n",
        "--dry-run",
        "--dryrun",
        "--summary",
        "-S",
        "--detailed-summary",
        "-D",
        "--unlock",
        "--list",
        "-l",
        "--list-target-rules",
        "--lint",
        "--dag",
        "--rulegraph",
        "--version",
    }
)


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
    run_active: bool  # a Snakemake run works in this directory (see the module docstring)
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
            jobs.append(
                Job(
                    rule=rule,
                    outputs=_split_paths(current["output"]),
                    logs=_split_paths(current.get("log", "")),
                    wildcards=current.get("wildcards", ""),
                )
            )

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


# --------------------------------------------------------------------------------------------- job logs
@dataclass
class JobLog:
    """What a stage log says about its last attempt (see pipeline3d.log: header, end line)."""

    path: Path
    started: bool = False  # a pipeline3d stage header is in it
    host: str | None = None
    pid: int | None = None
    slurm_job: str | None = None
    exit: str | None = None  # the end line's code ("0", "1", "?"); None: no end line after the last start
    tail: tuple[str, ...] = ()  # the last LOG_TAIL_LINES non-empty lines

    @property
    def running_or_killed(self) -> bool:
        return self.started and self.exit is None

    def failure(self) -> str | None:
        return failure_line(self.tail)


def read_job_log(path: Path) -> JobLog | None:
    """The lifecycle of the last attempt in a job log (a log holds one attempt: the rule's ``> {log}`` truncates
    it); None when there is no log."""
    record = JobLog(path)
    tail: deque[str] = deque(maxlen=LOG_TAIL_LINES)
    try:
        with open(path, errors="replace") as lines:
            for line in lines:
                line = line.rstrip()
                if not line.strip():
                    continue
                tail.append(line)
                if _LOG_START.search(line):
                    record = JobLog(path, started=True)
                elif record.started and record.pid is None and (m := _LOG_PROCESS.search(line)):
                    record.host, record.pid = m.group(1), int(m.group(2))
                    record.slurm_job = None if m.group(3) == "-" else m.group(3)
                elif record.started and (m := _LOG_END.search(line)):
                    record.exit = m.group(2)
    except OSError:
        return None
    record.tail = tuple(tail)
    return record


def failure_line(lines: Sequence[str]) -> str | None:
    """The failure line among the last lines of a log, or None (no failure signature)."""
    tail = [ln.rstrip() for ln in lines if ln.strip()][-LOG_TAIL_LINES:]
    tail = [ln for ln in tail if not _LOG_END.search(ln)]
    hits = [ln for ln in tail if any(p.search(ln) for p in _FAILURE_PATTERNS)]
    if not hits:
        return None
    # The most telling line: the last ERROR line, else the exception line that ends a traceback.
    errors = [ln for ln in hits if "ERROR" in ln or "CRITICAL" in ln or "Killed" in ln or "slurmstepd" in ln]
    return (errors[-1] if errors else tail[-1]).strip()[:300]


def log_failure(path: Path) -> str | None:
    """The failure line in the tail of a job log, or None (no log, or it ends without a failure signature)."""
    record = read_job_log(path)
    return record.failure() if record else None


def last_message(record: JobLog) -> str:
    """The last line of a log before its end line (what the stage said last)."""
    lines = [ln for ln in record.tail if not _LOG_END.search(ln)]
    return lines[-1].strip()[:300] if lines else ""


# --------------------------------------------------------------------------------------------- processes
def pid_alive(pid: int) -> bool:
    """A process with this pid exists on this host and, where /proc tells, runs pipeline3d (a recycled pid of
    some other program does not count)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's process: it exists
    except OSError:
        return False
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True  # no /proc (macOS) or not readable: existence is all we know
    return b"pipeline3d" in argv


def snakemake_runs_in(workdir: Path) -> bool:
    """A Snakemake process on this host works in ``workdir`` and is not a dry run (nor another look-only call)."""
    proc = Path("/proc")
    if not proc.is_dir():
        return False
    target = os.path.realpath(workdir)
    for entry in proc.iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if os.path.realpath(os.readlink(entry / "cwd")) != target:
                continue
            argv = [a.decode(errors="replace") for a in (entry / "cmdline").read_bytes().split(b"\0") if a]
        except OSError:
            continue
        if _is_snakemake_run(argv):
            return True
    return False


def _is_snakemake_run(argv: Sequence[str]) -> bool:
    names = [os.path.basename(a) for a in argv[:3]]
    is_snakemake = "snakemake" in names or any(a == "-m" and b == "snakemake" for a, b in itertools.pairwise(argv))
    return is_snakemake and not any(a in _LOOK_ONLY or a.startswith("--summary") for a in argv)


# --------------------------------------------------------------------------------------------- SLURM
@dataclass(frozen=True)
class SlurmJob:
    jobid: str
    state: str
    workdir: str
    comment: str

    def order(self) -> tuple[int, ...]:
        """Submission order: ``123`` and array tasks ``123_4``."""
        return tuple(int(p) for p in re.findall(r"\d+", self.jobid)[:2]) or (0,)


class SlurmQuery:
    """One ``squeue`` call for the jobs of ``user`` (default: this user), finished ones included while SLURM keeps
    them (MinJobAge). It starts at once (``collect`` starts it beside the Snakemake calls) and is read with a
    deadline: where squeue is installed but no controller answers it hangs for half a minute."""

    def __init__(self, squeue: Sequence[str] = ("squeue",), user: str | None = None):
        self.proc: subprocess.Popen | None = None
        self.cmd = list(squeue)
        self.started = time.monotonic()
        if shutil.which(self.cmd[0]) is None:
            return
        try:
            user = user or getpass.getuser()
            self.proc = subprocess.Popen(
                [*self.cmd, "--noheader", "--states=all", f"--user={user}", "--format=%i\t%T\t%Z\t%k"],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
            )
        except (KeyError, OSError):
            self.proc = None

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate()

    def jobs(self, timeout: float) -> list[SlurmJob] | None:
        """squeue's jobs; None when squeue is missing, fails or has not answered ``timeout`` seconds after it
        started (then SLURM tells nothing)."""
        if self.proc is None:
            return None
        try:
            out, _ = self.proc.communicate(timeout=max(0.1, self.started + timeout - time.monotonic()))
        except subprocess.TimeoutExpired:
            self.close()
            return None
        if self.proc.returncode != 0:
            return None
        jobs = []
        for line in out.splitlines():
            cells = line.split("\t", 3)
            if len(cells) == 4:
                jobs.append(SlurmJob(*(c.strip() for c in cells)))
        return jobs


def slurm_jobs(
    squeue: Sequence[str] = ("squeue",), user: str | None = None, timeout: float = SQUEUE_TIMEOUT
) -> list[SlurmJob] | None:
    """The jobs of ``user`` that ``squeue`` knows (see SlurmQuery); None when it tells nothing."""
    return SlurmQuery(squeue, user).jobs(timeout)


def slurm_comment(job: Job) -> str:
    """The ``--comment`` the SLURM executor plugin gives this job: ``rule_<rule>[_wildcards_<v1>_<v2>...]`` (the
    wildcard values in order, ``/`` replaced by ``_``)."""
    values = [part.partition("=")[2] for part in job.wildcards.split(", ") if "=" in part]
    if not values:
        return f"rule_{job.rule}"
    return f"rule_{job.rule}_wildcards_{'_'.join(values).replace('/', '_')}"


def _latest_by_comment(jobs: Iterable[SlurmJob], workdir: Path) -> dict[str, SlurmJob]:
    target = os.path.realpath(workdir)
    latest: dict[str, SlurmJob] = {}
    for sj in jobs:
        if sj.workdir and os.path.realpath(sj.workdir) != target:
            continue
        if sj.comment not in latest or sj.order() > latest[sj.comment].order():
            latest[sj.comment] = sj
    return latest


# --------------------------------------------------------------------------------------------- classification
def classify(
    jobs: Sequence[Job],
    summary: dict[str, tuple[str, str]],
    workdir: Path,
    squeue: Sequence[str] | SlurmQuery | None = None,
    *,
    host: str | None = None,
) -> tuple[list[Job], bool]:
    """Set each job's state (see the module docstring); returns the jobs and whether a run is active.

    ``squeue``: the command (default SQUEUE) or a SlurmQuery already started. It gets SQUEUE_TIMEOUT seconds from
    its start where a job log names a SLURM job, else SQUEUE_GRACE (no SLURM job seen: squeue is only asked for
    jobs that are submitted but have not started, and a squeue with no controller behind it must not stall status).
    """
    host = host or platform.node()
    todo = []
    for job in jobs:
        rows = [summary[o] for o in job.outputs if o in summary]
        job.external_jobid = None
        if any(plan == PENDING_PLAN for _, plan in rows) or len(rows) < len(job.outputs):
            todo.append((job, rows))
        else:
            job.state, job.detail = "done", ""
    logs = {id(job): [r for r in (read_job_log(workdir / p) for p in job.logs) if r is not None] for job, _ in todo}
    query = squeue if isinstance(squeue, SlurmQuery) else SlurmQuery(squeue or SQUEUE) if todo else None
    in_slurm = any(r.slurm_job for records in logs.values() for r in records)
    slurm = query.jobs(SQUEUE_TIMEOUT if in_slurm else SQUEUE_GRACE) if query is not None and todo else None
    by_id = {sj.jobid: sj for sj in slurm or ()}
    latest = _latest_by_comment(slurm or (), workdir)
    for job, rows in todo:
        records = logs[id(job)]
        log = next((r for r in records if r.started), records[0] if records else None)
        job.state, job.detail, job.external_jobid = _state(
            job, rows, log, latest.get(slurm_comment(job)), by_id, slurm is not None, host
        )
    active = any(job.state in ("running", "queued") for job in jobs) or snakemake_runs_in(workdir)
    return list(jobs), active


def _state(
    job: Job,
    rows: list[tuple[str, str]],
    log: JobLog | None,
    newest: SlurmJob | None,
    by_id: dict[str, SlurmJob],
    squeue_works: bool,
    host: str,
) -> tuple[str, str, str | None]:
    """(state, detail, SLURM job id) of a job that must run; the order of the module docstring."""
    if newest is not None and newest.state in SLURM_WAITING:
        return "queued", f"SLURM job {newest.jobid} is {newest.state}", newest.jobid
    if newest is not None and newest.state in SLURM_LIVE:
        return "running", f"SLURM job {newest.jobid} is {newest.state}", newest.jobid
    if log is not None and log.running_or_killed:
        where = f"{log.path.name}: started"
        if log.slurm_job:
            sj = by_id.get(log.slurm_job)
            if not squeue_works:
                return "running", f"{where} in SLURM job {log.slurm_job} (squeue does not answer here)", log.slurm_job
            if sj is not None and sj.state in SLURM_WAITING:
                return "queued", f"SLURM job {sj.jobid} is {sj.state}", sj.jobid
            if sj is not None and sj.state in SLURM_LIVE:
                return "running", f"SLURM job {sj.jobid} is {sj.state}", sj.jobid
            gone = f"ended {sj.state}" if sj is not None else "is gone"
            return (
                "failed",
                _failed(f"interrupted: SLURM job {log.slurm_job} {gone} and the stage wrote no end line", log),
                log.slurm_job,
            )
        if log.pid is not None and log.host == host:
            if pid_alive(log.pid):
                return "running", f"{where} as pid {log.pid}, alive", None
            return "failed", _failed(f"interrupted: pid {log.pid} is gone and the stage wrote no end line", log), None
        if log.pid is not None:
            return "running", f"{where} on host {log.host} as pid {log.pid} (not checkable from here)", None
    if log is not None and log.exit not in (None, "0", "?"):
        return "failed", _failed(f"exit {log.exit}", log, last=True), log.slurm_job
    if newest is not None and newest.state in SLURM_FAILED:
        return "failed", _failed(f"SLURM job {newest.jobid} {newest.state}", log), newest.jobid
    if log is not None and log.exit in (None, "?") and (line := log.failure()) is not None:
        return "failed", line, log.slurm_job
    statuses = sorted({status for status, _ in rows if status != "ok"})
    return "pending", ", ".join(statuses), None


def _failed(reason: str, log: JobLog | None, *, last: bool = False) -> str:
    """The reason plus the log's failure line (or, with ``last``, its last line when it shows no failure)."""
    line = (log.failure() or (last_message(log) if last else None)) if log is not None else None
    return f"{reason}: {line}" if line else reason


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


def collect(
    workdir: str | Path = ".",
    target: str = "all",
    *,
    configfiles: Sequence[str] = (),
    profiles: Sequence[str] = (),
    snakemake: Sequence[str] | None = None,
    squeue: Sequence[str] | None = None,
) -> Status:
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
    slurm = SlurmQuery(squeue or SQUEUE)  # answers while Snakemake builds the DAG
    procs = {
        name: subprocess.Popen(
            cmd, cwd=workdir, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for name, cmd in calls.items()
    }
    outputs = {}
    for name, proc in procs.items():
        out, err = proc.communicate()
        if proc.returncode != 0:
            slurm.close()
            raise StatusError(
                f"`{' '.join(calls[name][len(base) :])}` failed in {workdir} "
                f"(exit {proc.returncode}):\n{(out + err)[-3000:]}"
            )
        outputs[name] = (out, err)
    jobs = parse_job_blocks(outputs["jobs"][1] + "\n" + outputs["jobs"][0])
    summary = parse_summary(outputs["summary"][0])
    jobs, active = classify(jobs, summary, workdir, slurm)
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
    lines.append(
        f"target {status.target} in {status.workdir}"
        + ("; a Snakemake run holds the lock" if status.run_active else "")
    )
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
