"""Mode Anchored Reward Augmentation (MARA notes §2; DESIGN.md §1 "MARA").

* ``mara_rewards``: Algorithm 1 (and 2) on one batch of sampled rewards and reference log-probs.
* ``mara_target``: the exact target after augmentation over the whole arm set (MARA Eq. 11), and
  with ``kl_beta`` the target of a mismatched pairing (e.g. MARA's rewards without its KL term).
* ``crossover_beta``: the beta at which two good modes are equally likely (MARA Eq. 10).

Algorithm 1: the anchor z is the sample with the highest reference log-prob among those with
R >= tau; every such sample gets R(z) + beta (log pi_ref(z) - log pi_ref(y)), the others keep R.
Algorithm 2 (App. B.8): good samples get reward R(z) and the KL term uses pi_ref(z) in place of
their own pi_ref. Its exact target maximizes

    sum_y pi(y) rbar(y) - beta sum_y refbar(y) f(pi(y) / refbar(y)),

refbar(y) = pi_ref(z) for good arms and pi_ref(y) otherwise. refbar is unnormalized, but the KKT
form pi = refbar (f')^{-1}((rbar - lambda)/beta) still holds (``targets.kkt_policy``). With both
rbar and refbar constant over good arms, the Algorithm 2 target is uniform over good arms for
every f; Algorithm 1 is uniform under reverse KL only (notes §2, "Forward KL").

Deliberate choices (not in the paper):
* No sample/arm with R >= tau: nothing is augmented (the third-party reimplementation's rule).
* In ``mara_target`` the anchor and the augmentation only range over arms with pi_ref > 0; good
  arms with pi_ref = 0 stay off support (pi* = 0, see ``targets.py``), in both variants.
"""

from __future__ import annotations

import numpy as np

from .targets import as_beta, as_reference, as_rewards, kkt_policy


def _check_common(beta, tau, variant: int) -> None:
    if variant not in (1, 2):
        raise ValueError(f"variant={variant!r} must be 1 (Algorithm 1) or 2 (Algorithm 2)")
    if not np.isfinite(tau):
        raise ValueError(f"tau={tau!r} must be a finite reward threshold")


def mara_rewards(rewards, reference_logprobs, beta: float, tau: float, variant: int = 1):
    """MARA on one batch (Algorithm 1, or 2 with ``variant=2``).

    Args:
        rewards: (N,) sampled rewards R(y_i).
        reference_logprobs: (N,) log pi_ref(y_i), finite.
        beta: the KL coefficient (> 0) of the RL objective.
        tau: reward threshold; samples with R >= tau are "good".

    Returns:
        variant 1: (N,) augmented rewards. variant 2: (rewards, kl_reference_logprobs) where good
        samples get R(z) and the anchor's log pi_ref, the others keep theirs. Inputs are unchanged
        (copies returned) when no sample has R >= tau.

    >>> mara_rewards([0.0, 1.0, 1.0], np.log([0.68, 0.30, 0.02]), 0.05, 1.0).round(4)
    array([0.    , 1.    , 1.1354])
    """
    _check_common(beta, tau, variant)
    r = as_rewards(rewards)
    logref = as_rewards(reference_logprobs, "reference_logprobs")
    if logref.size != r.size:
        raise ValueError(f"rewards has {r.size} samples but reference_logprobs has {logref.size}; "
                         "pass one reference log-prob per sample")
    if np.any(logref > 0):
        raise ValueError("reference_logprobs must be <= 0 (log-probabilities)")
    betas, scalar = as_beta(beta)
    if not scalar:
        raise ValueError("beta must be a scalar for mara_rewards (one batch, one coefficient)")
    good = r >= tau
    if not good.any():
        return (r.copy(), logref.copy()) if variant == 2 else r.copy()
    z = np.flatnonzero(good)[np.argmax(logref[good])]          # anchor: Algorithm 1, line 2
    if variant == 2:
        return np.where(good, r[z], r), np.where(good, logref[z], logref)
    return np.where(good, r[z] + betas[0] * (logref[z] - logref), r)


def mara_target(rewards, reference, beta, tau: float, divergence: str = "reverse_kl",
                alpha: float = 0.5, variant: int = 1, kl_beta=None) -> np.ndarray:
    """Exact target of MARA over the full arm set (MARA Eq. 11; App. B.7-B.8).

    Same arguments and output shape as ``optimal_policy`` plus tau and variant (1 or 2).
    ``kl_beta`` is the KL coefficient of the objective the augmented rewards sit in. MARA defines
    it as ``beta`` itself (None, the default): that pairing is what makes the target uniform.
    Any other value shows what a mismatched pairing does (variant 1 only); ``kl_beta=0`` is "MARA's
    rewards without its KL" (e.g. GRPO with augmented rewards), whose maximizer of E[R_bar] puts all
    mass on the good arm with the *lowest* pi_ref (papers/mara.md, "MARA's beta is the KL coefficient").

    >>> mara_target([0.0, 1.0, 1.0], [0.68, 0.30, 0.02], 0.05, 1.0).round(3)
    array([0. , 0.5, 0.5])
    >>> mara_target([0.0, 1.0, 1.0, 1.0], [0.5, 0.3, 0.15, 0.05], 0.05, 1.0, kl_beta=0.0)
    array([0., 0., 0., 1.])
    """
    _check_common(beta, tau, variant)
    r = as_rewards(rewards)
    p = as_reference(reference, r.size)
    betas, scalar = as_beta(beta)
    if kl_beta is not None:
        if variant != 1:
            raise ValueError("kl_beta applies to variant 1 only (variant 2 rewrites the KL term itself)")
        return _mismatched_target(r, p, betas, scalar, tau, float(kl_beta), divergence, alpha)
    good = (r >= tau) & (p > 0)
    if not good.any():
        pi = kkt_policy(r[None, :], p, betas, divergence, alpha)
        return pi[0] if scalar else pi
    z = np.flatnonzero(good)[np.argmax(p[good])]               # max-pi_ref good arm
    if variant == 1:
        with np.errstate(divide="ignore"):
            bonus = np.where(good, np.log(p[z]) - np.log(np.where(good, p, 1.0)), 0.0)
        rbar = np.where(good, r[z] + betas[:, None] * bonus, r)  # (B, n)
        pi = kkt_policy(rbar, p, betas, divergence, alpha)
    else:
        rbar = np.where(good, r[z], r)
        refbar = np.where(good, p[z], p)                       # unnormalized KL weights
        pi = kkt_policy(rbar[None, :], refbar, betas, divergence, alpha)
    return pi[0] if scalar else pi


def _mismatched_target(r, p, betas, scalar, tau, kl_beta, divergence, alpha) -> np.ndarray:
    """Algorithm 1's rewards (with each ``beta``) inside an objective whose KL coefficient is
    ``kl_beta``; ``kl_beta=0``: the argmax of E[R_bar], ties shared equally."""
    if not (np.isfinite(kl_beta) and kl_beta >= 0):
        raise ValueError(f"kl_beta={kl_beta!r} must be a finite number >= 0")
    good = (r >= tau) & (p > 0)
    rows = []
    for b in betas:
        rbar = r.copy()
        if good.any():
            z = np.flatnonzero(good)[np.argmax(p[good])]
            rbar[good] = r[z] + b * (np.log(p[z]) - np.log(p[good]))
        if kl_beta > 0:
            rows.append(kkt_policy(rbar[None, :], p, np.array([kl_beta]), divergence, alpha)[0])
        else:
            on = p > 0
            best = on & np.isclose(rbar, rbar[on].max(), rtol=0, atol=1e-12)
            rows.append(best / best.sum())
    pi = np.array(rows)
    return pi[0] if scalar else pi


def crossover_beta(r1, logref1, r2, logref2):
    """beta* = (R2 - R1) / (log pi_ref(y1) - log pi_ref(y2)) (MARA Eq. 10, Remark 4.4).

    At beta* the two arms are equally likely under the reverse-KL target. When y2 has the higher
    reward and y1 the higher reference probability, beta < beta* favours y2 and beta > beta*
    favours y1. A non-positive or infinite value means no crossover at any beta > 0.

    >>> round(crossover_beta(0.75, -4.05, 1.0, -5.95), 3)   # MARA Fig. 2 modes
    0.132
    """
    with np.errstate(divide="ignore", invalid="ignore"):
        out = (np.asarray(r2, dtype=float) - np.asarray(r1, dtype=float)) / (
            np.asarray(logref1, dtype=float) - np.asarray(logref2, dtype=float))
    return out if np.ndim(out) else float(out)
