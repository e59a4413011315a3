"""Sample-based training (toy_bandits/train.py) converges to the exact targets of DESIGN.md §1.

Runs use group_size=64 on-policy samples and 256 reference samples per step so that 3000 steps
reach TV < 0.02. Betas are chosen where that holds for each preset; notebook 03 shows where
it does not (mass-covering divergences with huge pi/pi_ref ratios).
"""

import numpy as np
import pytest

import toy_bandits as tb
from toy_bandits.divergences import generator_derivative, generator_loss
from toy_bandits.train import REGULARIZERS, TrainResult, exact_target, train_policy

FAST = dict(steps=3000, group_size=64, reference_batch=256)
TAU = {"fig3": 0.9, "fig4": 1.0, "biased_modes": 0.85, "rlvr_like": 1.0}
# (preset, regularizer, beta, mara)
CONVERGES = [
    *[(p, "reverse_kl_k1", b, m) for p, b in (("fig3", .5), ("fig4", .1), ("biased_modes", .3),
                                              ("rlvr_like", .5)) for m in (False, True)],
    *[(p, r, b, False) for r in ("forward_kl", "js")
      for p, b in (("fig3", .5), ("fig4", .1), ("biased_modes", 2.0), ("rlvr_like", 3.0))],
    *[(p, r, b, True) for r in ("forward_kl", "js") for p, b in (("fig3", .5), ("fig4", .1))],
]


@pytest.mark.parametrize("preset,regularizer,beta,mara", CONVERGES)
def test_sample_training_reaches_exact_target(preset, regularizer, beta, mara):
    bandit = tb.PRESETS[preset]()
    res = train_policy(bandit, regularizer, beta, mara=mara, tau=TAU[preset], seed=1, **FAST)
    assert isinstance(res, TrainResult)
    expected = (tb.mara_target(bandit.rewards, bandit.reference, beta, TAU[preset],
                               divergence="reverse_kl" if regularizer.startswith("reverse") else regularizer)
                if mara else tb.optimal_policy(bandit.rewards, bandit.reference, beta,
                                               divergence=regularizer.replace("_k1", "")))
    np.testing.assert_allclose(res.target, expected, atol=1e-12)
    assert res.final_tv < 0.02
    assert res.tv_to_target()[0] > 0.02 or preset == "fig3"  # it had to move (not a no-op)


@pytest.mark.parametrize("preset,beta", [("fig3", .5), ("fig4", .1), ("biased_modes", .1),
                                         ("rlvr_like", .5)])
@pytest.mark.parametrize("divergence", ["reverse_kl", "forward_kl", "js", "alpha", "chi2"])
def test_exact_gradient_matches_optimal_policy(preset, beta, divergence):
    bandit = tb.PRESETS[preset]()
    regularizer = "reverse_kl_k1" if divergence == "reverse_kl" else divergence
    res = train_policy(bandit, regularizer, beta, estimator="exact", steps=3000, lr=0.2)
    target = tb.optimal_policy(bandit.rewards, bandit.reference, beta, divergence=divergence)
    np.testing.assert_allclose(res.final, target, atol=1e-4)


@pytest.mark.parametrize("divergence,variant", [("reverse_kl", 1), ("forward_kl", 1),
                                                ("forward_kl", 2)])
def test_exact_gradient_matches_mara_target(divergence, variant):
    bandit = tb.fig4()
    regularizer = "reverse_kl_k1" if divergence == "reverse_kl" else divergence
    res = train_policy(bandit, regularizer, 0.05, mara=True, tau=1.0, mara_variant=variant,
                       estimator="exact", steps=3000, lr=0.2)
    target = tb.mara_target(bandit.rewards, bandit.reference, 0.05, 1.0, divergence=divergence,
                            variant=variant)
    np.testing.assert_allclose(res.final, target, atol=1e-4)


def test_std_scaled_advantages_shift_the_fixed_point():
    bandit = tb.fig3()
    mean = train_policy(bandit, "forward_kl", 0.5, advantage="mean", **FAST)
    grpo = train_policy(bandit, "forward_kl", 0.5, advantage="grpo", **FAST)
    assert mean.final_tv < 0.02
    assert grpo.final_tv > 0.1  # reward gradient scaled by 1/std: effective beta shrinks
    assert grpo.final[2] > mean.final[2] + 0.1  # ... so the best arm gets more mass


def test_k3_as_loss_follows_the_forward_kl_gradient():
    bandit = tb.fig3()
    res = train_policy(bandit, "reverse_kl_k3", 0.5, **FAST)
    forward = tb.optimal_policy(bandit.rewards, bandit.reference, 0.5, divergence="forward_kl")
    assert res.final_tv > 0.04  # biased for the reverse-KL target it is meant to estimate
    assert 0.5 * np.abs(res.final - forward).sum() < 0.01


@pytest.mark.parametrize("divergence", ["forward_kl", "js", "alpha", "chi2", "reverse_kl"])
def test_generator_loss_gradient_formula(divergence):
    # train.py uses l'(x) = e^x (f'(e^x) - f'(1)); check it against generator_loss numerically
    x = np.linspace(-2, 2, 9)
    h = 1e-6
    numeric = (generator_loss(x + h, divergence) - generator_loss(x - h, divergence)) / (2 * h)
    u = np.exp(x)
    analytic = u * (generator_derivative(u, divergence) - generator_derivative(1.0, divergence))
    np.testing.assert_allclose(analytic, numeric, rtol=1e-5, atol=1e-7)


def test_result_shapes_and_records():
    res = train_policy(tb.fig4(), "none", 0.1, steps=100, record_every=10)
    assert res.steps.tolist() == list(range(0, 101, 10))
    assert res.policies.shape == (11, 3)
    np.testing.assert_allclose(res.policies.sum(axis=1), 1.0)
    assert res.tv_to_target().shape == (11,)
    np.testing.assert_allclose(res.policies[0], tb.fig4().reference)
    np.testing.assert_allclose(exact_target([0, 1, 1], [.5, .3, .2], 0.1, "none"), [0, .6, .4])
    assert "chi2" in REGULARIZERS


@pytest.mark.parametrize("kwargs,name", [
    (dict(regularizer="kl"), "regularizer"), (dict(beta=-1.0), "beta"), (dict(alpha=1.5,
     regularizer="alpha"), "alpha"), (dict(steps=0), "steps"), (dict(group_size=1), "group_size"),
    (dict(lr=0.0), "lr"), (dict(optimizer="rmsprop"), "optimizer"),
    (dict(estimator="mc"), "estimator"), (dict(advantage="std"), "advantage"),
    (dict(mara_variant=3), "mara_variant"), (dict(record_every=0), "record_every"),
    (dict(mara=True, mara_variant=2, regularizer="forward_kl"), "mara_variant"),
    (dict(reference_batch=0), "reference_batch"),
])
def test_bad_arguments_raise_naming_the_argument(kwargs, name):
    with pytest.raises(ValueError, match=name):
        train_policy(tb.fig4(), **{"steps": 10, **kwargs})
