"""A timm-style encoder registry: ``@register_encoder(name)`` fills a table, ``create_encoder`` is the one way to build.

Every encoder built here carries ``encoder.config``: a plain dict with ``name`` plus every constructor argument,
so ``encoder_from_config(encoder.config)`` rebuilds the same architecture (this is what export writes as JSON).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from typing import Any

from torch import nn

EncoderFactory = Callable[..., nn.Module]

_ENCODERS: dict[str, EncoderFactory] = {}


def register_encoder(name: str) -> Callable[[EncoderFactory], EncoderFactory]:
    """Decorator registering ``factory(**kwargs) -> nn.Module`` under ``name``.

    Args:
        name: registry key; registering the same name twice is an error (it would silently shadow a model).
    """

    def decorator(factory: EncoderFactory) -> EncoderFactory:
        if name in _ENCODERS:
            raise ValueError(f"encoder {name!r} is already registered (by {_ENCODERS[name].__module__})")
        _ENCODERS[name] = factory
        return factory

    return decorator


def register_family(name: str, cls: EncoderFactory, sizes: dict[str, dict[str, Any]]) -> None:
    """Register ``cls`` under ``name`` (explicit sizes) and once per named size (its defaults, overridable)."""
    register_encoder(name)(cls)
    for size_name, size in sizes.items():
        register_encoder(size_name)(lambda size=size, **kwargs: cls(**{**size, **kwargs}))


def list_encoders(pattern: str = "*") -> list[str]:
    """Registered encoder names matching a shell-style pattern, sorted."""
    return sorted(n for n in _ENCODERS if fnmatch.fnmatchcase(n, pattern))


def is_encoder(name: str) -> bool:
    return name in _ENCODERS


def create_encoder(name: str, **overrides: Any) -> nn.Module:
    """Build a registered encoder.

    Args:
        name: a name from ``list_encoders()``.
        **overrides: constructor arguments replacing the registered size's defaults (e.g. ``n_positions``).

    Returns:
        The encoder, with ``encoder.config = {"name": name, **all constructor arguments}``.
    """
    if name not in _ENCODERS:
        raise KeyError(f"unknown encoder {name!r}; registered encoders: {', '.join(list_encoders()) or '(none)'}")
    try:
        encoder = _ENCODERS[name](**overrides)
    except TypeError as err:  # an unknown keyword: say which encoder refused it
        raise TypeError(f"encoder {name!r}: {err}") from err
    config = dict(getattr(encoder, "config", {}))
    config["name"] = name
    encoder.config = config
    return encoder


def encoder_from_config(config: dict[str, Any]) -> nn.Module:
    """Rebuild an encoder from its ``encoder.config`` dict (as saved next to exported weights)."""
    if "name" not in config:
        raise KeyError(f"encoder config has no 'name' key: {sorted(config)}")
    kwargs = {k: v for k, v in config.items() if k != "name"}
    return create_encoder(config["name"], **kwargs)
