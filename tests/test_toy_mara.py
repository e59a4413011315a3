"""MARA Algorithms 1 and 2 (batch rewards and exact targets), and the Eq. 10 crossover."""

from __future__ import annotations

import numpy as np
import pytest

from toy_bandits import DIVERGENCES, crossover_beta, mara_rewards, mara_target, optimal_policy
from toy_bandits.divergences import f_divergence

FIG4_R, FIG4_REF = np.array([0.0, 1.0, 1.0]), np.array([0.68, 0.30, 0.02])


def test_algorithm1_rewards_by_hand():
    logref = np.log([0.5, 0.1, 0.3, 0.1])
    out = mara_rewards([1.0, 0.2, 0.9, 0.8], logref, beta=0.1, tau=0.8)
    # anchor: sample 0 (highest log-prob among R >= .8); sample 1 keeps its reward
    expected = [1.0, 0.2, 1.0 + 0.1 * np.log(0.5 / 0.3), 1.0 + 0.1 * np.log(0.5 / 0.1)]
    np.testing.assert_allclose(out, expected, rtol=1e-12)


def test_algorithm2_rewards_and_kl_reference():
    logref = np.log([0.5, 0.1, 0.3, 0.1])
    rewards, kl_logref = mara_rewards([0.7, 0.2, 0.9, 0.8], logref, 0.1, 0.8, variant=2)
    np.testing.assert_allclose(rewards, [0.7, 0.2, 0.9, 0.9])       # anchor is sample 2
    np.testing.assert_allclose(kl_logref, np.log([0.5, 0.1, 0.3, 0.3]))


@pytest.mark.parametrize("variant", [1, 2])
def test_no_good_sample_leaves_rewards_unchanged(variant):
    r, logref = np.array([0.1, 0.2]), np.log([0.4, 0.6])
    out = mara_rewards(r, logref, 0.1, 0.9, variant=variant)
    if variant == 2:
        np.testing.assert_array_equal(out[1], logref)
        out = out[0]
    np.testing.assert_array_equal(out, r)


def test_forward_kl_algorithm1_example():
    """MARA notes §2: forward KL, Algorithm 1, beta = .05 is not uniform."""
    pi = mara_target(FIG4_R, FIG4_REF, 0.05, 1.0, "forward_kl", variant=1)
    np.testing.assert_allclose(pi, [0.030, 0.110, 0.860], atol=5e-4)


def test_target_matches_batch_rewards_on_all_arms():
    """mara_target variant 1 is optimal_policy of mara_rewards applied to every arm at once."""
    rng = np.random.default_rng(1)
    r, ref = rng.random(12).round(1), rng.dirichlet(np.ones(12))
    rbar = mara_rewards(r, np.log(ref), 0.2, 0.6)
    for div in DIVERGENCES:
        np.testing.assert_allclose(mara_target(r, ref, 0.2, 0.6, div),
                                   optimal_policy(rbar, ref, 0.2, div), atol=1e-12)


@pytest.mark.parametrize("div", DIVERGENCES)
def test_uniform_over_good_arms(div):
    """Eq. 11: Alg. 1 under reverse KL and Alg. 2 under every f give a uniform target on R >= tau."""
    rng = np.random.default_rng(0)
    r = np.where(rng.random(30) < 0.4, 1.0, rng.random(30) * 0.5)
    ref = rng.dirichlet(np.full(30, 0.5))
    good = r >= 0.9
    betas = np.logspace(-3, 1, 9)
    variants = [1, 2] if div == "reverse_kl" else [2]
    for variant in variants:
        for pi in mara_target(r, ref, betas, 0.9, div, variant=variant):
            np.testing.assert_allclose(pi[good], pi[good].mean(), rtol=1e-9)
            assert pi[good].min() > 0


def test_forward_kl_algorithm1_is_not_uniform():
    pi = mara_target(FIG4_R, FIG4_REF, 0.05, 1.0, "forward_kl", variant=1)
    assert pi[2] > 5 * pi[1]


@pytest.mark.parametrize("div", ["forward_kl", "js", "alpha"])
def test_algorithm2_target_beats_perturbations(div):
    """The Alg. 2 target maximizes sum pi rbar - beta sum refbar f(pi/refbar) (unnormalized
    refbar): random feasible perturbations never improve it."""
    r, ref, beta = np.array([0.0, 1.0, 0.5, 1.0]), np.array([0.5, 0.3, 0.15, 0.05]), 0.2
    pi = mara_target(r, ref, beta, 0.9, div, variant=2)
    rbar, refbar = np.where(r >= 0.9, 1.0, r), np.where(r >= 0.9, 0.3, ref)

    def obj(p):  # sum_y refbar f(p/refbar) = W * D_f(p || refbar / W) after rescaling f's input
        w = refbar.sum()
        return p @ rbar - beta * w * f_divergence(p / w, refbar / w, div)

    rng = np.random.default_rng(0)
    for _ in range(200):
        d = rng.normal(size=4) * 1e-3
        q = pi + d - d.mean()
        if np.all(q > 0):
            assert obj(q) <= obj(pi) + 1e-12


def test_zero_reference_good_arm_stays_zero():
    pi = mara_target([0.0, 1.0, 1.0], [0.7, 0.3, 0.0], 0.1, 1.0, "forward_kl", variant=2)
    assert pi[2] == 0.0


def test_crossover_beta_eq10():
    """Two good modes are equally likely at beta* = dR / dlog ref (reverse KL, MARA Eq. 10)."""
    logref = np.log([0.6, 0.05, 0.35])
    r = np.array([0.75, 1.0, 0.0])
    b = crossover_beta(r[0], logref[0], r[1], logref[1])
    assert b == pytest.approx(0.25 / np.log(12))
    lo, at, hi = optimal_policy(r, np.exp(logref), [0.5 * b, b, 2 * b])
    assert lo[1] > lo[0] and hi[0] > hi[1]
    assert at[0] == pytest.approx(at[1], rel=1e-10)


@pytest.mark.parametrize("kwargs, match", [
    (dict(rewards=[0.0, np.nan]), "rewards"),
    (dict(reference_logprobs=[0.1, -1.0]), "reference_logprobs"),
    (dict(reference_logprobs=[-np.inf, -1.0]), "reference_logprobs"),
    (dict(reference_logprobs=[-1.0]), "reference_logprobs"),
    (dict(beta=-1.0), "beta"),
    (dict(tau=np.nan), "tau"),
    (dict(variant=3), "variant"),
])
def test_mara_rewards_validation(kwargs, match):
    args = dict(rewards=[0.0, 1.0], reference_logprobs=[-0.5, -1.0], beta=0.1, tau=0.5)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        mara_rewards(**args)


def test_mara_target_validation():
    with pytest.raises(ValueError, match="reference"):
        mara_target([0.0, 1.0], [0.5, 0.6], 0.1, 0.5)
    with pytest.raises(ValueError, match="divergence"):
        mara_target([0.0, 1.0], [0.5, 0.5], 0.1, 0.5, "tv")


def test_mara_rewards_without_their_kl_collapse_onto_the_rarest_good_arm():
    """MARA's beta is the KL coefficient (papers/mara.md): the augmented rewards give the uniform
    target only inside E[R_bar] - beta KL with the same beta. Smaller KL tilts toward low-pi_ref
    good arms; no KL (GRPO + MARA rewards) is the argmax of R_bar, the lowest-pi_ref good arm."""
    r, ref, beta = [0.0, 1.0, 1.0, 1.0], [0.5, 0.3, 0.15, 0.05], 0.05
    np.testing.assert_allclose(mara_rewards(r, np.log(ref), beta, 1.0), [0, 1, 1 + beta * np.log(2), 1 + beta * np.log(6)])
    np.testing.assert_allclose(mara_target(r, ref, beta, 1.0, kl_beta=beta), mara_target(r, ref, beta, 1.0), atol=1e-12)
    np.testing.assert_allclose(mara_target(r, ref, beta, 1.0), [0, 1 / 3, 1 / 3, 1 / 3], atol=1e-6)
    # KL at 0.01: Gibbs of R_bar with beta' = 0.01, computed directly
    rbar = mara_rewards(r, np.log(ref), beta, 1.0)
    gibbs = np.array(ref) * np.exp(rbar / 0.01)
    np.testing.assert_allclose(mara_target(r, ref, beta, 1.0, kl_beta=0.01), gibbs / gibbs.sum(), atol=1e-12)
    np.testing.assert_allclose(mara_target(r, ref, beta, 1.0, kl_beta=0.01), [0, 0.001, 0.012, 0.987], atol=1e-3)
    np.testing.assert_allclose(mara_target(r, ref, beta, 1.0, kl_beta=0.0), [0, 0, 0, 1])
    with pytest.raises(ValueError, match="variant 1"):
        mara_target(r, ref, beta, 1.0, variant=2, kl_beta=0.0)
    with pytest.raises(ValueError, match="kl_beta"):
        mara_target(r, ref, beta, 1.0, kl_beta=-1.0)
