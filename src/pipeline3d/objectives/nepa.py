"""NEPA: predict the next token's embedding (nepa3d-spec §5), with the target fix of §10.8.

Loss = mean over scored targets of 1 - cos(pred_head(h_i), stop_grad(target_{i+1})).
- ``target: content`` (default): the target is the content-only embedding MLP(feat) + type, without the
  position embedding, which is predictable without looking at any content (§10.8). ``full`` = the reference
  (the detached input embedding z, position included).
- Scored targets: never PAD, BOS or MISSING_RAY. A sample holding answer tokens (Q/A mode) scores only its
  answers (A_POINT/A_RAY) when ``qa_answers_only``; a legacy sample scores POINT, RAY and EOS.
  Decided per sample (the reference decides per batch; identical for homogeneous batches).
- Dual mask (training only): extra past edges blocked per sample, probabilities ramped over the warm-up.
"""

from __future__ import annotations

import torch
from torch import nn

from pipeline3d.models.token_types import ANSWERS, BOS, MISSING_RAY, PAD, is_any
from pipeline3d.objectives.base import Logs, Objective
from pipeline3d.objectives.losses import coherence, cosine_loss
from pipeline3d.objectives.masks import dual_mask_probs, sample_dual_mask

TARGETS = ("content", "full")


def nepa_target_mask(type_id: torch.Tensor, valid: torch.Tensor, *, qa_answers_only: bool) -> torch.Tensor:
    """(B, T) bool: which tokens are scored as next-token targets (see the module docstring)."""
    valid = valid.to(torch.bool)
    keep = valid & ~is_any(type_id, (PAD, BOS, MISSING_RAY))
    if qa_answers_only:
        answers = is_any(type_id, ANSWERS) & valid
        qa_sample = answers.any(dim=1, keepdim=True)
        keep = torch.where(qa_sample, answers, keep)
    return keep


class NepaObjective(Objective):
    """Next-embedding prediction on a causal encoder.

    Args:
        encoder: a QueryNepa-like encoder.
        qa_answers_only: in Q/A samples score only answer tokens.
        target: "content" (default, position-free) or "full" (the reference's detached input embedding).
        dual_mask_near / dual_mask_far: probabilities of blocking a past edge within / beyond the window.
        dual_mask_window: near/far boundary in tokens.
        dual_mask_warmup_frac: fraction of total steps over which the probabilities ramp from 0.
        dual_mask_type_aware: only block edges between query-like tokens.
        next_position: add the next token's position embedding to the prediction head's input, so it predicts
            *what* is at a known place (PointGPT's idea; patch tokens, whose positions are centres). None = on for
            encoders with a ``position_embedding`` (point patches), off for query tokens (their answer tokens
            already follow their query).
    """

    def __init__(
        self,
        encoder: nn.Module,
        *,
        qa_answers_only: bool = True,
        target: str = "content",
        dual_mask_near: float = 0.0,
        dual_mask_far: float = 0.0,
        dual_mask_window: int = 32,
        dual_mask_warmup_frac: float = 0.05,
        dual_mask_type_aware: bool = False,
        next_position: bool | None = None,
    ) -> None:
        super().__init__()
        if target not in TARGETS:
            raise ValueError(f"nepa target must be one of {TARGETS}, got {target!r}")
        dual_mask_probs(0, 1, near=dual_mask_near, far=dual_mask_far, warmup_frac=0.0)  # validates the range
        self.encoder = encoder
        self.pred_head = nn.Linear(encoder.d_model, encoder.d_model)
        self.qa_answers_only, self.target = qa_answers_only, target
        self.near, self.far, self.window = dual_mask_near, dual_mask_far, dual_mask_window
        self.warmup_frac, self.type_aware = dual_mask_warmup_frac, dual_mask_type_aware
        has_positions = hasattr(encoder, "position_embedding")
        self.next_position = has_positions if next_position is None else bool(next_position)
        if self.next_position and not has_positions:
            raise ValueError("nepa next_position needs an encoder with position_embedding (point patches)")

    def forward(
        self, batch: dict[str, torch.Tensor], *, step: int, total_steps: int, generator: torch.Generator
    ) -> tuple[torch.Tensor, Logs]:
        feat, type_id, pos, valid = batch["feat"], batch["type_id"], batch["pos"], batch["valid"]
        p_near, p_far = dual_mask_probs(step, total_steps, near=self.near, far=self.far, warmup_frac=self.warmup_frac)
        extra = None
        if self.training:
            extra = sample_dual_mask(
                type_id,
                valid,
                p_near=p_near,
                p_far=p_far,
                window=self.window,
                type_aware=self.type_aware,
                generator=generator,
            )
        out = self.encoder(feat, type_id, pos, valid, causal=True, extra_block=extra)
        hidden = out.h[:, :-1]
        if self.next_position:
            hidden = hidden + self.encoder.position_embedding(feat, type_id)[:, 1:]
        pred = self.pred_head(hidden)
        with torch.no_grad():
            if self.target == "content":
                target = self.encoder.embed(feat, type_id, pos, content_only=True)[:, 1:]
            else:
                target = out.z.detach()[:, 1:]
        keep = nepa_target_mask(type_id, valid, qa_answers_only=self.qa_answers_only)[:, 1:]
        loss = cosine_loss(pred, target, keep)
        logs = {"nepa_loss": loss.detach(), "n_targets": keep.sum(), "target_coherence": coherence(target[keep])}
        if extra is not None:
            logs.update(p_near=p_near, p_far=p_far, blocked_frac=extra.float().mean())
        return loss, logs
