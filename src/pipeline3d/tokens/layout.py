"""The token layout: 15 feature slots, type ids and a fixed-segment position layout.

Feature slots (the reference's, so checkpoints and analyses line up):

=======  =============================================================
slots    content
=======  =============================================================
0:3      xyz: a point's position, or a ray's hit point (o + t·d)·hit
3:6      ray origin
6:9      ray direction (unit)
9        ray depth t (0 on a miss)
10       point distance (unsigned; what it measures depends on the backend)
11       ray hit flag (0/1)
12:15    ray normal · hit
=======  =============================================================

Token contents per type: POINT = xyz + distance; RAY = x_hit, o, d, t, hit, n; Q_POINT = xyz only; A_POINT =
distance only (xyz zeroed, so the answer does not repeat the query); Q_RAY = o, d; A_RAY = x_hit, t, hit, n.
BOS, EOS (and PAD) are zero vectors identified by their type.

Positions come from a FIXED segment layout, so a token's position never depends on how many tokens another segment
holds (the reference's EOS moved between pretraining with rays and fine-tuning without): BOS = 0, the j-th token of
the point segment = 1 + j, the j-th token of the ray segment = 1 + P + j, EOS = 1 + P + R, where P and R are the
maximum segment lengths of the config (n_point / n_ray, doubled with Q/A tokens). PAD tokens get position 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

FEAT_DIM = 15
XYZ = slice(0, 3)
RAY_ORIGIN = slice(3, 6)
RAY_DIR = slice(6, 9)
RAY_T = 9
DIST = 10
RAY_HIT = 11
RAY_NORMAL = slice(12, 15)

BOS, POINT, RAY, MISSING_RAY, EOS, Q_POINT, A_POINT, Q_RAY, A_RAY, PAD = range(10)
N_TYPES = 10  # MISSING_RAY is reserved (never emitted: absent rays are simply not tokens); PAD only from collate
TYPE_NAMES = ("BOS", "POINT", "RAY", "MISSING_RAY", "EOS", "Q_POINT", "A_POINT", "Q_RAY", "A_RAY", "PAD")
QUERY_TYPES = (POINT, RAY, Q_POINT, Q_RAY)  # tokens that carry a query position/ray (answer-free content)
ANSWER_TYPES = (A_POINT, A_RAY)


@dataclass(frozen=True)
class TokenConfig:
    """The ``tokens`` config section: counts per sample, Q/A mode, EOS, ray dropout (train only), eval seed."""

    n_point: int
    n_ray: int
    qa_tokens: bool = False
    add_eos: bool = True
    drop_ray_prob: float = 0.0
    eval_seed: int = 0
    # Capacities that fix the position layout (default: n_point / n_ray). Fine-tuning samples fewer tokens than
    # pretraining (e.g. no rays) but keeps the pretrained layout, so EOS and every token keep their positions.
    layout_n_point: int | None = None
    layout_n_ray: int | None = None

    def __post_init__(self) -> None:
        if self.n_point < 0 or self.n_ray < 0:
            raise ValueError(f"tokens: n_point and n_ray must be >= 0 (got {self.n_point}, {self.n_ray})")
        for name, n, cap in (("n_point", self.n_point, self.layout_n_point), ("n_ray", self.n_ray, self.layout_n_ray)):
            if cap is not None and cap < n:
                raise ValueError(f"tokens.{name} = {n} does not fit the layout's capacity {cap}")
        if not 0.0 <= self.drop_ray_prob <= 1.0:
            raise ValueError(f"tokens.drop_ray_prob must be in [0, 1] (got {self.drop_ray_prob})")

    @classmethod
    def of(cls, cfg: "TokenConfig | Mapping[str, Any]") -> "TokenConfig":
        """A TokenConfig from itself or from the config dict (keys beyond the tokenizer's are ignored)."""
        if isinstance(cfg, TokenConfig):
            return cfg
        missing = [k for k in ("n_point", "n_ray") if k not in cfg]
        if missing:
            raise ValueError(f"tokens config lacks {missing}")
        return cls(
            n_point=int(cfg["n_point"]),
            n_ray=int(cfg["n_ray"]),
            qa_tokens=bool(cfg.get("qa_tokens", False)),
            add_eos=bool(cfg.get("add_eos", True)),
            drop_ray_prob=float(cfg.get("drop_ray_prob", 0.0)),
            eval_seed=int(cfg.get("eval_seed", 0)),
            layout_n_point=None if cfg.get("layout_n_point") is None else int(cfg["layout_n_point"]),
            layout_n_ray=None if cfg.get("layout_n_ray") is None else int(cfg["layout_n_ray"]),
        )

    @property
    def tokens_per_point(self) -> int:
        return 2 if self.qa_tokens else 1

    @property
    def point_segment(self) -> int:
        """P: the most tokens the point segment can hold."""
        return self.tokens_per_point * (self.n_point if self.layout_n_point is None else self.layout_n_point)

    @property
    def ray_segment(self) -> int:
        """R: the most tokens the ray segment can hold."""
        return self.tokens_per_point * (self.n_ray if self.layout_n_ray is None else self.layout_n_ray)


def n_positions(tok_cfg: "TokenConfig | Mapping[str, Any]") -> int:
    """Size of the position table: BOS + P + R + EOS."""
    cfg = TokenConfig.of(tok_cfg)
    return 2 + cfg.point_segment + cfg.ray_segment


def max_tokens(tok_cfg: "TokenConfig | Mapping[str, Any]") -> int:
    """The longest sequence one sample can have (rays present, EOS if enabled)."""
    cfg = TokenConfig.of(tok_cfg)
    return 1 + cfg.tokens_per_point * (cfg.n_point + cfg.n_ray) + int(cfg.add_eos)


def eos_position(tok_cfg: "TokenConfig | Mapping[str, Any]") -> int:
    cfg = TokenConfig.of(tok_cfg)
    return 1 + cfg.point_segment + cfg.ray_segment
