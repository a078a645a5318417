"""AdamW with weight decay only where it means something.

Decay shrinks weights towards zero. That regularises the matrices of linear/conv layers, but on biases, norm gains
and embedding tables it only fights the model (the reference decays everything, spec §10.15).
"""

from __future__ import annotations

import torch
from torch import nn

_NO_DECAY_MODULES = (
    nn.Embedding,
    nn.EmbeddingBag,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.RMSNorm,
    nn.modules.batchnorm._NormBase,
)
# Free-standing parameters (not inside a Linear/Conv) with these words in the name are tables or learned tokens.
_NO_DECAY_WORDS = ("embed", "token", "pos", "norm")


def decays(module: nn.Module, param_name: str, param: nn.Parameter) -> bool:
    """Whether ``param`` (a direct parameter of ``module`` called ``param_name``) gets weight decay."""
    if param.ndim < 2 or isinstance(module, _NO_DECAY_MODULES):
        return False
    if isinstance(module, (nn.Linear, nn.modules.conv._ConvNd, nn.MultiheadAttention)):
        return True
    return not any(word in param_name.lower() for word in _NO_DECAY_WORDS)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two AdamW groups (decay / no decay) over the trainable parameters; frozen ones (an EMA teacher) are left out.

    Each group records the parameter names (``names``) so the split can be checked and logged. A model with an
    ``lr_scale(parameter_name) -> float`` method gets one group per (decay, scale) pair, each with ``lr_scale``
    (the loop multiplies the scheduled learning rate by it), e.g. a fresh head learning faster than a pretrained tower.
    """
    lr_scale = getattr(model, "lr_scale", None)
    seen: set[int] = set()
    members: dict[tuple[bool, float], list[tuple[str, nn.Parameter]]] = {}
    for module_name, module in model.named_modules():
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad or id(param) in seen:
                continue  # frozen, or a tied parameter already placed
            seen.add(id(param))
            full = f"{module_name}.{name}" if module_name else name
            scale = float(lr_scale(full)) if callable(lr_scale) else 1.0
            members.setdefault((decays(module, name, param), scale), []).append((full, param))
    groups = []
    for decay, scale in sorted(members, key=lambda key: (not key[0], key[1])):
        names, params = zip(*members[(decay, scale)])
        group = {"params": list(params), "weight_decay": weight_decay if decay else 0.0, "names": list(names)}
        if scale != 1.0:
            group["lr_scale"] = scale
        groups.append(group)
    return groups


def build_optimizer(
    model: nn.Module, *, lr: float, weight_decay: float, betas: tuple[float, float], eps: float = 1e-8
) -> torch.optim.AdamW:
    groups = param_groups(model, weight_decay)
    if not groups:
        raise ValueError("the model has no trainable parameters")
    # foreach (not fused): the same kernels on CPU and GPU, and bit-reproducible on CPU.
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, foreach=True)
