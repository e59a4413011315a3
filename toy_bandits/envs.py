"""Bandits: a reward and a reference probability per arm, plus the MARA paper's toy cases.

Presets (MARA notes §3; shapes read off the paper's figures, so approximate):

* ``fig3``: R = [0, .9, 1], uniform pi_ref (MARA Fig. 3; reverse-KL target at beta = .5 is
  [.069, .419, .512]).
* ``fig4``: R = [0, 1, 1], pi_ref = [.68, .30, .02] (MARA Fig. 4; equal rewards keep the 15x ratio).
* ``fig5``: pi_ref decaying exponentially from about .05, reward 1 on two plateaus (0-30% and
  45-65% of the arms), 0 elsewhere (MARA Fig. 5).
* ``biased_modes``: step pi_ref 5x heavier on the left half, Gaussian reward bumps peaking at .9
  (left) and 1.0 (right) (MARA "biased modes" animation; crossover beta* about .1 / ln 5).
* ``rlvr_like``: an RLVR-flavoured case (not in the paper): 0/1 rewards with many correct arms
  under a long-tailed (Zipf) reference that puts most of its mass on wrong arms.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from .targets import as_reference, as_rewards


@dataclass
class Bandit:
    """A bandit with one reward and one reference probability per arm."""

    name: str
    """Short identifier used in plot titles and tables."""
    rewards: np.ndarray
    """(n,) finite rewards R(y)."""
    reference: np.ndarray
    """(n,) reference policy pi_ref: non-negative, sums to 1 (exact zeros allowed)."""
    description: str = ""
    """One or two sentences on what the bandit shows."""

    def __post_init__(self) -> None:
        self.rewards = as_rewards(self.rewards)
        self.reference = as_reference(self.reference, self.rewards.size)

    @property
    def n_arms(self) -> int:
        return int(self.rewards.size)

    def correct(self, tau: float = 1.0) -> np.ndarray:
        """Boolean mask of the arms with R >= tau (the "good" arms of MARA)."""
        return self.rewards >= tau


def fig3() -> Bandit:
    """MARA Fig. 3: a slightly worse arm next to the best one, uniform reference."""
    return Bandit("fig3", np.array([0.0, 0.9, 1.0]), np.full(3, 1 / 3),
                  "R = [0, .9, 1] under a uniform reference: a 0.1 reward gap becomes an "
                  "exponential probability gap as beta shrinks (MARA Remark 4.2).")


def fig4() -> Bandit:
    """MARA Fig. 4: two equally correct arms with a 15x reference ratio."""
    return Bandit("fig4", np.array([0.0, 1.0, 1.0]), np.array([0.68, 0.30, 0.02]),
                  "Two correct arms with a 15x reference ratio: every beta keeps that ratio "
                  "(MARA Remark 4.3); MARA makes them equal.")


def fig5(n_arms: int = 100) -> Bandit:
    """MARA Fig. 5: exponentially decaying reference, reward 1 on two plateaus."""
    if n_arms < 10:
        raise ValueError(f"n_arms={n_arms} is too small for two plateaus; use >= 10")
    x = np.arange(n_arms) / n_arms
    reference = np.exp(-5.0 * x)                               # pi_ref[0] ~ .05 at 100 arms
    rewards = (((x < 0.30) | ((x >= 0.45) & (x < 0.65)))).astype(float)
    return Bandit("fig5", rewards, reference / reference.sum(),
                  "Reward 1 on two plateaus under a decaying reference: the vanilla target "
                  "piles onto the high-reference plateau, MARA is flat on both.")


def biased_modes(n_arms: int = 100) -> Bandit:
    """MARA "biased modes": the better mode sits where the reference is 5x lighter."""
    if n_arms < 10:
        raise ValueError(f"n_arms={n_arms} is too small for two bumps; use >= 10")
    x = (np.arange(n_arms) + 0.5) / n_arms
    reference = np.where(x < 0.5, 5.0, 1.0)
    bump = lambda centre, peak: peak * np.exp(-0.5 * ((x - centre) / 0.06) ** 2)  # noqa: E731
    rewards = np.maximum(bump(0.25, 0.9), bump(0.75, 1.0))
    return Bandit("biased_modes", rewards, reference / reference.sum(),
                  "Peaks .9 (left, 5x more reference mass) and 1.0 (right): small beta picks the "
                  "right mode, large beta the left, crossing near beta* = .1 / ln 5 (MARA Eq. 10).")


def rlvr_like(n_arms: int = 200, n_correct: int = 12, seed: int = 0) -> Bandit:
    """Many correct answers in the long tail of a Zipf reference; most mass on wrong arms.

    One correct arm sits among reference ranks 2-5 (the base model sometimes solves it), the
    others among ranks past 10% of the arms; arms are then shuffled.
    """
    if not 1 <= n_correct <= n_arms // 2:
        raise ValueError(f"n_correct={n_correct} must be in [1, n_arms // 2] (n_arms={n_arms})")
    if n_arms < 20:
        raise ValueError(f"n_arms={n_arms} is too small for a long tail; use >= 20")
    rng = np.random.default_rng(seed)
    by_rank = 1.0 / np.arange(1, n_arms + 1) ** 1.1            # Zipf(1.1) over ranks
    tail_start = max(10, n_arms // 10)
    ranks = [int(rng.integers(1, 5))]
    ranks += list(rng.choice(np.arange(tail_start, n_arms), size=n_correct - 1, replace=False))
    rewards_by_rank = np.zeros(n_arms)
    rewards_by_rank[ranks] = 1.0
    perm = rng.permutation(n_arms)                             # arm perm[i] has rank i
    rewards, reference = np.empty(n_arms), np.empty(n_arms)
    rewards[perm], reference[perm] = rewards_by_rank, by_rank / by_rank.sum()
    return Bandit("rlvr_like", rewards, reference,
                  f"{n_correct} correct arms (reward 1) mostly in the tail of a Zipf reference: "
                  "most reference mass is on wrong answers, as for a hard RLVR prompt.")


PRESETS: dict[str, Callable[[], Bandit]] = {
    "fig3": fig3, "fig4": fig4, "fig5": fig5, "biased_modes": biased_modes, "rlvr_like": rlvr_like,
}
"""Every preset by name; call the value to build the bandit, e.g. ``PRESETS["fig4"]()``."""
