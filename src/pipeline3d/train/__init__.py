"""Training: the generic resumable loop and what it is made of.

    schedule.py     lr_at: warm-up + cosine as a pure function of the step
    optim.py        AdamW with decay only on weight matrices
    batches.py      micro-batch sampler (strided rank slices of each global batch), per-step generators
    rngstate.py     capture/restore of python, numpy, torch and CUDA RNG states
    checkpoint.py   last.ckpt: atomic save, weights_only load, resume or move aside on a config change
    signals.py      SIGTERM/SIGUSR1 -> checkpoint and exit 75
    distributed.py  torchrun / srun detection, gloo or NCCL process group, gradient averaging
    metrics.py      metrics.jsonl appends
    loop.py         TrainConfig, train() -> TrainResult
    export.py       encoder -> safetensors + JSON, and back
"""

from .export import load_encoder, save_encoder
from .loop import EpochData, EpochSource, TrainConfig, TrainResult, train
from .schedule import lr_at
from .signals import EXIT_INTERRUPTED

__all__ = ["EXIT_INTERRUPTED", "EpochData", "EpochSource", "TrainConfig", "TrainResult", "load_encoder", "lr_at",
           "save_encoder", "train"]
