"""Keeping a worker on one core.

BLAS/OpenMP pools are capped by environment variables, which the stage sets before numpy is imported
(``thread_env``). The cache's own numba kernels (``bvh``, ``voxel_walk``, ``grids``) are compiled without
``parallel``, so they never start threads. Two native engines, used as references in tests and benchmarks, ignore
those caps: fcpw splits every batched query over ``std::thread::hardware_concurrency()`` threads (the machine's
CPU count, whatever the affinity mask), and Embree sizes its TBB pool from the affinity mask when its first scene
is committed. ``one_cpu()`` therefore pins the calling thread to the CPU it is running on for the duration of such a
call, so the threads those libraries start inherit a one-CPU mask; between calls the scheduler may move the worker
as usual. It only narrows a mask that has more than one CPU, so a job already confined to one core (SLURM
``--cpus-per-task=1``) pays nothing.
"""

from __future__ import annotations

import contextlib
import os
from typing import Iterator

THREAD_ENV_VARS = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "BLIS_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "NUMEXPR_NUM_THREADS",
)


def thread_env(threads: int) -> dict[str, str]:
    """The environment variables that cap BLAS/OpenMP thread pools at ``threads``."""
    return {name: str(threads) for name in THREAD_ENV_VARS}


def _current_cpu() -> int | None:
    try:
        with open("/proc/thread-self/stat", "rb") as fh:
            # field 39 (1-based) is the CPU the thread last ran on; the command name (field 2) may hold spaces
            return int(fh.read().rsplit(b")", 1)[1].split()[36])
    except (OSError, ValueError, IndexError):
        return None


@contextlib.contextmanager
def one_cpu(enabled: bool = True) -> Iterator[None]:
    """Pin the calling thread to its current CPU while the block runs (no-op if disabled or unsupported)."""
    if not enabled or not hasattr(os, "sched_setaffinity"):
        yield
        return
    allowed = os.sched_getaffinity(0)
    cpu = _current_cpu()
    if len(allowed) <= 1 or cpu is None or cpu not in allowed:
        yield
        return
    os.sched_setaffinity(0, {cpu})
    try:
        yield
    finally:
        os.sched_setaffinity(0, allowed)
