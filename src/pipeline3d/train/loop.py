"""The training loop: generic over objectives and data, resumable to the bit, preemption-safe, multi-process.

``train(objective, data, cfg, state_dir, config_hash=...)`` runs ``cfg.steps`` optimiser steps of AdamW with a
warm-up + cosine learning rate (a pure function of the step), gradient accumulation and clipping.

- ``objective``: an ``nn.Module`` with ``forward(batch, *, step, total_steps, generator) -> (loss, logs)`` and
  ``after_step()`` (e.g. an EMA teacher update). All its trainable parameters are optimised.
- ``data``: an ``EpochSource``: ``make_epoch(epoch)`` returns a map-style dataset whose length is the samples of
  that epoch and whose order is fixed by (seed, epoch); ``collate(samples)`` builds a batch.

Resumability: every ``checkpoint_every`` steps (and at the end, and on SIGTERM/SIGUSR1) ``state_dir/last.ckpt`` is
replaced atomically with the objective, optimiser and scaler states, the step, the position in the epoch, the RNG
states of every rank and the configuration fingerprint. A rerun with the same fingerprint continues from there and
ends with exactly the weights of an uninterrupted run (CPU); a different fingerprint starts fresh and says so.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from pipeline3d.device import to_device

from . import checkpoint, distributed, metrics, rngstate
from .batches import MicroBatchSampler, loader_generator, step_generator
from .optim import build_optimizer
from .schedule import lr_at
from .signals import EXIT_INTERRUPTED, StopRequest, stop_on_signals

AMP_MODES = ("bf16", "fp16", "none")
LOG_SECONDS = 60.0
# Settings that change how a run proceeds but not what it computes: they may change between a run and its resume.
_RESUME_NEUTRAL = ("checkpoint_every", "log_every", "num_workers")


class EpochSource(Protocol):
    """What the loop needs from the data side."""

    def make_epoch(self, epoch: int) -> Dataset: ...

    def collate(self, samples: list) -> Any: ...


@dataclass(frozen=True)
class EpochData:
    """An ``EpochSource`` from two functions (e.g. ``EpochData(lambda e: EpochView(corpus, e), collate)``)."""

    make_epoch: Callable[[int], Dataset]
    collate: Callable[[list], Any]


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings. ``batch_size`` is the global batch (all ranks, all accumulation micro-batches)."""

    steps: int
    batch_size: int
    grad_accum: int = 1
    lr: float = 3e-4
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0
    clip_grad: float = 1.0  # max global grad norm; <= 0 disables clipping (the norm is still logged)
    checkpoint_every: int = 100
    log_every: int = 50
    seed: int = 0
    num_workers: int = 0
    amp: str = "bf16"  # autocast dtype on CUDA ("fp16" adds a GradScaler); the CPU always runs fp32

    def __post_init__(self) -> None:
        object.__setattr__(self, "betas", tuple(float(b) for b in self.betas))
        problems = []
        for name in ("steps", "batch_size", "grad_accum", "checkpoint_every", "log_every"):
            if int(getattr(self, name)) < 1:
                problems.append(f"{name} must be >= 1 (got {getattr(self, name)})")
        if self.num_workers < 0:
            problems.append(f"num_workers must be >= 0 (got {self.num_workers})")
        if self.batch_size % self.grad_accum:
            problems.append(f"batch_size {self.batch_size} is not divisible by grad_accum {self.grad_accum}")
        if self.amp not in AMP_MODES:
            problems.append(f"amp must be one of {AMP_MODES} (got {self.amp!r})")
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            problems.append(f"betas must be two numbers in [0, 1) (got {self.betas})")
        if self.lr <= 0 or self.weight_decay < 0 or self.warmup_steps < 0 or not 0 <= self.min_lr_ratio <= 1:
            problems.append("need lr > 0, weight_decay >= 0, warmup_steps >= 0, 0 <= min_lr_ratio <= 1")
        if problems:
            raise ValueError("invalid TrainConfig: " + "; ".join(problems))

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown TrainConfig key(s) {unknown} (allowed: {sorted(known)})")
        return cls(**values)

    def fingerprint(self) -> str:
        """Hash of the settings that determine the result (resume is refused when it changes)."""
        relevant = {k: v for k, v in dataclasses.asdict(self).items() if k not in _RESUME_NEUTRAL}
        return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:12]


@dataclass(frozen=True)
class TrainResult:
    steps: int  # optimiser steps completed in total (including those before a resume)
    steps_run: int  # steps run by this call
    final_loss: float | None  # loss of the last completed step
    resumed_from: int | None  # checkpoint step this call continued from, None for a fresh start
    interrupted: bool  # stopped early on SIGTERM/SIGUSR1 (checkpoint written; rerun to continue)
    is_main: bool = True  # rank 0 (the process that writes checkpoints, metrics and exports)

    @property
    def exit_code(self) -> int:
        """What the stage should exit with: 0, or 75 after a signal so the scheduler/Snakemake reruns it."""
        return EXIT_INTERRUPTED if self.interrupted else 0


def train(
    objective: nn.Module,
    data: EpochSource,
    cfg: TrainConfig,
    state_dir: str | Path,
    *,
    config_hash: str,
    log: logging.Logger | None = None,
    metrics_path: str | Path | None = None,
    device: torch.device | str | None = None,
    hooks: Sequence[Any] = (),
    sinks: Sequence[Any] = (),
) -> TrainResult:
    """Train ``objective`` in place on ``data`` (see the module docstring); resumes from ``state_dir/last.ckpt``.

    ``metrics_path`` defaults to ``state_dir/metrics.jsonl``. Under torchrun/srun every process calls this; each
    takes its slice of every global batch and only rank 0 writes files. The caller exits with
    ``result.exit_code``.

    ``hooks``: objects with ``every`` (steps), ``__call__(step, objective) -> dict[str, float]`` (logged with the
    step) and ``state_dict()`` / ``load_state_dict()`` (kept in the checkpoint), e.g. validation with best-weights
    tracking. Every rank calls them (they must be deterministic); they run after the step, before its checkpoint.

    ``sinks``: objects with ``log(record)`` and ``close()`` (e.g. ``wandb_sink.metrics_sinks(params, state_dir)``);
    rank 0 mirrors every metrics record to them and closes them when the call ends, however it ends.
    """
    log = log or logging.getLogger("pipeline3d.train")
    state_dir = Path(state_dir)
    metrics_path = Path(metrics_path) if metrics_path is not None else state_dir / "metrics.jsonl"
    dist = distributed.setup(torch.device(device) if device is not None else None, log=log)
    try:
        with stop_on_signals(log) as stop:
            return _Run(
                objective,
                data,
                cfg,
                state_dir,
                config_hash,
                log,
                metrics_path,
                dist,
                stop,
                hooks,
                sinks if dist.is_main else (),
            ).run()
    finally:
        for sink in sinks:
            sink.close()
        dist.close()


class _Run:
    """One call of ``train``: set-up, resume, the step loop, checkpoints and logs."""

    def __init__(
        self,
        objective: nn.Module,
        data: EpochSource,
        cfg: TrainConfig,
        state_dir: Path,
        config_hash: str,
        log: logging.Logger,
        metrics_path: Path,
        dist: distributed.Dist,
        stop: StopRequest,
        hooks: Sequence[Any] = (),
        sinks: Sequence[Any] = (),
    ) -> None:
        self.objective, self.data, self.cfg, self.hooks, self.sinks = objective, data, cfg, list(hooks), list(sinks)
        self.state_dir, self.config_hash, self.metrics_path = state_dir, config_hash, metrics_path
        self.dist, self.stop, self.device = dist, stop, dist.device
        self.log = log
        if cfg.batch_size % (dist.world_size * cfg.grad_accum):
            raise ValueError(
                f"batch_size {cfg.batch_size} is not divisible by {dist.world_size} processes x "
                f"grad_accum {cfg.grad_accum}"
            )
        cuda = self.device.type == "cuda"
        self.autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.amp) if cuda else None
        self.scaler = torch.amp.GradScaler("cuda", enabled=cuda and cfg.amp == "fp16")
        self.fingerprint = {"config_hash": config_hash, "train_hash": cfg.fingerprint()}

    def info(self, msg: str, *args: Any) -> None:
        if self.dist.is_main:
            self.log.info(msg, *args)

    # --- set-up and resume ---------------------------------------------------------------------------------------

    def _resume_state(self) -> dict[str, Any] | None:
        """Rank 0 decides (moving a foreign checkpoint aside); the others then load the very same file."""
        state = None
        if self.dist.is_main:
            self.state_dir.mkdir(parents=True, exist_ok=True)
            for tmp in checkpoint.remove_stale_temps(self.state_dir):
                self.log.info("removed %s (a checkpoint write that was killed)", tmp.name)
            stale_extra = [self.metrics_path] if self.metrics_path.exists() else []
            state = checkpoint.find_resumable(self.state_dir, self.fingerprint, self.log, stale_extra)
            # Steps after the checkpoint are redone; their metric lines would be duplicates.
            self.metrics_path.parent.mkdir(parents=True, exist_ok=True)
            metrics.truncate_after(self.metrics_path, state["step"] if state else 0, self.log)
        step = self.dist.gather(state["step"] if state else None)[0]
        if not self.dist.is_main and step is not None:
            state = checkpoint.load(checkpoint.ckpt_path(self.state_dir))
            if state["step"] != step:
                raise RuntimeError(f"rank {self.dist.rank} read a checkpoint at step {state['step']}, rank 0 at {step}")
        return state

    def _restore(self, state: dict[str, Any]) -> None:
        self.objective.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if state["scaler"]:  # empty when the writing run had no scaler (CPU, bf16)
            self.scaler.load_state_dict(state["scaler"])
        saved_world = int(state["world_size"])
        if saved_world != self.dist.world_size and self.dist.is_main:
            self.log.warning(
                "checkpoint was written by %d process(es), now %d: same global batches, but per-rank "
                "RNG streams are reassigned, so results are no longer bit-identical",
                saved_world,
                self.dist.world_size,
            )
        rngstate.restore(state["rng"][self.dist.rank % len(state["rng"])])
        for hook, hook_state in zip(self.hooks, state.get("hooks", [])):
            hook.load_state_dict(hook_state)

    def _log_setup(self, n_params: dict[str, int]) -> None:
        cfg = self.cfg
        self.info(
            "train: %d steps | global batch %d = %d process(es) x %d accumulation x %d | lr %.2e (warm-up %d, "
            "cosine to x%g) | wd %g | clip %s | device %s | precision %s",
            cfg.steps,
            cfg.batch_size,
            self.dist.world_size,
            cfg.grad_accum,
            cfg.batch_size // (self.dist.world_size * cfg.grad_accum),
            cfg.lr,
            cfg.warmup_steps,
            cfg.min_lr_ratio,
            cfg.weight_decay,
            cfg.clip_grad if cfg.clip_grad > 0 else "off",
            self.device,
            {torch.bfloat16: "bf16 autocast", torch.float16: "fp16 autocast + GradScaler"}.get(
                self.autocast_dtype, "fp32"
            ),
        )
        self.info(
            "parameters: %d with weight decay, %d without, %d frozen",
            n_params["decay"],
            n_params["no_decay"],
            n_params["frozen"],
        )

    # --- one optimiser step --------------------------------------------------------------------------------------

    def _step(self, micro_batches, step: int) -> tuple[float, dict[str, float], float, float]:
        cfg = self.cfg
        lr = lr_at(
            step, base_lr=cfg.lr, warmup_steps=cfg.warmup_steps, total_steps=cfg.steps, min_lr_ratio=cfg.min_lr_ratio
        )
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)  # lr_scale: see optim.param_groups
        self.optimizer.zero_grad(set_to_none=True)
        # Sums stay on the device (one host transfer per step, not one per term and micro-batch); float64 on the
        # CPU keeps the logged values exactly as before, float32 on a GPU.
        acc = torch.float64 if self.device.type == "cpu" else torch.float32
        loss_sum, log_sums = torch.zeros((), dtype=acc, device=self.device), {}
        for micro in range(cfg.grad_accum):
            batch = to_device(next(micro_batches), self.device)
            generator = step_generator(cfg.seed, step, self.dist.rank, micro, self.device)
            autocast = (
                torch.autocast(self.device.type, dtype=self.autocast_dtype)
                if self.autocast_dtype
                else contextlib.nullcontext()
            )
            # DDP all-reduces gradients during the last micro-batch's backward only (overlapped with it).
            last = micro == cfg.grad_accum - 1
            with contextlib.nullcontext() if last or not self.dist.enabled else self.model.no_sync():
                with autocast:
                    loss, logs = self.model(batch, step=step, total_steps=cfg.steps, generator=generator)
                self.scaler.scale(loss / cfg.grad_accum).backward()
            loss_sum = loss_sum + loss.detach().to(acc)
            for key, value in logs.items():
                value = torch.as_tensor(value).detach().to(self.device, acc)
                log_sums[key] = log_sums[key] + value if key in log_sums else value
        keys = sorted(log_sums)
        sums = torch.stack([loss_sum, *(log_sums[k].reshape(()) for k in keys)])
        means = self.dist.mean(sums / cfg.grad_accum).tolist()
        loss_mean, logs_mean = means[0], dict(zip(keys, means[1:]))
        if not self.scaler.is_enabled() and not math.isfinite(loss_mean):
            raise FloatingPointError(f"non-finite loss {loss_mean} at step {step}; no checkpoint was written for it")
        self.scaler.unscale_(self.optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(
            self.trainable, cfg.clip_grad if cfg.clip_grad > 0 else math.inf, foreach=True
        )
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.objective.after_step()
        return loss_mean, logs_mean, float(grad_norm), lr

    # --- checkpoints and logs ------------------------------------------------------------------------------------

    def _save(self, step: int, epoch: int, batch_index: int, samples_seen: int, last_loss: float | None) -> None:
        rng_states = self.dist.gather(rngstate.capture())  # collective: every rank's streams, in rank order
        if self.dist.is_main:
            state = {
                "format_version": checkpoint.FORMAT_VERSION,
                **self.fingerprint,
                "world_size": self.dist.world_size,
                "step": step,
                "epoch": epoch,
                "batch_index": batch_index,
                "samples_seen": samples_seen,
                "last_loss": last_loss,
                "model": self.objective.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scaler": self.scaler.state_dict(),
                "rng": rng_states,
                "hooks": [hook.state_dict() for hook in self.hooks],
            }
            checkpoint.save(checkpoint.ckpt_path(self.state_dir), state)
        self.dist.barrier()  # no rank exits (or is killed by torchrun) before the file is in place

    def _log_step(
        self, step: int, epoch: int, loss: float, logs: dict[str, float], grad_norm: float, lr: float, force: bool
    ) -> None:
        """A metrics line + log line every ``log_every`` steps, at least every minute, and when ``force``."""
        self._window.append(loss)
        now = time.monotonic()
        if not (step % self.cfg.log_every == 0 or now - self._window_time >= LOG_SECONDS or force):
            return
        rate = len(self._window) * self.cfg.batch_size / max(now - self._window_time, 1e-9)
        record = {
            "step": step,
            "epoch": epoch,
            "loss": loss,
            "loss_avg": sum(self._window) / len(self._window),
            "lr": lr,
            "grad_norm": grad_norm,
            "samples_per_s": rate,
        }
        record.update({(k if k not in record else f"objective/{k}"): v for k, v in logs.items()})
        self._window, self._window_time = [], now
        if not self.dist.is_main:
            return
        metrics.append(self.metrics_path, record)
        for sink in self.sinks:
            sink.log(record)
        extra = " | ".join(f"{k} {v:.4g}" for k, v in logs.items())
        eta = (self.cfg.steps - step) * self.cfg.batch_size / max(rate, 1e-9)
        self.log.info(
            "step %d/%d | epoch %d | loss %.4f | lr %.2e | grad_norm %.3g | %.1f samples/s | eta %s%s",
            step,
            self.cfg.steps,
            epoch,
            loss,
            lr,
            grad_norm,
            rate,
            _duration(eta),
            f" | {extra}" if extra else "",
        )

    def _loader(self, dataset: Dataset, epoch: int, n_batches: int, start_batch: int) -> DataLoader:
        """This rank's micro-batches of global batches ``start_batch..`` of the epoch, in order."""
        cfg, dist = self.cfg, self.dist
        sampler = MicroBatchSampler(
            n_batches=n_batches,
            batch_size=cfg.batch_size,
            start_batch=start_batch,
            rank=dist.rank,
            world_size=dist.world_size,
            grad_accum=cfg.grad_accum,
        )
        return DataLoader(
            dataset,
            batch_sampler=sampler,
            collate_fn=self.data.collate,
            num_workers=cfg.num_workers,
            persistent_workers=False,
            pin_memory=self.device.type == "cuda",
            generator=loader_generator(cfg.seed, epoch, dist.rank),
        )

    # --- main ----------------------------------------------------------------------------------------------------

    def run(self) -> TrainResult:
        cfg, dist = self.cfg, self.dist
        state = self._resume_state()
        self.objective.to(self.device)
        self.optimizer = build_optimizer(self.objective, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=cfg.betas)
        self.trainable = [p for group in self.optimizer.param_groups for p in group["params"]]
        n_train = sum(p.numel() for p in self.trainable)
        n_decay = sum(p.numel() for g in self.optimizer.param_groups if g["weight_decay"] > 0 for p in g["params"])
        n_all = sum(p.numel() for p in self.objective.parameters())
        self._log_setup({"decay": n_decay, "no_decay": n_train - n_decay, "frozen": n_all - n_train})
        if state is None:
            step, epoch, batch_index, samples_seen, last_loss, resumed_from = 0, 0, 0, 0, None, None
        else:
            self._restore(state)
            step, epoch, batch_index = int(state["step"]), int(state["epoch"]), int(state["batch_index"])
            samples_seen, last_loss, resumed_from = int(state["samples_seen"]), state["last_loss"], step
            self.info("resuming from step %d (epoch %d, batch %d)", step, epoch, batch_index)
        start_step = step
        if step >= cfg.steps:
            self.info("already finished: checkpoint at step %d of %d", step, cfg.steps)
            return TrainResult(step, 0, last_loss, resumed_from, False, dist.is_main)
        # After the restore: DDP starts every rank from rank 0's parameters and buffers.
        self.model = distributed.data_parallel(self.objective, dist)

        self.objective.train()
        interrupted = False
        self._window, self._window_time = [], time.monotonic()
        while step < cfg.steps and not interrupted:
            dataset = self.data.make_epoch(epoch)
            n_batches = len(dataset) // cfg.batch_size
            if n_batches == 0:
                raise ValueError(
                    f"epoch {epoch} has {len(dataset)} samples, fewer than one global batch ({cfg.batch_size})"
                )
            if batch_index >= n_batches:  # an epoch shorter than the checkpoint's position
                epoch, batch_index = epoch + 1, 0
                continue
            micro_batches = iter(self._loader(dataset, epoch, n_batches, batch_index))
            for _ in range(batch_index, n_batches):
                loss, logs, grad_norm, lr = self._step(micro_batches, step)
                step, batch_index, last_loss = step + 1, batch_index + 1, loss
                samples_seen += cfg.batch_size
                interrupted = dist.any(self.stop.requested)
                hooked = False
                for hook in self.hooks:
                    if step % hook.every == 0 or step == cfg.steps:
                        logs = {**logs, **hook(step, self.objective)}
                        self.objective.train()
                        hooked = True
                # A step with hook results is always logged (they would be lost between log_every lines).
                self._log_step(step, epoch, loss, logs, grad_norm, lr, force=interrupted or step == cfg.steps or hooked)
                if batch_index == n_batches:  # the saved position always names the next batch to run
                    epoch, batch_index = epoch + 1, 0
                if step % cfg.checkpoint_every == 0 or step == cfg.steps or interrupted:
                    self._save(step, epoch, batch_index, samples_seen, last_loss)
                if interrupted or step >= cfg.steps:
                    break
            del micro_batches  # shuts the DataLoader workers down before the next epoch starts
        if interrupted:
            self.info(
                "stopping at step %d on %s: checkpoint written to %s; rerun to resume",
                step,
                self.stop.signal_name or "a signal on another rank",
                checkpoint.ckpt_path(self.state_dir),
            )
        else:
            self.info("finished %d steps (%d in this run) | final loss %.4f", step, step - start_step, last_loss)
        return TrainResult(step, step - start_step, last_loss, resumed_from, interrupted, dist.is_main)


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"
