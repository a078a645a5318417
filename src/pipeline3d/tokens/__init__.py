"""Tokens: cached shapes -> token batches (layout, ordering, backends, tokenizer, dataset, mixed corpora, collate).

See ``layout`` for the feature slots, type ids and the fixed-segment position layout, ``backends`` for what each
primitive may see, ``dataset`` for the draw keys and ``corpus`` for mixed-corpus epochs.
"""

from .backends import BACKENDS, Backend, get_backend
from .collate import collate
from .corpus import EpochView, MixedCorpus
from .dataset import CacheEntry, ShapeTokenDataset, resolve_entries
from .layout import FEAT_DIM, N_TYPES, TokenConfig, n_positions
from .tokenizer import tokenize

__all__ = [
    "BACKENDS",
    "Backend",
    "CacheEntry",
    "EpochView",
    "FEAT_DIM",
    "MixedCorpus",
    "N_TYPES",
    "ShapeTokenDataset",
    "TokenConfig",
    "collate",
    "get_backend",
    "n_positions",
    "resolve_entries",
    "tokenize",
]
