"""Multi-process training: launcher detection, process group set-up and the few collectives the loop needs.

Launchers: ``torchrun`` (RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT) and SLURM ``srun`` with one
task per GPU (SLURM_PROCID / SLURM_STEP_NUM_TASKS or SLURM_NTASKS / SLURM_LOCALID; the master address defaults to
the first node of the job and the port to one derived from the job id). Backend: NCCL on CUDA, gloo on CPU, so the
same code path runs in CPU tests with two processes.

Gradients are averaged by ``DistributedDataParallel`` around the whole objective (encoder, heads, decoders), so
the bucketed all-reduces overlap the backward pass. ``find_unused_parameters`` is on because objectives may leave
parameters out of a step (a loss term weighted 0, a head used every other step); a parameter no rank used keeps
``grad=None`` and the optimiser skips it as a single process would. Frozen copies (an EMA teacher) have
``requires_grad=False`` and are not reduced: every rank updates them identically from identical weights.
"""

from __future__ import annotations

import datetime
import logging
import os
import re
from dataclasses import dataclass
from typing import Any, Mapping

import torch
import torch.distributed as dist

from pipeline3d.device import job_device

DEFAULT_PORT = 29500


@dataclass(frozen=True)
class LaunchEnv:
    """Where this process sits in a multi-process launch (``world_size == 1``: a plain single process)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    launcher: str = "none"  # "none" | "torchrun" | "slurm"
    master_addr: str | None = None
    master_port: int | None = None


def first_slurm_host(nodelist: str) -> str:
    """The first host name of a SLURM node list such as ``gpu[03-05,09],cpu1`` (-> ``gpu03``)."""
    match = re.match(r"([^,\[]+)(?:\[([^\]]+)\])?", nodelist.strip())
    if not match:
        raise ValueError(f"cannot parse SLURM node list {nodelist!r}")
    prefix, ranges = match.group(1), match.group(2)
    if ranges is None:
        return prefix
    first = ranges.split(",")[0].split("-")[0]
    return prefix + first


def detect_launch(environ: Mapping[str, str] | None = None) -> LaunchEnv:
    """Read the launcher's environment; torchrun wins over SLURM (torchrun inside an allocation sets both)."""
    env = os.environ if environ is None else environ
    if "RANK" in env and "WORLD_SIZE" in env:
        return LaunchEnv(
            rank=int(env["RANK"]),
            world_size=int(env["WORLD_SIZE"]),
            local_rank=int(env.get("LOCAL_RANK", 0)),
            launcher="torchrun",
            master_addr=env.get("MASTER_ADDR"),
            master_port=int(env["MASTER_PORT"]) if "MASTER_PORT" in env else None,
        )
    # srun sets SLURM_STEP_NUM_TASKS for the processes of its job step. SLURM_NTASKS alone is not enough: the batch
    # script of a multi-task allocation sees it too while running a single process, which would wait forever.
    tasks = env.get("SLURM_STEP_NUM_TASKS")
    if "SLURM_PROCID" in env and tasks and int(tasks) > 1:
        job_id = int(env.get("SLURM_JOB_ID", "0") or 0)
        addr = env.get("MASTER_ADDR") or first_slurm_host(
            env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST") or "127.0.0.1"
        )
        port = int(env["MASTER_PORT"]) if "MASTER_PORT" in env else 20000 + job_id % 20000
        return LaunchEnv(
            rank=int(env["SLURM_PROCID"]),
            world_size=int(tasks),
            local_rank=int(env.get("SLURM_LOCALID", 0)),
            launcher="slurm",
            master_addr=addr,
            master_port=port,
        )
    return LaunchEnv()


class Dist:
    """The process group as the loop sees it. With one process every collective is a no-op."""

    def __init__(self, launch: LaunchEnv, device: torch.device, *, owns_group: bool) -> None:
        self.launch = launch
        self.device = device
        self._owns_group = owns_group

    @property
    def rank(self) -> int:
        return self.launch.rank

    @property
    def world_size(self) -> int:
        return self.launch.world_size

    @property
    def is_main(self) -> bool:
        return self.launch.rank == 0

    @property
    def enabled(self) -> bool:
        return self.launch.world_size > 1

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def mean(self, values: torch.Tensor) -> torch.Tensor:
        """Element-wise mean of a float tensor over ranks, on the CPU (a copy; the input is left alone)."""
        out = values.detach().to(self.device).clone()
        if self.enabled:
            dist.all_reduce(out)
            out /= self.world_size
        return out.cpu()

    def any(self, flag: bool) -> bool:
        """True on every rank when ``flag`` is True on any rank (so all ranks stop at the same step)."""
        if not self.enabled:
            return flag
        t = torch.tensor([1.0 if flag else 0.0], device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item() > 0)

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj`` (picklable), in rank order, on every rank."""
        if not self.enabled:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def close(self) -> None:
        if self._owns_group and dist.is_initialized():
            dist.destroy_process_group()


def data_parallel(module: torch.nn.Module, dist_: Dist) -> torch.nn.Module:
    """``module`` wrapped in ``DistributedDataParallel`` when there is more than one process, else ``module``.

    Construction broadcasts rank 0's parameters and buffers, so every rank starts identical even when their
    initialisations differed. Call the wrapper for forward passes; save and export the bare ``module``.
    """
    if not dist_.enabled:
        return module
    from torch.nn.parallel import DistributedDataParallel

    ids = [dist_.device] if dist_.device.type == "cuda" else None
    if dist_.is_main:
        logging.getLogger("pipeline3d.train").info(
            "gradients: DistributedDataParallel over %d processes", dist_.world_size
        )
    return DistributedDataParallel(
        module, device_ids=ids, output_device=ids[0] if ids else None, find_unused_parameters=True
    )


def setup(
    device: torch.device | None = None, environ: Mapping[str, str] | None = None, log: logging.Logger | None = None
) -> Dist:
    """Detect the launcher, pick the device and join the process group (if there is more than one process).

    ``device=None`` follows ``device.job_device(local_rank)``: the process's GPU when CUDA is available (local rank
    modulo the visible GPUs, right under torchrun and under srun's one-GPU-per-task binding), else the CPU. A
    process group created by the caller beforehand is reused (and not destroyed by ``close``).
    """
    log = log or logging.getLogger("pipeline3d.train")
    launch = detect_launch(environ)
    if device is None:
        device = job_device(launch.local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if launch.world_size == 1:
        return Dist(launch, device, owns_group=False)
    if dist.is_initialized():
        if dist.get_world_size() != launch.world_size or dist.get_rank() != launch.rank:
            raise RuntimeError(
                f"existing process group (rank {dist.get_rank()}/{dist.get_world_size()}) does not "
                f"match the launcher's ({launch.rank}/{launch.world_size})"
            )
        return Dist(launch, device, owns_group=False)
    if launch.master_addr:
        os.environ.setdefault("MASTER_ADDR", launch.master_addr)
    if launch.master_port:
        os.environ.setdefault("MASTER_PORT", str(launch.master_port))
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(DEFAULT_PORT))
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(
        backend=backend,
        init_method="env://",
        rank=launch.rank,
        world_size=launch.world_size,
        timeout=datetime.timedelta(minutes=30),
    )
    if launch.rank == 0:
        log.info(
            "distributed: %s launch, %d processes, backend %s, master %s:%s",
            launch.launcher,
            launch.world_size,
            backend,
            os.environ["MASTER_ADDR"],
            os.environ["MASTER_PORT"],
        )
    return Dist(launch, device, owns_group=True)
