"""Encoders (a timm-style registry) and the small heads the objectives share.

Importing this package registers every encoder: ``create_encoder("query_nepa_tiny", n_positions=...)``.
"""

from pipeline3d.models.heads import ClassificationHead, MLPHead
from pipeline3d.models.point_patch import PointPatch
from pipeline3d.models.query_nepa import EncoderOutput, QueryNepa, attention_mask
from pipeline3d.models.registry import create_encoder, encoder_from_config, is_encoder, list_encoders, register_encoder

__all__ = [
    "ClassificationHead",
    "EncoderOutput",
    "MLPHead",
    "PointPatch",
    "QueryNepa",
    "attention_mask",
    "create_encoder",
    "encoder_from_config",
    "is_encoder",
    "list_encoders",
    "register_encoder",
]
