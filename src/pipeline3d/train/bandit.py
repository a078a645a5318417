"""UCB1 bandit over named arms (e.g. the difficulty bands a triplet's negative is drawn from).

Each step the caller asks ``select()`` for an arm, trains on it, and reports a reward with ``update(arm, reward)``
(e.g. the fraction of triplets violating the margin: a band that still produces violations still teaches).
Rewards are mapped from ``reward_range`` onto [0, 1] (clipped), the range UCB1's confidence bound assumes.

Index of arm i: ``mean_i + exploration * sqrt(2 ln n / n_i)``; every arm is played once first, in the order given,
and ties go to the earlier arm, so the choice is a pure function of the state (no randomness, resumes exactly).
``discount < 1`` gives discounted UCB: past pulls fade geometrically, so the bandit follows rewards that drift as
the model learns (the hard band becomes informative only later); ``discount = 1`` is classic UCB1.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Sequence

LOG = logging.getLogger(__name__)

STATE_FORMAT = 1


class UCB1Bandit:
    def __init__(
        self,
        arms: Sequence[str],
        *,
        exploration: float = 1.0,
        reward_range: tuple[float, float] = (0.0, 1.0),
        discount: float = 1.0,
    ):
        arms = [str(arm) for arm in arms]
        if not arms or len(set(arms)) != len(arms):
            raise ValueError(f"bandit arms must be a non-empty list of distinct names, got {arms}")
        lo, hi = (float(v) for v in reward_range)
        if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
            raise ValueError(f"bandit reward_range must be finite with low < high, got {reward_range}")
        if not (exploration >= 0 and math.isfinite(exploration)):
            raise ValueError(f"bandit exploration must be finite and >= 0, got {exploration}")
        if not 0.0 < discount <= 1.0:
            raise ValueError(f"bandit discount must lie in (0, 1], got {discount}")
        self.arms = arms
        self.exploration, self.reward_range, self.discount = float(exploration), (lo, hi), float(discount)
        self.weights = [0.0] * len(arms)  # (discounted) number of pulls per arm
        self.sums = [0.0] * len(arms)  # (discounted) sum of normalised rewards per arm
        self.pulls = [0] * len(arms)  # plain pull counts, for logs and reports
        self.steps = 0

    def select(self) -> str:
        """The arm to play next (does not change the state)."""
        for i, n in enumerate(self.pulls):
            if n == 0:
                return self.arms[i]
        return self.arms[max(range(len(self.arms)), key=lambda i: (self.index(i), -i))]

    def index(self, i: int) -> float:
        """Upper confidence bound of arm ``i`` (inf for an arm never played)."""
        if self.weights[i] <= 0.0:
            return math.inf
        total = sum(self.weights)
        bonus = math.sqrt(2.0 * math.log(max(total, 1.0)) / self.weights[i])
        return self.sums[i] / self.weights[i] + self.exploration * bonus

    def update(self, arm: str, reward: float) -> None:
        """Record the reward obtained by playing ``arm``."""
        if arm not in self.arms:
            raise ValueError(f"unknown bandit arm {arm!r}; arms are {self.arms}")
        reward = float(reward)
        if not math.isfinite(reward):
            raise ValueError(f"bandit reward for arm {arm!r} must be finite, got {reward}")
        lo, hi = self.reward_range
        scaled = min(max((reward - lo) / (hi - lo), 0.0), 1.0)
        i = self.arms.index(arm)
        if self.discount < 1.0:
            self.weights = [w * self.discount for w in self.weights]
            self.sums = [s * self.discount for s in self.sums]
        self.weights[i] += 1.0
        self.sums[i] += scaled
        self.pulls[i] += 1
        self.steps += 1

    def means(self) -> dict[str, float]:
        """(Discounted) mean normalised reward per arm; NaN for an arm never played."""
        return {arm: (s / w if w > 0 else math.nan) for arm, s, w in zip(self.arms, self.sums, self.weights)}

    def summary(self) -> str:
        return ", ".join(f"{arm}: {n} pulls, mean {m:.3f}" for (arm, m), n in zip(self.means().items(), self.pulls))

    def state_dict(self) -> dict[str, Any]:
        """Plain values only (loads with ``torch.load(weights_only=True)``)."""
        return {
            "format": STATE_FORMAT,
            "arms": list(self.arms),
            "exploration": self.exploration,
            "reward_range": list(self.reward_range),
            "discount": self.discount,
            "weights": list(self.weights),
            "sums": list(self.sums),
            "pulls": list(self.pulls),
            "steps": self.steps,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a ``state_dict``; refuses one made for other arms or other settings."""
        if state.get("format") != STATE_FORMAT:
            raise ValueError(f"bandit state of format {state.get('format')!r}, expected {STATE_FORMAT}")
        mine = {
            "arms": self.arms,
            "exploration": self.exploration,
            "reward_range": list(self.reward_range),
            "discount": self.discount,
        }
        theirs = {key: state.get(key) for key in mine}
        if theirs != mine:
            raise ValueError(f"bandit state was saved with {theirs}, this bandit has {mine}")
        n = len(self.arms)
        if any(len(state[key]) != n for key in ("weights", "sums", "pulls")):
            raise ValueError(f"bandit state arrays must have one entry per arm ({n})")
        self.weights = [float(v) for v in state["weights"]]
        self.sums = [float(v) for v in state["sums"]]
        self.pulls = [int(v) for v in state["pulls"]]
        self.steps = int(state["steps"])
