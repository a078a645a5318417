"""pipeline3d: a Snakemake-orchestrated data and training pipeline for 3D representation learning.

The library face for using the results outside the workflow (``pipeline3d.pretrained``): ``load_encoder``,
``load_metric_head``, ``load_retrieval_head``, ``load_alignment``, ``load_promptsg``, ``save_pretrained``,
``from_pretrained``.
"""

__version__ = "0.1.0"

# Resolved on first use (PEP 562): the Snakefile imports pipeline3d at parse time, and that must not pull torch in.
_PRETRAINED = (
    "load_encoder",
    "load_metric_head",
    "load_retrieval_head",
    "load_alignment",
    "load_promptsg",
    "save_pretrained",
    "from_pretrained",
)

__all__ = ["__version__", *_PRETRAINED]


def __getattr__(name: str):
    if name not in _PRETRAINED:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from . import pretrained

    return getattr(pretrained, name)


def __dir__() -> list[str]:
    return sorted({*globals(), *_PRETRAINED})
