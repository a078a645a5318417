"""Capture and restore the process-global random states (python, numpy, torch CPU, CUDA).

The training loop itself draws from per-step generators seeded from (seed, step), but code it calls (an objective's
``nn.Dropout``, a library helper using ``random``) may touch the global streams. Saving them makes a resumed run
continue exactly where the interrupted one stopped. Everything is stored as tensors and plain Python values so a
checkpoint loads with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch


def capture() -> dict[str, Any]:
    """The current global RNG states of this process."""
    py_version, py_words, py_gauss = random.getstate()
    np_state = np.random.get_state(legacy=False)
    if np_state["bit_generator"] != "MT19937":
        raise RuntimeError(f"unexpected numpy global bit generator {np_state['bit_generator']!r}")
    state: dict[str, Any] = {
        "python": {"version": int(py_version), "words": torch.tensor(py_words, dtype=torch.int64), "gauss": py_gauss},
        "numpy": {
            "key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
            "pos": int(np_state["state"]["pos"]),
            "has_gauss": int(np_state["has_gauss"]),
            "gauss": float(np_state["gauss"]),
        },
        "torch": torch.get_rng_state(),
        # Only the current device: each rank drives one GPU, and a resumed job may see a different device count.
        "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() else None,
    }
    return state


def restore(state: dict[str, Any]) -> None:
    """Set the global RNG states from a ``capture()`` result (the CUDA state only when a GPU is present)."""
    py = state["python"]
    random.setstate((py["version"], tuple(int(w) for w in py["words"].tolist()), py["gauss"]))
    npy = state["numpy"]
    np.random.set_state(("MT19937", npy["key"].numpy().astype(np.uint32), npy["pos"], npy["has_gauss"], npy["gauss"]))
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
