"""f-divergences, defined once for the whole project (DESIGN.md §1, first table).

``D_f(p || q) = sum_y q(y) f(p(y)/q(y))`` with f convex and f(1) = 0. We always regularize the
policy against the reference, ``D_f(pi || pi_ref)``, with the likelihood ratio ``u = pi / pi_ref``
and the log-ratio ``x = log pi - log pi_ref``.

Every function here works on numpy arrays *and* torch tensors (the trainer in ``dphrl_mini``
imports these same definitions), so a divergence is written exactly once:

* ``generator(u)``            f(u)
* ``generator_derivative(u)`` f'(u)
* ``inverse_derivative(t)``   (f')^{-1}(t), the map used by the KKT solution of the optimal target
* ``generator_loss(x)``       f(e^x) - f'(1)(e^x - 1): the per-token generator loss DPH-RL applies on
  samples drawn from pi_ref. Adding the linear term keeps ``E_ref[.]`` equal to ``D_f`` (because
  ``E_ref[u - 1] = 0``) and makes every per-sample value >= 0 with its minimum at u = 1. For
  forward KL this is exactly DPH-F's k3 form ``e^x - x - 1``; for JS and alpha f'(1) = 0, so it is
  the plain generator as released.
* ``kl_estimator(x, kind)``   k1/k2/k3 estimators of the *reverse* KL on on-policy samples
  (Schulman's note, http://joschu.net/blog/kl-approx.html), used by the RKL baseline.

Conventions (DESIGN.md): alpha in (0, 1) with alpha -> 0 giving reverse KL and alpha -> 1 giving
forward KL; "js" is 2 x Jensen-Shannon, f(u) = u log u - (u+1) log((u+1)/2).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

DIVERGENCES: tuple[str, ...] = ("reverse_kl", "forward_kl", "js", "alpha", "chi2")
"""Every divergence the project knows, by the name used everywhere (configs, plots, notebooks)."""

KL_ESTIMATORS: tuple[str, ...] = ("k1", "k2", "k3")

LOG2 = math.log(2.0)


def check_divergence(divergence: str, alpha: float = 0.5) -> None:
    """Raise a ``ValueError`` naming the argument for an unknown divergence or a bad alpha."""
    if divergence not in DIVERGENCES:
        raise ValueError(f"divergence={divergence!r} is unknown; choose one of {DIVERGENCES}")
    if divergence == "alpha" and not (0.0 < float(alpha) < 1.0):
        raise ValueError(f"alpha={alpha!r} must lie strictly inside (0, 1) for the alpha divergence")


def _is_torch(a: Any) -> bool:
    return type(a).__module__.startswith("torch")


def _ops(a: Any):
    """The array namespace of ``a``: torch for tensors, numpy otherwise."""
    if _is_torch(a):
        import torch

        return torch
    return np


def _as_array(a: Any):
    return a if _is_torch(a) else np.asarray(a, dtype=float)


def generator(u, divergence: str, alpha: float = 0.5):
    """f(u) for u >= 0, with the limits at u = 0 filled in (DESIGN.md §1 table).

    >>> float(generator(1.0, "js"))
    0.0
    """
    check_divergence(divergence, alpha)
    u = _as_array(u)
    xp = _ops(u)
    if divergence == "reverse_kl":
        safe = xp.where(u > 0, u, xp.ones_like(u))
        return xp.where(u > 0, u * xp.log(safe), xp.zeros_like(u))
    if divergence == "forward_kl":
        return -xp.log(u)  # +inf at u = 0: forward KL forbids dropping reference mass
    if divergence == "js":
        safe = xp.where(u > 0, u, xp.ones_like(u))
        ulogu = xp.where(u > 0, u * xp.log(safe), xp.zeros_like(u))
        return ulogu - (u + 1) * xp.log((u + 1) / 2)
    if divergence == "alpha":
        a = float(alpha)
        return (u ** (1 - a) - (1 - a) * u - a) / (a * (a - 1))
    return (u - 1) ** 2  # chi2


def generator_derivative(u, divergence: str, alpha: float = 0.5):
    """f'(u) for u > 0 (DESIGN.md §1 table)."""
    check_divergence(divergence, alpha)
    u = _as_array(u)
    xp = _ops(u)
    if divergence == "reverse_kl":
        return xp.log(u) + 1
    if divergence == "forward_kl":
        return -1 / u
    if divergence == "js":
        return xp.log(2 * u / (u + 1))
    if divergence == "alpha":
        a = float(alpha)
        return (1 - u ** (-a)) / a
    return 2 * (u - 1)  # chi2


def derivative_sup(divergence: str, alpha: float = 0.5) -> float:
    """sup of f' over u > 0: the KKT target needs (r - lambda)/beta below it.

    reverse KL and chi2 are unbounded; forward KL -> 0, JS -> log 2, alpha -> 1/alpha.
    """
    check_divergence(divergence, alpha)
    return {"reverse_kl": math.inf, "forward_kl": 0.0, "js": LOG2,
            "alpha": 1.0 / float(alpha), "chi2": math.inf}[divergence]


def inverse_derivative(t, divergence: str, alpha: float = 0.5):
    """(f')^{-1}(t): the ratio pi*/pi_ref at which the marginal regularizer cost equals t.

    Defined for t < ``derivative_sup``; for chi2 (whose f' reaches u = 0 at t = -2) the result is
    clipped at 0, which is how chi2 targets drop arms exactly (MARA notes §5).
    """
    check_divergence(divergence, alpha)
    t = _as_array(t)
    xp = _ops(t)
    if divergence == "reverse_kl":
        return xp.exp(t - 1)
    if divergence == "forward_kl":
        return -1 / t
    if divergence == "js":
        e = xp.exp(t)
        return e / (2 - e)
    if divergence == "alpha":
        a = float(alpha)
        return (1 - a * t) ** (-1 / a)
    zero = xp.zeros_like(t)
    return xp.where(1 + t / 2 > 0, 1 + t / 2, zero)  # chi2


def generator_loss(x, divergence: str, alpha: float = 0.5):
    """Per-sample generator loss f(e^x) - f'(1)(e^x - 1) at log-ratio x = log pi - log pi_ref.

    Its mean over samples drawn from pi_ref estimates D_f(pi || pi_ref) without bias; every value
    is >= 0 and equals 0 at x = 0. Written in x for stability at large |x|:

    * forward KL (DPH-F, k3 form): e^x - x - 1
    * JS (DPH-JS, released ``js_low_var``): u log u - (u+1) log((u+1)/2), u = e^x
    * alpha (DPH-alpha): (u^(1-a) - (1-a) u - a) / (a (a-1))
    * reverse KL: x e^x - e^x + 1
    * chi2: (e^x - 1)^2

    >>> round(float(generator_loss(1.0, "forward_kl")), 6) == round(math.e - 2, 6)
    True
    """
    check_divergence(divergence, alpha)
    x = _as_array(x)
    xp = _ops(x)
    u = xp.exp(x)
    if divergence == "forward_kl":
        return xp.expm1(x) - x
    if divergence == "js":
        # log((u+1)/2) = logaddexp(x, 0) - log 2, finite for every x
        return u * x - (u + 1) * (xp.logaddexp(x, xp.zeros_like(x)) - LOG2)
    if divergence == "alpha":
        a = float(alpha)
        return (xp.exp((1 - a) * x) - (1 - a) * u - a) / (a * (a - 1))
    if divergence == "reverse_kl":
        return x * u - xp.expm1(x)
    return xp.expm1(x) ** 2  # chi2


def kl_estimator(x, kind: str = "k3"):
    """Per-sample estimators of KL(pi || pi_ref) on samples from pi, x = log pi - log pi_ref.

    k1 = x (unbiased, high variance, can be negative); k2 = x^2 / 2 (biased, low variance);
    k3 = e^{-x} - 1 + x (unbiased, >= 0; the "low_var_kl" of verl and DPH-RL's RKL baseline).
    """
    if kind not in KL_ESTIMATORS:
        raise ValueError(f"kind={kind!r} is unknown; choose one of {KL_ESTIMATORS}")
    x = _as_array(x)
    xp = _ops(x)
    if kind == "k1":
        return x
    if kind == "k2":
        return 0.5 * x**2
    return xp.expm1(-x) + x


def f_divergence(p, q, divergence: str, alpha: float = 0.5) -> float:
    """Exact D_f(p || q) = sum_y q(y) f(p(y)/q(y)) for probability vectors (numpy).

    Arms with q(y) = 0 contribute q f(p/q) -> p * lim_{u->inf} f(u)/u (0 if p = 0); that limit is
    +inf for reverse KL and chi2, 0 for forward KL, log 2 for JS and 1/alpha for alpha.
    """
    p = np.asarray(p, dtype=float)
    q = np.asarray(q, dtype=float)
    on = q > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        inner = np.sum(q[on] * generator(p[on] / q[on], divergence, alpha))
    off_mass = float(np.sum(p[~on]))
    if off_mass == 0.0:
        return float(inner)
    slope = {"reverse_kl": math.inf, "forward_kl": 0.0, "js": LOG2,
             "alpha": 1.0 / float(alpha), "chi2": math.inf}[divergence]
    return float(inner + off_mass * slope)
