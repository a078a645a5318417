"""UCB1 band bandit: learns the best arm, follows drifting rewards when discounted, resumes exactly."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline3d.rng import rng_for
from pipeline3d.train.bandit import UCB1Bandit

ARMS = ["hard", "medium", "easy"]


def _play(bandit: UCB1Bandit, probs: dict[str, float], steps: int, rng: np.random.Generator) -> list[str]:
    """Bernoulli rewards with the given success probability per arm."""
    chosen = []
    for _ in range(steps):
        arm = bandit.select()
        bandit.update(arm, float(rng.random() < probs[arm]))
        chosen.append(arm)
    return chosen


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_prefers_the_arm_with_the_largest_expected_reward(seed):
    probs = {"hard": 0.7, "medium": 0.5, "easy": 0.3}
    bandit = UCB1Bandit(ARMS)
    chosen = _play(bandit, probs, 500, rng_for(seed, "test_bandit", "stationary"))
    pulls = dict(zip(ARMS, bandit.pulls))
    assert sum(bandit.pulls) == bandit.steps == 500
    assert pulls["hard"] > pulls["medium"] > pulls["easy"]
    assert pulls["hard"] > 250  # the majority once the arms are told apart
    assert chosen[-100:].count("hard") > 60
    means = bandit.means()
    assert abs(means["hard"] - 0.7) < 0.1


def test_discounting_follows_a_reward_that_moves_to_another_arm():
    # the easy band teaches most early on, then stops producing violations; the medium band takes over
    early = {"hard": 0.1, "medium": 0.4, "easy": 0.9}
    late = {"hard": 0.1, "medium": 0.7, "easy": 0.2}
    tails: dict[float, list[int]] = {1.0: [], 0.99: []}
    for seed in range(3):
        for discount in tails:
            bandit = UCB1Bandit(ARMS, exploration=0.5, discount=discount)
            rng = rng_for(seed, "test_bandit", "drift")
            _play(bandit, early, 300, rng)
            tails[discount].append(_play(bandit, late, 200, rng)[-100:].count("medium"))
    assert min(tails[0.99]) > 75  # forgets the easy band's old successes
    assert sum(tails[0.99]) > sum(tails[1.0])  # classic UCB1 drags its long history along


def test_first_round_plays_every_arm_in_order_and_rewards_are_scaled():
    bandit = UCB1Bandit(ARMS, reward_range=(0.0, 4.0))
    played = []
    for reward in (4.0, 2.0, -3.0):  # -> 1.0, 0.5, 0.0 (clipped)
        played.append(bandit.select())
        bandit.update(played[-1], reward)
    assert played == ARMS
    assert bandit.means() == {"hard": 1.0, "medium": 0.5, "easy": 0.0}
    assert bandit.select() == "hard"  # equal bonuses: the best mean wins
    with pytest.raises(ValueError, match="finite"):
        bandit.update("hard", float("nan"))
    with pytest.raises(ValueError, match="unknown bandit arm"):
        bandit.update("impossible", 1.0)
    with pytest.raises(ValueError, match="distinct"):
        UCB1Bandit(["a", "a"])


def test_state_round_trip_resumes_identically(tmp_path):
    probs = {"hard": 0.6, "medium": 0.55, "easy": 0.4}
    bandit = UCB1Bandit(ARMS, exploration=0.8, discount=0.99)
    _play(bandit, probs, 150, rng_for(0, "test_bandit", "before"))
    torch.save({"bandit": bandit.state_dict()}, tmp_path / "last.ckpt")

    resumed = UCB1Bandit(ARMS, exploration=0.8, discount=0.99)
    resumed.load_state_dict(torch.load(tmp_path / "last.ckpt", weights_only=True)["bandit"])
    assert resumed.state_dict() == bandit.state_dict()
    after_original = _play(bandit, probs, 150, rng_for(0, "test_bandit", "after"))
    after_resumed = _play(resumed, probs, 150, rng_for(0, "test_bandit", "after"))
    assert after_resumed == after_original
    assert resumed.state_dict() == bandit.state_dict()

    fresh = UCB1Bandit(ARMS, exploration=0.8, discount=0.99)  # a restart without the state diverges
    assert _play(fresh, probs, 150, rng_for(0, "test_bandit", "after")) != after_original

    with pytest.raises(ValueError, match="saved with"):
        UCB1Bandit(["hard", "easy"]).load_state_dict(bandit.state_dict())
    with pytest.raises(ValueError, match="saved with"):
        UCB1Bandit(ARMS, exploration=0.8, discount=1.0).load_state_dict(bandit.state_dict())
