"""Names the workflow and the package share, defined once: the rule files import them from here.

Kept free of imports (the Snakefile reads it on every parse).
"""

from __future__ import annotations

# One make_splits job (and one parquet) per family, in this order.
SPLIT_FAMILIES = ("ttv", "kfold", "unpaired", "fewshot", "qg", "episodes")
# The unpaired train buckets (each a physically separate store of one primitive), and every unpaired split.
UNPAIRED_BUCKETS = ("train_mesh", "train_pc", "train_udf")
UNPAIRED_SPLITS = (*UNPAIRED_BUCKETS, "eval")
# unpaired split -> the cache primitive its records may see (a key of io.cache_schema.PRIMITIVE_ARRAYS)
SPLIT_PRIMITIVE = {"train_mesh": "mesh", "train_pc": "pc", "train_udf": "udf", "eval": "all"}
# Token backends (pipeline3d.tokens.backends registers one class per name).
BACKENDS = ("mesh", "pointcloud", "pointcloud_noray", "udfgrid", "voxel")
# The embed.image keys that build the image backbone (embed.backbones.configured_image_backbone reads exactly these;
# batching and dataset lists are not among them): a PromptSG image job's params hold these only.
IMAGE_BACKBONE_KEYS = ("model", "weights", "random_init", "img_size", "model_kwargs")
