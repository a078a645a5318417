"""A tiny objective and data source for the training-loop tests (no tokens/models/objectives needed).

Also a script: ``python train_toy.py '<json>'`` runs one training (optionally killing or signalling itself at a
step) and writes the final objective weights as safetensors, so tests can compare runs byte for byte in separate
processes (as SIGKILL, SIGTERM and torchrun require).
"""

from __future__ import annotations

import copy
import faulthandler
import json
import logging
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import Dataset, default_collate

from pipeline3d.rng import rng_for

POOL = 32  # distinct samples
DIM = 4


class ToyEncoder(nn.Module):
    registry_name = "toy_mlp"

    def __init__(self, width: int = 16, dropout: float = 0.0):
        super().__init__()
        self.config = {"width": width, "dropout": dropout}
        self.inp = nn.Linear(DIM, width)
        self.kind_embed = nn.Embedding(3, width)
        self.norm = nn.LayerNorm(width)
        self.mid = nn.Linear(width, width)
        self.drop = nn.Dropout(dropout)  # draws from the global torch RNG (restored on resume)

    def forward(self, x, kind):
        h = torch.tanh(self.norm(self.inp(x) + self.kind_embed(kind)))
        return torch.tanh(self.mid(self.drop(h)))


class ToyObjective(nn.Module):
    """Regression with an EMA teacher. ``noise=True`` uses every kind of randomness the loop must reproduce: the
    per-step generator (a dropout-like mask), nn.Dropout (global torch RNG), python ``random`` and numpy's global
    RNG. ``noise=False`` is fully deterministic (for comparing different process counts)."""

    def __init__(self, noise: bool = True, hook=None, partial: bool = False):
        super().__init__()
        self.noise, self.partial = noise, partial
        if partial:  # for DDP: ``rank0_only`` gets a gradient on rank 0 only, ``never`` on no rank
            self.rank0_only, self.never = nn.Parameter(torch.ones(2, 2)), nn.Parameter(torch.ones(2, 2))  # decayed
        self.encoder = ToyEncoder(dropout=0.1 if noise else 0.0)
        self.head = nn.Linear(16, 1)
        self.teacher = copy.deepcopy(self.encoder).requires_grad_(False)
        self.hook, self.last_step = hook, -1

    def forward(self, batch, *, step, total_steps, generator):
        self.last_step = step
        h = self.encoder(batch["x"], batch["kind"])
        if self.noise:
            keep = torch.rand(h.shape, generator=generator, device=h.device) > 0.2
            h = h * keep / 0.8
        pred = self.head(h).squeeze(-1)
        mse = ((pred - batch["y"]) ** 2).mean()
        with torch.no_grad():
            target = self.teacher(batch["x"], batch["kind"])
        consistency = ((h - target) ** 2).mean()
        weight = 1.0 + (0.01 * (random.random() + float(np.random.rand())) if self.noise else 0.0)
        loss = weight * mse + 0.1 * consistency
        if self.partial and int(os.environ.get("RANK", "0")) == 0:
            loss = loss + (self.rank0_only**2).sum()
        return loss, {"mse": float(mse.detach()), "consistency": float(consistency.detach())}

    @torch.no_grad()
    def after_step(self):
        for t, s in zip(self.teacher.parameters(), self.encoder.parameters()):
            t.mul_(0.9).add_(s, alpha=0.1)
        if self.hook is not None:
            self.hook(self.last_step + 1)


class ToyEpoch(Dataset):
    def __init__(self, order: np.ndarray, seed: int):
        self.order, self.seed = order, seed

    def __len__(self):
        return len(self.order)

    def __getitem__(self, i):
        item = int(self.order[i])
        rng = rng_for(self.seed, "toy-item", str(item))
        x = rng.standard_normal(DIM).astype(np.float32)
        return {
            "x": torch.from_numpy(x),
            "kind": torch.tensor(item % 3),
            "y": torch.tensor(float(np.sin(x[0]) + x[1] * x[2] - 0.5 * x[3]), dtype=torch.float32),
        }


class ToyData:
    """``samples_per_epoch`` draws (with replacement) from a fixed pool; the order is a function of (seed, epoch)."""

    def __init__(self, seed: int = 0, samples_per_epoch: int = 20):
        self.seed, self.samples_per_epoch = seed, samples_per_epoch

    def make_epoch(self, epoch: int) -> ToyEpoch:
        order = rng_for(self.seed, "toy-order", f"e{epoch}").integers(0, POOL, self.samples_per_epoch)
        return ToyEpoch(order, self.seed)

    def collate(self, samples):
        return default_collate(samples)


def make_objective(init_seed: int = 0, noise: bool = True, hook=None, partial: bool = False) -> ToyObjective:
    torch.manual_seed(init_seed)
    return ToyObjective(noise=noise, hook=hook, partial=partial)


def seed_globals(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def state_bytes(module: nn.Module) -> dict[str, bytes]:
    return {k: v.detach().cpu().contiguous().numpy().tobytes() for k, v in module.state_dict().items()}


SCRIPT = Path(__file__).resolve()
_LAUNCH_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@pytest.fixture(autouse=True, scope="module")
def clean_launch_env():
    """In-process ``train`` calls must see a single-process launch even if the test runner sits in a SLURM step or
    under torchrun (import this fixture into a test module to apply it there, module fixtures included)."""
    with pytest.MonkeyPatch.context() as mp:
        for name in list(os.environ):
            if name in _LAUNCH_VARS or name.startswith("SLURM_"):
                mp.delenv(name)
        yield


def run_script(spec: dict, *, nproc: int = 1, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run ``main(spec)`` in a fresh interpreter (under torchrun with ``nproc`` > 1 processes)."""
    cmd = [sys.executable, str(SCRIPT), json.dumps(spec)]
    if nproc > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *cmd[1:]]
    # A clean launch environment: the test itself may run inside a SLURM job or under torchrun.
    env = {k: v for k, v in os.environ.items() if k not in _LAUNCH_VARS and not k.startswith("SLURM_")}
    env.update(OMP_NUM_THREADS="1", PYTHONHASHSEED="0")
    # Own session: on a timeout the whole tree (torchrun and its workers) is killed, not just the launcher.
    with subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True
    ) as proc:
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
            raise AssertionError(f"timed out after {timeout}s:\n{err[-5000:]}") from None
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def run_phase(spec: dict) -> int:
    """One ``train`` call as described by ``spec``; writes ``<out>`` (objective safetensors), the exported encoder and
    ``<out>.result.json`` on rank 0. Returns the exit code the stage would use."""
    from safetensors.torch import save_file

    from pipeline3d.train import TrainConfig, save_encoder, train

    rank = int(os.environ.get("RANK", "0"))

    def hook(completed: int) -> None:
        if spec.get("kill_at") == completed:
            os.kill(os.getpid(), signal.SIGKILL)
        if spec.get("signal_at") == completed and rank in spec.get("signal_ranks", [0]):
            os.kill(os.getpid(), getattr(signal, spec["signal"]))

    seed_globals(spec.get("global_seed", 123))
    objective = make_objective(
        spec.get("init_seed", 0) + rank, noise=spec.get("noise", True), hook=hook, partial=spec.get("partial", False)
    )
    data = ToyData(seed=spec.get("data_seed", 0), samples_per_epoch=spec.get("samples_per_epoch", 20))
    result = train(
        objective, data, TrainConfig(**spec["cfg"]), spec["state_dir"], config_hash=spec.get("config_hash", "toy")
    )
    if result.is_main:
        out = Path(spec["out"])
        out.parent.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in objective.state_dict().items()}, str(out))
        save_encoder(
            objective.encoder,
            out.with_suffix(".encoder.safetensors"),
            out.with_suffix(".encoder.json"),
            {"steps": result.steps},
        )
        out.with_suffix(".result.json").write_text(
            json.dumps(
                {
                    "steps": result.steps,
                    "steps_run": result.steps_run,
                    "final_loss": result.final_loss,
                    "resumed_from": result.resumed_from,
                    "interrupted": result.interrupted,
                }
            )
        )
    return result.exit_code


def main(argv: list[str]) -> int:
    """``spec`` = one phase, or ``{"phases": [...]}`` run one after the other in this process.

    Under torchrun, ``train`` joins the launcher's rendezvous itself. That works once per process: the launcher's
    store keeps the first group's keys, so a second group on it can pair stale addresses. A phase with
    ``"group_file"`` therefore runs inside a group the harness creates on a fresh file store (``train`` then uses
    the existing group, the other supported path).
    """
    spec = json.loads(argv[0])
    if spec.get("watchdog"):  # a hung collective ends the process with every thread's traceback
        faulthandler.dump_traceback_later(spec["watchdog"], exit=True)
    torch.set_num_threads(1)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(message)s")
    code = 0
    for phase in spec.get("phases", [spec]):
        if phase.get("group_file"):
            torch.distributed.init_process_group(
                "gloo",
                init_method=f"file://{phase['group_file']}",
                rank=int(os.environ["RANK"]),
                world_size=int(os.environ["WORLD_SIZE"]),
            )
        code = run_phase(phase)
        if phase.get("group_file"):
            torch.distributed.destroy_process_group()
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
