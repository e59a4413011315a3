"""Each loss term against a direct, loop-by-loop transcription of its equation (DESIGN.md §1)."""

import math

import pytest
import torch

from dphrl_mini import losses
from dphrl_mini.losses import (METHODS, aggregate, clipped_surrogate, divergence_per_token,
                               group_advantages, kl_penalty_per_token, method_defaults)


def _rand(*shape, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64) * scale


def _mask(B, T, seed=0):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, T + 1, (B,), generator=g)
    return (torch.arange(T)[None, :] < lengths[:, None]).double()  # right-padded, >= 1 token


# --- group advantages ------------------------------------------------------------------------

def test_group_advantages_matches_per_group_formula():
    rewards = _rand(12, seed=1)
    got = group_advantages(rewards, group_size=4)
    for g in range(3):
        group = [float(r) for r in rewards[4 * g:4 * g + 4]]
        mean = sum(group) / 4
        std = math.sqrt(sum((r - mean) ** 2 for r in group) / 3)  # unbiased, as verl/TRL
        for i, r in enumerate(group):
            assert float(got[4 * g + i]) == pytest.approx((r - mean) / (std + 1e-6), rel=1e-6)


def test_group_advantages_identical_rewards_and_no_std():
    rewards = torch.tensor([1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0])
    got = group_advantages(rewards, group_size=3)
    assert torch.equal(got[:6], torch.zeros(6))
    assert got[6] > 0 and got[7] < 0 and got[7] == got[8]
    centred = group_advantages(rewards, group_size=3, scale_by_std=False)
    assert torch.allclose(centred[6:], torch.tensor([2 / 3, -1 / 3, -1 / 3]))
    assert torch.equal(group_advantages(torch.tensor([1.0, 0.0]), group_size=1), torch.zeros(2))
    with pytest.raises(ValueError, match="group_size"):
        group_advantages(rewards, group_size=4)



def test_group_advantages_leave_unscorable_completions_out_as_trl():
    """NaN = every reward function returned None: out of the group's mean and std, advantage 0."""
    nan = float("nan")
    rewards = torch.tensor([1.0, nan, 0.0, 1.0, nan, nan, nan, 1.0])
    got = group_advantages(rewards, group_size=4)
    expected = group_advantages(torch.tensor([1.0, 0.0, 1.0]), group_size=3)
    assert torch.allclose(got[[0, 2, 3]], expected) and got[1] == 0
    assert torch.equal(got[4:], torch.zeros(4))  # one scored completion: no spread, advantage 0
    centred = group_advantages(rewards, group_size=4, scale_by_std=False)
    assert torch.allclose(centred[:4], torch.tensor([1 / 3, 0.0, -2 / 3, 1 / 3]))


# --- clipped surrogate -------------------------------------------------------------------------

def _surrogate_reference(logp, old, adv, eps_low, eps_high, c):
    """verl compute_policy_loss for one token, written out."""
    ratio = math.exp(max(-20.0, min(20.0, logp - old)))
    loss1 = -adv * ratio
    loss2 = -adv * min(max(ratio, 1 - eps_low), 1 + eps_high)
    loss = max(loss1, loss2)
    clipped = loss2 > loss1
    if adv < 0:
        if -adv * c < loss:
            clipped = True
        loss = min(loss, -adv * c)
    return loss, clipped


@pytest.mark.parametrize("per_token_advantages", [False, True])
def test_clipped_surrogate_matches_transcription(per_token_advantages):
    B, T = 6, 7
    old = _rand(B, T, seed=2)
    logps = old + _rand(B, T, seed=3, scale=0.8)  # ratios from ~0.1 to ~10: every branch taken
    adv = _rand(B, T, seed=4) if per_token_advantages else _rand(B, seed=4)
    mask = _mask(B, T, seed=5)
    loss, frac = clipped_surrogate(logps, old, adv, mask, eps_low=0.2, eps_high=0.28, clip_ratio_c=3.0)
    n_clipped, n_tokens = 0, 0
    for b in range(B):
        for t in range(T):
            a = float(adv[b, t] if per_token_advantages else adv[b])
            ref, clipped = _surrogate_reference(float(logps[b, t]), float(old[b, t]), a, 0.2, 0.28, 3.0)
            assert float(loss[b, t]) == pytest.approx(ref, rel=1e-9, abs=1e-12)
            if mask[b, t]:
                n_tokens += 1
                n_clipped += clipped
    assert 0 < n_clipped < n_tokens
    assert float(frac) == pytest.approx(n_clipped / n_tokens)


def test_clipped_surrogate_hand_cases():
    mask = torch.ones(1, 5)
    ratios = torch.tensor([[1.0, 1.5, 0.5, 5.0, 0.5]])
    adv = torch.tensor([[1.0, 1.0, 1.0, -1.0, -1.0]])
    loss, frac = clipped_surrogate(ratios.log(), torch.zeros(1, 5), adv, mask,
                                   eps_low=0.2, eps_high=0.28, clip_ratio_c=3.0)
    # A>0: ratio 1 -> -1; ratio 1.5 clipped to 1.28; ratio 0.5 is not clipped (min(r, clip(r)) = r)
    # A<0: ratio 5 -> max(5, 1.28) = 5, dual clip caps it at c = 3; ratio .5 -> clipped to .8
    expected = torch.tensor([[-1.0, -1.28, -0.5, 3.0, 0.8]])
    assert torch.allclose(loss, expected)
    assert float(frac) == pytest.approx(3 / 5)
    # the gradient vanishes exactly on the clipped tokens
    logps = ratios.log().requires_grad_()
    clipped_surrogate(logps, torch.zeros(1, 5), adv, mask)[0].sum().backward()
    assert (logps.grad[0, [1, 3, 4]] == 0).all() and (logps.grad[0, [0, 2]] != 0).all()


# --- aggregation --------------------------------------------------------------------------------

def test_aggregate_modes_with_masks():
    per_token = _rand(4, 6, seed=6)
    mask = _mask(4, 6, seed=7)
    total, count, row_means = 0.0, 0, []
    for b in range(4):
        row = [float(per_token[b, t]) for t in range(6) if mask[b, t]]
        total, count = total + sum(row), count + len(row)
        row_means.append(sum(row) / len(row))
    assert float(aggregate(per_token, mask)) == pytest.approx(total / count)
    assert float(aggregate(per_token, mask.bool(), "sequence_mean")) == pytest.approx(sum(row_means) / 4)
    # masked values never matter, even inf
    poisoned = per_token.masked_fill(mask == 0, float("inf"))
    assert float(aggregate(poisoned, mask)) == pytest.approx(total / count)
    with pytest.raises(ValueError, match="mode"):
        aggregate(per_token, mask, "sum")


# --- KL penalty and DPH divergences -------------------------------------------------------------

def test_kl_penalty_estimators():
    logps, reference = _rand(3, 5, seed=8) - 2, _rand(3, 5, seed=9) - 2
    for b in range(3):
        for t in range(5):
            x = float(logps[b, t] - reference[b, t])
            assert float(kl_penalty_per_token(logps, reference, "k1")[b, t]) == pytest.approx(x)
            assert float(kl_penalty_per_token(logps, reference, "k2")[b, t]) == pytest.approx(x * x / 2)
            assert float(kl_penalty_per_token(logps, reference)[b, t]) == pytest.approx(math.exp(-x) - 1 + x)
    with pytest.raises(ValueError):
        kl_penalty_per_token(logps, reference, "k4")


def _generator_reference(x, divergence, alpha):
    x = max(-20.0, min(20.0, x))
    u = math.exp(x)
    if divergence == "forward_kl":
        return u - x - 1
    if divergence == "js":
        return u * math.log(u) - (u + 1) * math.log((u + 1) / 2)
    if divergence == "alpha":
        return (u ** (1 - alpha) - (1 - alpha) * u - alpha) / (alpha * (alpha - 1))
    return u * math.log(u) - u + 1  # reverse_kl: f(u) - f'(1)(u - 1) with f = u log u


@pytest.mark.parametrize("divergence,alpha", [("forward_kl", 0.5), ("js", 0.5), ("alpha", 0.2),
                                              ("alpha", 0.8), ("reverse_kl", 0.5)])
def test_divergence_per_token_matches_generator(divergence, alpha):
    logps, reference = _rand(4, 6, seed=10, scale=1.5) - 3, _rand(4, 6, seed=11) - 3
    got = divergence_per_token(logps, reference, divergence, alpha=alpha)
    assert got.shape == (4, 6)
    for b in range(4):
        for t in range(6):
            ref = _generator_reference(float(logps[b, t] - reference[b, t]), divergence, alpha)
            assert float(got[b, t]) == pytest.approx(ref, rel=1e-9, abs=1e-12)
    assert (got >= 0).all()
    at_reference = divergence_per_token(reference, reference, divergence, alpha)
    assert torch.allclose(at_reference, torch.zeros(4, 6, dtype=torch.float64), atol=1e-12)


def test_divergence_per_token_clamps_log_ratio_at_20():
    logps = torch.tensor([[0.0, 0.0]], dtype=torch.float64)
    reference = torch.tensor([[-100.0, 100.0]], dtype=torch.float64)
    got = divergence_per_token(logps, reference, "forward_kl")
    assert torch.allclose(got, torch.tensor([[math.exp(20) - 21, math.exp(-20) + 19]], dtype=torch.float64))
    with pytest.raises(ValueError, match="divergence"):
        divergence_per_token(logps, reference, "chi2")


def test_forward_kl_gradient_is_u_minus_one_times_dlogp():
    """d/dtheta (e^x - x - 1) = (u - 1) dlogp/dtheta (papers/dph-rl.md §1.4a)."""
    theta = _rand(3, 4, seed=12).requires_grad_()
    logps = torch.log_softmax(theta, dim=-1)  # (3, 4) a tiny categorical policy
    reference = torch.log_softmax(_rand(3, 4, seed=13), dim=-1)
    divergence_per_token(logps, reference, "forward_kl").sum().backward()
    expected = torch.zeros_like(theta)
    for b in range(3):
        for t in range(4):
            u = math.exp(float(logps[b, t].detach() - reference[b, t]))
            dlogp = torch.autograd.grad(torch.log_softmax(theta, dim=-1)[b, t], theta)[0]
            expected += (u - 1) * dlogp
    assert torch.allclose(theta.grad, expected)


# --- methods table ----------------------------------------------------------------------------------

def test_method_defaults():
    assert set(METHODS) == {"grpo", "dapo", "rkl", "dph_forward_kl", "dph_js", "dph_alpha"}
    for method in METHODS:
        d = method_defaults(method)
        assert set(d) == {"eps_high", "divergence", "kl_coef"}
        assert d["eps_high"] == (0.2 if method == "grpo" else 0.28)
        assert (d["kl_coef"] > 0) == (method == "rkl")  # the only method with an online reference by default
        if method.startswith("dph_"):
            assert d["divergence"] == method.removeprefix("dph_")
            assert d["divergence"] in losses.DPH_DIVERGENCES
        else:
            assert d["divergence"] is None
    method_defaults("grpo")["eps_high"] = 9.0  # a copy: the table cannot be changed by callers
    assert method_defaults("grpo")["eps_high"] == 0.2
    with pytest.raises(ValueError, match="dph_js"):
        method_defaults("ppo")
