"""Exact optimal targets of f-regularized reward maximization on a bandit (DESIGN.md §1).

``optimal_policy`` returns the maximizer of ``E_pi[r] - beta * D_f(pi || pi_ref)`` over the
simplex. The KKT solution (DESIGN.md §1 "Optimal regularized target"; MARA notes §5) is

    pi*(y) = pi_ref(y) * (f')^{-1}((r(y) - lambda) / beta),

clipped at 0 for chi2, with lambda the unique root that normalizes pi*. Reverse KL is the closed
form pi* ∝ pi_ref exp(r / beta) (MARA Eq. 2), computed as a softmax in log space.

How lambda is found (forward KL, JS, alpha). Write lambda = r_max + beta * (c_min + v) with
c_min = -sup f' and v > 0, and d(y) = (r_max - r(y)) / beta >= 0. Then pi*(y) = w(y) g(d(y) + v)
with g(s) = (f')^{-1}(sup f' - s), a decreasing function written without cancellation:

* forward KL: g(s) = 1 / s           (MARA Eq. 5 with Lambda = r_max + beta s)
* JS:         g(s) = 1 / expm1(s)
* alpha:      g(s) = (alpha s)^(-1/alpha)

The normalizer S(v) = sum_y w(y) g(d(y) + v) decreases in v, and since 0 <= d, S is bracketed:
g(v) * m <= S(v) <= g(v) * W with m the mass on the best arms and W the total mass, so the root
lies in [g^{-1}(1/m), g^{-1}(1/W)] for every beta. We run a bracketed Newton iteration on
log S against log v (exact when one arm dominates, so few steps), vectorized over all betas.
chi2's truncated target is solved exactly by sorting arms by reward, like sparsemax.

Deliberate choices:
* Arms with pi_ref(y) = 0 get pi*(y) = 0 (the KKT form). For reverse KL and chi2 that is forced
  (off-support mass has infinite cost). For forward KL, JS and alpha it is also the unrestricted
  maximizer whenever no off-support arm has a reward above the best on-support reward; otherwise
  (MARA App. B.3) the unrestricted maximizer could move mass off support, and we return the
  maximizer among policies with pi << pi_ref (what a policy trained from pi_ref can represent).
* The weights w may be unnormalized (used by MARA Algorithm 2, see ``mara.py``); the KKT form
  holds unchanged.
"""

from __future__ import annotations

import numpy as np

from .divergences import DIVERGENCES, check_divergence

_NEWTON_TOL = 1e-13
_MAX_ITER = 200


# ----------------------------------------------------------------------------- validation
def as_rewards(rewards, name: str = "rewards") -> np.ndarray:
    """A finite 1-D float array, or a ``ValueError`` naming the argument."""
    r = np.asarray(rewards, dtype=float)
    if r.ndim != 1 or r.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D array (one value per arm); got shape {r.shape}")
    if not np.all(np.isfinite(r)):
        raise ValueError(f"{name} contains NaN or inf; pass finite values")
    return r


def as_reference(reference, n_arms: int | None = None, rewards_name: str = "rewards") -> np.ndarray:
    """A probability vector (exact zeros allowed), renormalized to remove rounding error."""
    p = np.asarray(reference, dtype=float)
    if p.ndim != 1 or p.size == 0:
        raise ValueError(f"reference must be a non-empty 1-D probability vector; got shape {p.shape}")
    if n_arms is not None and p.size != n_arms:
        raise ValueError(f"{rewards_name} has {n_arms} arms but reference has {p.size}; "
                         f"pass one {rewards_name} entry and one reference probability per arm")
    if not np.all(np.isfinite(p)) or np.any(p < 0):
        raise ValueError("reference must be finite and non-negative; pass a probability vector")
    total = p.sum()
    if abs(total - 1.0) > 1e-8:
        raise ValueError(f"reference sums to {total!r}, not 1; normalize it first (reference / reference.sum())")
    return p / total


def as_beta(beta) -> tuple[np.ndarray, bool]:
    """(betas as a 1-D array, whether beta was a scalar); every beta must be finite and > 0."""
    b = np.asarray(beta, dtype=float)
    if b.ndim > 1 or b.size == 0:
        raise ValueError(f"beta must be a positive scalar or a non-empty 1-D array; got shape {b.shape}")
    if not np.all(np.isfinite(b)) or np.any(b <= 0):
        raise ValueError(f"beta must be finite and > 0; got {beta!r}")
    return np.atleast_1d(b), b.ndim == 0


# ----------------------------------------------------------------------------- g and its inverse
def _g(s: np.ndarray, divergence: str, alpha: float) -> np.ndarray:
    """g(s) = (f')^{-1}(sup f' - s) for s > 0 (see the module docstring)."""
    with np.errstate(over="ignore", divide="ignore"):
        if divergence == "forward_kl":
            return 1.0 / s
        if divergence == "js":
            return 1.0 / np.expm1(s)
        return (1.0 / (alpha * s)) ** (1.0 / alpha)           # alpha (fast path for 1/alpha = 2)


def _g_prime(s: np.ndarray, g: np.ndarray, divergence: str, alpha: float) -> np.ndarray:
    """g'(s) for s > 0, from g(s)."""
    if divergence == "forward_kl":
        return -g * g
    if divergence == "js":
        return -g * (1.0 + g)
    return -g / (alpha * s)                                    # alpha


def _g_inverse(y: np.ndarray, divergence: str, alpha: float) -> np.ndarray:
    """s such that g(s) = y, for y > 0."""
    if divergence == "forward_kl":
        return 1.0 / y
    if divergence == "js":
        return np.log1p(1.0 / y)
    return y ** (-alpha) / alpha                               # alpha


# ----------------------------------------------------------------------------- solvers
def _newton_policy(d: np.ndarray, w: np.ndarray, divergence: str, alpha: float) -> np.ndarray:
    """pi (B, n) = w g(d + v) / S with v the root of S(v) = sum_y w(y) g(d(y) + v) = 1.

    d (B, n) >= 0 with min 0 per row. Bracketed Newton on log S against log v (bisection in log v
    when a step leaves the bracket); each row keeps its last evaluation once |log S| < tol.
    """
    top = (d == 0) @ w                                         # (B,) mass on the best arms
    total_w = w.sum()
    v_hi = _g_inverse(np.full_like(top, 1.0 / total_w), divergence, alpha)  # S(v_hi) <= 1
    # Lower bounds with S(v) >= 1: the best arms alone, and Jensen (g convex) on the mean d.
    v_lo = np.maximum(_g_inverse(1.0 / top, divergence, alpha), v_hi - (d @ w) / total_w)
    lo, hi = np.log(v_lo), np.log(v_hi)
    logv = lo.copy()
    pi = np.broadcast_to(w / total_w, d.shape).copy()         # exact where every arm is best
    active = np.flatnonzero(hi > lo)
    for _ in range(_MAX_ITER):
        if active.size == 0:
            break
        rows = slice(None) if active.size == d.shape[0] else active
        lv, lo_a, hi_a = logv[active], lo[active], hi[active]
        v = np.exp(lv)
        s = d[rows] + v[:, None]                               # (A, n)
        g = _g(s, divergence, alpha)
        total = g @ w                                          # (A,)
        slope = v * (_g_prime(s, g, divergence, alpha) @ w) / total   # d log S / d log v < 0
        f = np.log(total)                                      # log S, decreasing in log v
        done = np.abs(f) < _NEWTON_TOL
        if done.any():
            pi[active[done]] = g[done] * w / total[done, None]
        lo_a = np.where(f > 0, lv, lo_a)
        hi_a = np.where(f > 0, hi_a, lv)
        with np.errstate(divide="ignore", invalid="ignore"):
            step = lv - f / slope
        inside = (step > lo_a) & (step < hi_a)
        logv[active] = np.where(inside, step, 0.5 * (lo_a + hi_a))
        lo[active], hi[active] = lo_a, hi_a
        done |= hi_a - lo_a <= 1e-15 * np.abs(hi_a)            # bracket collapsed: evaluate below
        stuck = active[done & ~(np.abs(f) < _NEWTON_TOL)]
        if stuck.size:
            g = w * _g(d[stuck] + np.exp(logv[stuck])[:, None], divergence, alpha)
            pi[stuck] = g / g.sum(axis=1, keepdims=True)
        active = active[~done]
    if active.size:                                            # _MAX_ITER reached (not seen)
        g = w * _g(d[active] + np.exp(logv[active])[:, None], divergence, alpha)
        pi[active] = g / g.sum(axis=1, keepdims=True)
    return pi


def _chi2_policy(delta: np.ndarray, w: np.ndarray, beta: np.ndarray) -> np.ndarray:
    """Exact chi2 target w * max(0, 1 - (d + c)/2): sort by d, find the active prefix (sparsemax)."""
    order = np.argsort(delta, axis=1, kind="stable")           # (1 or B, n)
    ws = w[order]
    ds = np.take_along_axis(delta, order, axis=1) / beta[:, None]   # (B, n)
    mass = np.cumsum(ws, axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        c = (2.0 * (mass - 1.0) - np.cumsum(ws * ds, axis=1)) / mass    # c if the first k are active
    ok = (ds + c < 2.0) & (mass > 0)
    k = ok.shape[1] - 1 - np.argmax(ok[:, ::-1], axis=1)        # last prefix that is consistent
    c_star = np.take_along_axis(c, k[:, None], axis=1)          # (B, 1)
    return w * np.maximum(0.0, 1.0 - (delta / beta[:, None] + c_star) / 2.0)


def kkt_policy(rewards: np.ndarray, weights: np.ndarray, beta: np.ndarray,
               divergence: str, alpha: float = 0.5) -> np.ndarray:
    """Maximizer of sum pi r - beta sum_y w f(pi / w) on the simplex, one row per beta.

    rewards (1 or B, n) finite, weights (n,) >= 0 with a positive entry (need not sum to 1),
    beta (B,) > 0. Returns (B, n); arms with w = 0 get 0. Inputs are assumed validated.
    """
    check_divergence(divergence, alpha)
    on = weights > 0
    r, w = rewards[:, on], weights[on]
    B = beta.size
    if divergence == "reverse_kl":
        logits = np.log(w) + r / beta[:, None]                 # MARA Eq. 2, in log space
        logits = logits - logits.max(axis=1, keepdims=True)
        p = np.exp(logits)
    else:
        delta = r.max(axis=1, keepdims=True) - r               # (1 or B, n) >= 0
        if divergence == "chi2":
            p = _chi2_policy(delta, w, beta)
        else:
            p = _newton_policy(delta / beta[:, None], w, divergence, float(alpha))
    p = np.broadcast_to(p, (B, w.size))
    out = np.zeros((B, weights.size))
    out[:, on] = p / p.sum(axis=1, keepdims=True)
    return out


def optimal_policy(rewards, reference, beta, divergence: str = "reverse_kl",
                   alpha: float = 0.5) -> np.ndarray:
    """Exact maximizer of E_pi[r] - beta D_f(pi || reference) (DESIGN.md §1).

    Args:
        rewards: (n,) finite rewards, one per arm.
        reference: (n,) probability vector pi_ref (exact zeros allowed: pi* = 0 there).
        beta: regularization strength > 0, scalar or 1-D array.
        divergence: one of ``DIVERGENCES``; alpha in (0, 1) for the alpha divergence.

    Returns:
        (n,) probability vector, or (len(beta), n) with one row per beta.

    >>> optimal_policy([0.0, 0.9, 1.0], [1/3, 1/3, 1/3], 0.5).round(3)
    array([0.069, 0.419, 0.512])
    """
    if divergence not in DIVERGENCES:
        raise ValueError(f"divergence={divergence!r} is unknown; choose one of {DIVERGENCES}")
    check_divergence(divergence, alpha)
    r = as_rewards(rewards)
    p = as_reference(reference, r.size)
    betas, scalar = as_beta(beta)
    pi = kkt_policy(r[None, :], p, betas, divergence, alpha)
    return pi[0] if scalar else pi
