"""Each divergence's gradient on the logits (toy_bandits/strength.py) against finite differences of the
divergence itself; zero at pi_ref; RL's pull likewise; the collapse path and its figure."""

from __future__ import annotations

import numpy as np
import pytest

import toy_bandits as tb
from toy_bandits.divergences import DIVERGENCES, f_divergence
from toy_bandits.strength import (collapse_path, divergence_logit_gradient, grad_share, gradient_strength,
                                  reward_logit_gradient)


def softmax(z):
    e = np.exp(z - z.max())
    return e / e.sum()


def numerical_gradient(fn, z, h=1e-6):
    return np.array([(fn(z + h * e) - fn(z - h * e)) / (2 * h) for e in np.eye(len(z))])


@pytest.mark.parametrize("divergence", DIVERGENCES)
def test_divergence_gradient_matches_finite_differences_and_vanishes_at_reference(divergence):
    rng = np.random.default_rng(0)
    reference = softmax(rng.normal(size=6))
    z = np.log(reference) + rng.normal(scale=0.7, size=6)
    exact = divergence_logit_gradient(softmax(z), reference, divergence, alpha=0.3)
    numeric = numerical_gradient(lambda v: f_divergence(softmax(v), reference, divergence, alpha=0.3), z)
    np.testing.assert_allclose(exact, numeric, rtol=1e-5, atol=1e-8)
    np.testing.assert_allclose(divergence_logit_gradient(reference, reference, divergence, alpha=0.3), 0, atol=1e-12)


def test_reward_gradient_matches_finite_differences():
    rewards, z = np.array([0.0, 1.0, 1.0, 0.0]), np.array([0.3, -1.0, 0.5, 2.0])
    numeric = numerical_gradient(lambda v: softmax(v) @ rewards, z)
    np.testing.assert_allclose(reward_logit_gradient(softmax(z), rewards), numeric, rtol=1e-6, atol=1e-9)


def test_collapse_path_goes_from_reference_to_the_likeliest_correct_arm():
    bandit = tb.fig4()  # R = [0, 1, 1], pi_ref = [.68, .30, .02]: arm 1 is the correct mode
    path = collapse_path(bandit, n_points=50)
    np.testing.assert_allclose(path[0], bandit.reference)
    assert path[-1][1] == pytest.approx(0.999) and np.argmax(path[-1]) == 1
    strength = gradient_strength(bandit, n_points=50)
    assert strength["drift"][0] == pytest.approx(0) and np.all(np.diff(strength["drift"]) > 0)
    assert all(strength[d][0] == pytest.approx(0, abs=1e-12) for d in DIVERGENCES)
    assert strength["reward"][0] > 0  # RL pulls at pi_ref, the rehearsal does not
    share = grad_share(strength, "js", 0.00125)
    assert share[0] == 0 and share[-1] > share[1] and np.all(grad_share(strength, "js", 1.0) >= share)


def test_collapse_path_needs_a_full_support_reference_and_a_correct_arm():
    with pytest.raises(ValueError, match="every arm > 0"):
        collapse_path(tb.Bandit("z", [0, 1], [1.0, 0.0]))
    with pytest.raises(ValueError, match="correct arm"):
        collapse_path(tb.Bandit("none", [0, 0.5], [0.5, 0.5]))


def test_gradient_strength_figure():
    fig = tb.plot_gradient_strength(tb.rlvr_like())
    left, right = fig.axes[:2]
    assert len(left.get_lines()) == 1 + len(DIVERGENCES) and left.get_yscale() == "log"
    assert len(right.get_lines()) == 5  # four etas and the 50% line
