"""How hard each divergence pulls back as the policy collapses, against RL's pull (DESIGN.md §1, Strength).

On a bandit with softmax logits z (``pi = softmax(z)``), exactly:

* the regularizer's gradient: ``d D_f(pi || pi_ref) / dz_y = pi_y (f'(u_y) - sum_i pi_i f'(u_i))`` with
  ``u = pi / pi_ref`` (``D_f = sum_y pi_ref(y) f(u_y)``, so ``dD_f / dpi_y = f'(u_y)``; then the softmax
  Jacobian). It is 0 at ``pi = pi_ref`` for every f (``f'(1)`` is one constant), and grows as the
  policy drifts. DPH-RL's per-token loss on samples from pi_ref has this gradient in expectation.
* RL's pull: ``d E_pi[R] / dz_y = pi_y (R(y) - E_pi[R])``, largest while the policy still explores
  and 0 once it has collapsed onto correct answers.

``collapse_path`` moves the policy from pi_ref towards the collapse RL drives it to: all mass on
the correct arm pi_ref likes best (``z = log pi_ref + s e_j``). Along it, ``gradient_strength``
gives the drift ``KL(pi_ref || pi)`` (what DPH-F's loss estimates) and the norm of each gradient,
so that ``eta * ||grad D_f|| / (||grad R|| + eta * ||grad D_f||)`` is the bandit's exact
``dph_grad_share`` (``dphrl_mini/shares.py``) at each point: with a tiny eta the rehearsal matches
RL only after the policy has already drifted far.
"""

from __future__ import annotations

import numpy as np

from .divergences import DIVERGENCES, check_divergence, generator_derivative
from .envs import Bandit


def divergence_logit_gradient(policy, reference, divergence: str, alpha: float = 0.5) -> np.ndarray:
    """``d D_f(pi || pi_ref) / dz`` for softmax logits z, at ``pi = policy`` (both with full support)."""
    check_divergence(divergence, alpha)
    policy, reference = np.asarray(policy, dtype=float), np.asarray(reference, dtype=float)
    slope = generator_derivative(policy / reference, divergence, alpha)  # dD_f / dpi = f'(u)
    return policy * (slope - np.dot(policy, slope))


def reward_logit_gradient(policy, rewards) -> np.ndarray:
    """``d E_pi[R] / dz`` for softmax logits z: RL's pull on the logits."""
    policy, rewards = np.asarray(policy, dtype=float), np.asarray(rewards, dtype=float)
    return policy * (rewards - np.dot(policy, rewards))


def collapse_path(bandit: Bandit, n_points: int = 200, final_mass: float = 0.999) -> np.ndarray:
    """(n_points, n_arms) policies from pi_ref (first row) to ``final_mass`` on one arm: the correct
    arm with the most reference mass, the mode RL sharpens onto (``z = log pi_ref + s e_j``)."""
    reference = bandit.reference
    if np.any(reference <= 0):
        raise ValueError("collapse_path needs a reference with every arm > 0 (f'(u) is undefined at pi_ref = 0)")
    correct = bandit.correct()
    if not correct.any():
        raise ValueError("collapse_path needs at least one correct arm (reward >= 1)")
    arm = int(np.argmax(np.where(correct, reference, -1.0)))
    # pi_j(s) = ref_j e^s / (1 - ref_j + ref_j e^s) reaches final_mass at s_max
    s_max = np.log(final_mass / (1 - final_mass) * (1 - reference[arm]) / reference[arm])
    logits = np.log(reference)[None, :] + np.linspace(0.0, max(s_max, 0.0), n_points)[:, None] * np.eye(len(reference))[arm]
    policies = np.exp(logits - logits.max(axis=1, keepdims=True))
    return policies / policies.sum(axis=1, keepdims=True)


def gradient_strength(bandit: Bandit, divergences=DIVERGENCES, alpha: float = 0.5,
                      n_points: int = 200) -> dict[str, np.ndarray]:
    """Along ``collapse_path``: ``"drift"`` = KL(pi_ref || pi), ``"reward"`` = ||d E_pi[R] / dz|| and, for
    each divergence, ``||d D_f(pi || pi_ref) / dz||`` (beta = 1), each an (n_points,) array."""
    policies, reference = collapse_path(bandit, n_points), bandit.reference
    out = {"drift": np.array([np.sum(reference * np.log(reference / p)) for p in policies]),
           "reward": np.array([np.linalg.norm(reward_logit_gradient(p, bandit.rewards)) for p in policies])}
    for name in divergences:
        out[name] = np.array([np.linalg.norm(divergence_logit_gradient(p, reference, name, alpha)) for p in policies])
    return out


def grad_share(strength: dict[str, np.ndarray], divergence: str, eta: float) -> np.ndarray:
    """``eta ||grad D|| / (||grad R|| + eta ||grad D||)`` along the path: the exact ``dph_grad_share``."""
    term = eta * strength[divergence]
    total = strength["reward"] + term
    return np.divide(term, total, out=np.zeros_like(term), where=total > 0)
