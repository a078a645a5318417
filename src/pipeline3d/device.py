"""Where a job's model work runs: the one device policy of every stage that declares ``gpu=1``.

A stage builds its model on the CPU (so a random init is the same on every machine), moves it to ``job_device()``
and hands it the data; the functions that run a model send their inputs to ``model_device(model)`` and bring
results back with ``to_host`` before any numpy. float64 work (certified distances, sums of draws) happens on the
CPU, never on the GPU.

``PIPELINE3D_DEVICE`` overrides the choice (``cpu``, ``cuda:1``, or ``meta`` in the tests: a model on ``meta``
meeting an input left on the CPU raises "not on the expected device", and the first ``to_host`` raises "Cannot
copy out of meta tensor", so a CPU-only machine can check that every input reaches the model's device).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch

DEVICE_ENV = "PIPELINE3D_DEVICE"


def job_device(local_rank: int = 0) -> torch.device:
    """This process's device: ``$PIPELINE3D_DEVICE``, else a GPU when CUDA is available, else the CPU.

    The GPU is ``local_rank`` modulo the visible devices: under ``torchrun`` every process sees all GPUs of the
    node (local rank i -> cuda:i); under ``srun --gpus-per-task=1`` (or SLURM's per-task binding) each process
    sees one, which is then ``cuda:0`` whatever its local rank.
    """
    forced = os.environ.get(DEVICE_ENV, "").strip()
    if forced:
        return torch.device(forced)
    if torch.cuda.is_available():
        # TF32 matmuls and convolutions: the precision the training already accepts under bf16 autocast.
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    return torch.device("cpu")


def model_device(model: torch.nn.Module) -> torch.device:
    """The device of a module's first parameter (or buffer); the CPU for a module without either."""
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return torch.device("cpu")


def to_device(obj: Any, device: torch.device) -> Any:
    """Tensors anywhere in a (nested) dict / list / tuple moved to ``device``; everything else as it is."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device, non_blocking=True)
    if isinstance(obj, dict):
        return {k: to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_device(v, device) for v in obj)
    return obj


def to_host(tensor: torch.Tensor, dtype: Any = np.float32) -> np.ndarray:
    """A tensor's values as a numpy array on the CPU (bf16/fp16 widened to float32 first; float64 made here)."""
    out = tensor.detach()
    if out.dtype in (torch.bfloat16, torch.float16):
        out = out.float()
    return out.cpu().numpy().astype(dtype, copy=False)
