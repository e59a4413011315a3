"""Bandit dataclass validation and the MARA toy presets."""

from __future__ import annotations

import numpy as np
import pytest

from toy_bandits import PRESETS, Bandit, biased_modes, crossover_beta, fig5, optimal_policy, rlvr_like


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_are_valid_bandits(name):
    b = PRESETS[name]()
    assert isinstance(b, Bandit) and b.name == name and b.description
    assert b.rewards.shape == b.reference.shape == (b.n_arms,)
    assert abs(b.reference.sum() - 1) < 1e-12 and b.correct(b.rewards.max()).any()


def test_fig5_shape():
    b = fig5(100)
    assert 0.04 < b.reference[0] < 0.06 and np.all(np.diff(b.reference) < 0)
    assert b.correct().sum() == 50 and b.rewards[35] == 0 and b.rewards[50] == 1


def test_biased_modes_crossover():
    """Small beta picks the right (1.0) mode, large beta the left (.9) one (MARA Eq. 10)."""
    b = biased_modes()
    left, right = slice(0, 50), slice(50, 100)
    small, large = optimal_policy(b.rewards, b.reference, [0.02, 0.5])
    assert small[right].sum() > 0.9 and large[left].sum() > 0.7
    i, j = np.argmax(b.rewards[left]), 50 + np.argmax(b.rewards[right])
    beta_star = crossover_beta(b.rewards[i], np.log(b.reference[i]), b.rewards[j], np.log(b.reference[j]))
    assert beta_star == pytest.approx(0.1 / np.log(5), rel=0.05)


def test_rlvr_like_mass_on_wrong_arms():
    b = rlvr_like(n_arms=200, n_correct=12, seed=0)
    assert b.correct().sum() == 12 and b.reference[b.correct()].sum() < 0.5
    assert set(np.unique(b.rewards)) == {0.0, 1.0}
    assert not np.array_equal(b.reference, rlvr_like(seed=1).reference)


def test_bandit_validation():
    with pytest.raises(ValueError, match="reference"):
        Bandit("x", np.array([0.0, 1.0]), np.array([0.5, 0.6]))
    with pytest.raises(ValueError, match="rewards.*reference"):
        Bandit("x", np.array([0.0, 1.0, 2.0]), np.array([0.5, 0.5]))
    with pytest.raises(ValueError, match="rewards"):
        Bandit("x", np.array([0.0, np.nan]), np.array([0.5, 0.5]))
