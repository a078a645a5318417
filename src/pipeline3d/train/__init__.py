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

# Resolved on first use (PEP 562): the workflow imports the torch-free submodule logging_env at parse time, and
# importing the package must not pull torch in with it.
_EXPORTS = {
    "load_encoder": "export",
    "save_encoder": "export",
    "EpochData": "loop",
    "EpochSource": "loop",
    "TrainConfig": "loop",
    "TrainResult": "loop",
    "train": "loop",
    "lr_at": "schedule",
    "EXIT_INTERRUPTED": "signals",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
