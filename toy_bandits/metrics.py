"""Exact metrics of a bandit policy (DESIGN.md §1 "Metrics", in closed form for a known policy).

* ``pass_at_k``: probability that at least one of k independent draws is correct,
  1 - (1 - pi(correct))^k. This is the population value the unbiased estimator
  1 - C(n-c, k)/C(n, k) of ``dphrl_mini.evaluate`` estimates from n samples.
* ``coverage``: the fraction (or, with ``normalize=False``, the number) of correct arms that hold
  at least ``eps`` probability: how many distinct correct answers the policy still produces.
* ``entropy``: Shannon entropy in nats with 0 log 0 = 0.

Every function accepts a single policy (n,) or a stack of policies (..., n), e.g. one row per beta
from ``optimal_policy``, and reduces over the last axis.
"""

from __future__ import annotations

import numpy as np


def _as_policy(policy) -> np.ndarray:
    pi = np.asarray(policy, dtype=float)
    if pi.ndim == 0 or pi.shape[-1] == 0:
        raise ValueError(f"policy must have shape (n,) or (..., n); got {pi.shape}")
    if not np.all(np.isfinite(pi)) or np.any(pi < 0):
        raise ValueError("policy must be finite and non-negative (probability vectors)")
    if not np.allclose(pi.sum(axis=-1), 1.0, rtol=0, atol=1e-6):
        raise ValueError("each policy row must sum to 1; normalize it along the last axis")
    return pi


def _as_mask(correct, n: int) -> np.ndarray:
    c = np.asarray(correct)
    if c.shape != (n,):
        raise ValueError(f"correct has shape {c.shape} but policy has {n} arms; "
                         "pass one boolean per arm (e.g. bandit.correct(tau))")
    if c.dtype != bool:
        if not np.all(np.isin(c, (0, 1))):
            raise ValueError("correct must be a boolean mask (or 0/1 values)")
        c = c.astype(bool)
    return c


def pass_at_k(policy, correct, k):
    """1 - (1 - pi(correct))^k; output shape policy.shape[:-1] + np.shape(k).

    >>> float(pass_at_k([0.5, 0.5], [True, False], 2))
    0.75
    """
    pi = _as_policy(policy)
    mask = _as_mask(correct, pi.shape[-1])
    ks = np.asarray(k, dtype=float)
    if not np.all(np.isfinite(ks)) or np.any(ks < 1):
        raise ValueError(f"k must be >= 1 (number of attempts); got {k!r}")
    miss = np.clip(1.0 - pi @ mask, 0.0, 1.0)                  # (...,) mass on wrong arms
    miss = miss.reshape(miss.shape + (1,) * ks.ndim)
    with np.errstate(divide="ignore"):
        out = -np.expm1(ks * np.log(miss))                     # stable for tiny correct mass
    return out if out.ndim else float(out)


def coverage(policy, correct, eps: float = 1e-3, normalize: bool = True):
    """Fraction of correct arms with probability >= eps (count with ``normalize=False``).

    NaN (as a fraction) when no arm is correct.

    >>> coverage([0.6, 0.3999, 0.0001], [True, True, True])
    0.6666666666666666
    """
    pi = _as_policy(policy)
    mask = _as_mask(correct, pi.shape[-1])
    if not eps > 0:
        raise ValueError(f"eps must be > 0; got {eps!r}")
    count = np.sum((pi >= eps) & mask, axis=-1)
    if normalize:
        n_correct = int(mask.sum())
        out = count / n_correct if n_correct else np.full(np.shape(count), np.nan)
    else:
        out = count
    return out if np.ndim(out) else out.item()


def entropy(policy):
    """Shannon entropy in nats, -sum pi log pi with 0 log 0 = 0.

    >>> round(entropy([0.5, 0.5, 0.0]), 6)
    0.693147
    """
    pi = _as_policy(policy)
    safe = np.where(pi > 0, pi, 1.0)
    out = -np.sum(pi * np.log(safe), axis=-1)
    return out if out.ndim else float(out)
