"""Sample-based training of a softmax policy on a bandit, with each regularizer as an LLM trainer uses it.

The policy is ``pi = softmax(theta)`` over the arms, initialised at the reference
(``theta = log pi_ref``), and trained to maximize ``E_pi[r] - beta D_f(pi || pi_ref)``
(DESIGN.md §1, "Optimal regularized target"). Every gradient is written in closed form with the
softmax score ``d log pi(y) / d theta = onehot(y) - pi``, so one step is a handful of vectorized
numpy calls and a few thousand steps take a fraction of a second.

One step (``estimator="sample"``):

1. Sample a group of ``group_size`` arms ``y_i ~ pi`` and read their rewards ``r_i``.
2. MARA (DESIGN.md §1, Algorithm 1): ``mara=True`` replaces the group's rewards with
   ``mara_rewards(r, log pi_ref(y), beta, tau)``. The anchor is chosen *inside the group*, as in
   the paper. ``mara_variant=2`` also swaps the reference log-prob used by an on-policy KL term
   for the anchor's (Algorithm 2).
3. Advantages. ``advantage="mean"`` uses the leave-one-out (RLOO) baseline
   ``r_i - mean_{j != i} r_j``, which gives an unbiased gradient of ``E_pi[r]``.
   ``advantage="grpo"`` uses ``(r_i - mean r) / (std r + eps)``. Dividing by the group's std
   rescales the reward gradient by a policy-dependent factor that the regularizer term does not
   get, so the fixed point moves. The effective beta becomes roughly ``beta * std``.
4. The regularizer. For each one we say which gradient it follows and where it converges:

   * ``"none"``: policy gradient only.
   * ``"reverse_kl_k1"`` (KL in the reward): ``r_i <- r_i - beta * k1(x_i)`` with
     ``x_i = log pi(y_i) - log pi_ref(y_i)``, treated as a constant. Since ``E_pi[grad log pi] = 0``,
     ``E_pi[(r - beta x) grad log pi]`` is *exactly* the gradient of ``E_pi[r] - beta KL(pi||ref)``.
     It is unbiased and converges to the reverse-KL target.
   * ``"reverse_kl_k3"`` (k3 as a loss, verl's ``low_var_kl`` used as a loss): adds
     ``-beta * mean_i k3(x_i)`` to the objective and differentiates through ``x_i``
     (``dk3/dx = 1 - e^{-x}``). Its expectation is ``sum_y (pi - ref)(onehot(y) - pi) = pi - ref``,
     which is the gradient of the *forward* KL ``KL(ref || pi)``, not of the reverse KL it estimates.
     It is biased for the reverse-KL objective and converges to the forward-KL target.
     ``TrainResult.target`` is still the reverse-KL target, so the bias shows up as the gap.
   * ``"reverse_kl"``, ``"forward_kl"``, ``"js"``, ``"alpha"``, ``"chi2"`` (DPH-RL): the generator
     loss ``l(x) = divergences.generator_loss(x)`` is averaged over ``group_size`` samples drawn from
     the *reference*, ``x = log pi - log pi_ref``. Its gradient is
     ``l'(x) (onehot(y) - pi)`` with ``l'(x) = e^x (f'(e^x) - f'(1))``. In expectation under pi_ref
     this is exactly ``grad_theta D_f(pi || pi_ref)``, so it is unbiased and converges to the
     f-target. DPH-RL applies it only to "near-perfect" prompts. A bandit has one prompt, so here
     it is applied every step with coefficient beta.

5. Ascent with Adam or SGD on theta. The learning rate is constant for the first half of the run
   and then decays with a cosine to ``lr_final_fraction * lr``. ``final`` is the Polyak average of
   the policies over the last ``average_last`` fraction of steps.

``estimator="exact"`` is the oracle. It follows the full expected gradient
``pi * (g - <pi, g>)`` with ``g(y) = r(y) - beta f'(pi(y) / pi_ref(y))`` of the regularizer's
*intended* divergence (the reverse KL for both k1 and k3). It has no sampling noise, so it
converges to ``optimal_policy`` (or ``mara_target``, where the MARA anchor is the best-supported
good arm over the whole bandit). ``final`` is the last iterate.

Departures, all deliberate:

* Arms outside the reference's support stay at probability 0, because the softmax starts at
  ``log pi_ref``. The off-support forward-KL case of MARA notes §1 (App. B.3) is out of reach.
* With ``mara=True`` in sample mode the anchor is the best-supported good arm *in the group*. When
  that arm is often missing from the group, the augmented rewards are smaller than the exact
  (global-anchor) ones, and training settles slightly off ``mara_target``. Notebook 03 shows this.
* ``mara_variant=2`` in sample mode only swaps the reference of an on-policy KL term
  (``reverse_kl_k1``/``reverse_kl_k3``). DPH divergences are estimated on reference samples, so
  nothing is swapped and it is rejected there. Exact mode accepts it for every divergence.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .divergences import check_divergence, generator_derivative, kl_estimator
from .mara import mara_rewards, mara_target
from .targets import optimal_policy

REGULARIZERS: tuple[str, ...] = ("none", "reverse_kl_k1", "reverse_kl_k3", "reverse_kl",
                                 "forward_kl", "js", "alpha", "chi2")
"""Regularizers accepted by ``train_policy``. The last five are DPH-style generator losses."""

ADVANTAGES: tuple[str, ...] = ("mean", "grpo")
OPTIMIZERS: tuple[str, ...] = ("adam", "sgd")
ESTIMATORS: tuple[str, ...] = ("sample", "exact")


def regularizer_divergence(regularizer: str) -> str | None:
    """The divergence a regularizer is *meant* to impose (None for ``"none"``)."""
    if regularizer not in REGULARIZERS:
        raise ValueError(f"regularizer={regularizer!r} is unknown; choose one of {REGULARIZERS}")
    if regularizer == "none":
        return None
    return "reverse_kl" if regularizer.startswith("reverse_kl") else regularizer


@dataclass
class TrainResult:
    """Trajectory of one training run."""

    steps: np.ndarray
    """(R,) step index of each recorded policy."""
    policies: np.ndarray
    """(R, n_arms) the policy pi = softmax(theta) at those steps (raw iterates)."""
    final: np.ndarray
    """(n_arms,) final policy: Polyak average over the last steps (sample mode) or last iterate (exact)."""
    target: np.ndarray
    """(n_arms,) exact closed-form target of the regularizer's divergence (``mara_target`` with MARA)."""
    config: dict = field(default_factory=dict)
    """The arguments of the run, for labels and tables."""

    def tv_to_target(self) -> np.ndarray:
        """(R,) total variation 0.5 * sum |pi - target| along the trajectory."""
        return 0.5 * np.abs(self.policies - self.target).sum(axis=1)

    @property
    def final_tv(self) -> float:
        """Total variation between ``final`` and ``target``."""
        return float(0.5 * np.abs(self.final - self.target).sum())


def _exact_rewards(rewards, reference, beta, mara, tau, mara_variant):
    """Rewards and KL reference with a global MARA anchor (the expectation the exact oracle uses).

    Returns (rewards (A,), reference used in f'(pi / reference) (A,)); off-support arms untouched.
    """
    if not mara:
        return rewards, reference
    on = reference > 0
    r_bar = rewards.copy()
    ref_bar = reference.copy()
    logref = np.log(reference[on])
    if mara_variant == 1:
        r_bar[on] = mara_rewards(rewards[on], logref, beta, tau, variant=1)
    else:
        r_on, anchor_logref = mara_rewards(rewards[on], logref, beta, tau, variant=2)
        r_bar[on] = r_on
        ref_bar[on] = np.exp(anchor_logref)
    return r_bar, ref_bar


def exact_target(rewards, reference, beta, regularizer, *, alpha=0.5, mara=False, tau=1.0,
                 mara_variant=1) -> np.ndarray:
    """Closed-form target of the regularizer's divergence (DESIGN.md §1), with MARA if asked.

    ``"none"`` returns the beta -> 0 limit shared by every f-target: the reference restricted to
    the arms of maximal (augmented) reward, renormalized (MARA notes Remark 4.3).
    """
    rewards = np.asarray(rewards, dtype=float)
    reference = np.asarray(reference, dtype=float)
    divergence = regularizer_divergence(regularizer)
    if divergence is None:
        r_bar, _ = _exact_rewards(rewards, reference, beta, mara, tau, mara_variant)
        on = reference > 0
        best = on & np.isclose(r_bar, r_bar[on].max(), rtol=0, atol=1e-12)
        target = np.where(best, reference, 0.0)
        return target / target.sum()
    if mara:
        return np.asarray(mara_target(rewards, reference, beta, tau, divergence=divergence,
                                      alpha=alpha, variant=mara_variant), dtype=float)
    return np.asarray(optimal_policy(rewards, reference, beta, divergence=divergence, alpha=alpha),
                      dtype=float)


def _check_args(regularizer, beta, alpha, mara_variant, steps, group_size, lr, optimizer,
                estimator, advantage, record_every, average_last, mara):
    divergence = regularizer_divergence(regularizer)
    if divergence is not None:
        check_divergence(divergence, alpha)
    if not (np.isfinite(beta) and beta > 0) and regularizer != "none":
        raise ValueError(f"beta={beta!r} must be a positive finite number")
    if mara_variant not in (1, 2):
        raise ValueError(f"mara_variant={mara_variant!r} must be 1 or 2")
    if (mara and mara_variant == 2 and estimator == "sample"
            and regularizer not in ("none", "reverse_kl_k1", "reverse_kl_k3")):
        raise ValueError(f"mara_variant=2 swaps the reference of an on-policy KL term; "
                         f"regularizer={regularizer!r} uses reference samples, use mara_variant=1")
    if int(steps) != steps or steps < 1:
        raise ValueError(f"steps={steps!r} must be a positive integer")
    if int(group_size) != group_size or group_size < 2:
        raise ValueError(f"group_size={group_size!r} must be an integer >= 2")
    if not (lr > 0):
        raise ValueError(f"lr={lr!r} must be positive")
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer={optimizer!r} is unknown; choose one of {OPTIMIZERS}")
    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator={estimator!r} is unknown; choose one of {ESTIMATORS}")
    if advantage not in ADVANTAGES:
        raise ValueError(f"advantage={advantage!r} is unknown; choose one of {ADVANTAGES}")
    if int(record_every) != record_every or record_every < 1:
        raise ValueError(f"record_every={record_every!r} must be a positive integer")
    if not (0 < average_last <= 1):
        raise ValueError(f"average_last={average_last!r} must lie in (0, 1]")


def _advantages(r, advantage, eps=1e-6):
    """Group advantages (G,): leave-one-out baseline ("mean") or GRPO's std-normalized one."""
    g = r.shape[0]
    centered = r - r.mean()
    if advantage == "mean":
        return centered * (g / (g - 1))  # = r_i - mean_{j != i} r_j (RLOO), unbiased
    return centered / (r.std(ddof=1) + eps)  # GRPO: scaled by 1/std of the group


def _sample(rng, cdf, size):
    """(size,) arm indices drawn from the distribution with cumulative sums ``cdf``."""
    return np.minimum(np.searchsorted(cdf, rng.random(size) * cdf[-1], side="right"), cdf.size - 1)


def _score_mean(idx, weights, pi):
    """(A,) mean_i weights_i * (onehot(y_i) - pi): the softmax score-function average."""
    return np.bincount(idx, weights=weights, minlength=pi.size) / idx.size - pi * weights.mean()


def train_policy(bandit, regularizer: str = "reverse_kl_k1", beta: float = 0.1, *,
                 alpha: float = 0.5, mara: bool = False, tau: float = 1.0, mara_variant: int = 1,
                 steps: int = 2000, group_size: int = 16, reference_batch: int | None = None,
                 lr: float = 0.05,
                 optimizer: str = "adam", estimator: str = "sample", advantage: str = "mean",
                 average_last: float = 0.2, lr_final_fraction: float = 0.05, seed: int = 0,
                 record_every: int = 10, progress: bool = False) -> TrainResult:
    """Train ``pi = softmax(theta)`` on ``bandit`` with one regularizer; see the module docstring.

    Args:
        bandit: any object with ``rewards`` and ``reference`` arrays (``toy_bandits.Bandit``).
        regularizer: one of ``REGULARIZERS``.
        beta: regularization coefficient (also MARA's beta).
        alpha: alpha of the alpha divergence.
        mara, tau, mara_variant: MARA reward augmentation (Algorithm 1 or 2) with threshold tau.
        steps, group_size, lr, optimizer: the optimization loop (``group_size`` samples per step,
            from pi for the policy gradient and from pi_ref for DPH divergences).
        estimator: ``"sample"`` (stochastic, as an LLM trainer does) or ``"exact"`` (oracle).
        advantage: ``"mean"`` (leave-one-out baseline, unbiased) or ``"grpo"`` (std-normalized).
        average_last: fraction of final steps whose policies are averaged into ``final`` (sample mode).
        lr_final_fraction: the cosine decay over the second half of the run ends at this fraction of lr.
        seed: seed of the sampler.
        record_every: record the policy every this many steps.
        progress: show a tqdm bar.
    """
    _check_args(regularizer, beta, alpha, mara_variant, steps, group_size, lr, optimizer,
                estimator, advantage, record_every, average_last, mara)
    reference_batch = group_size if reference_batch is None else reference_batch
    if int(reference_batch) != reference_batch or reference_batch < 1:
        raise ValueError(f"reference_batch={reference_batch!r} must be a positive integer")
    rewards = np.asarray(bandit.rewards, dtype=float)  # (A,)
    reference = np.asarray(bandit.reference, dtype=float)  # (A,)
    reference = reference / reference.sum()
    on = reference > 0
    n_arms = rewards.size
    divergence = regularizer_divergence(regularizer)
    target = exact_target(rewards, reference, beta, regularizer, alpha=alpha, mara=mara, tau=tau,
                          mara_variant=mara_variant)

    theta = np.where(on, np.log(np.where(on, reference, 1.0)), -np.inf)  # (A,) start at pi_ref
    reference_logps = theta.copy()  # (A,) log pi_ref
    reference_cdf = np.cumsum(reference)
    r_exact, ref_exact = _exact_rewards(rewards, reference, beta, mara, tau, mara_variant)
    f_prime_one = 0.0 if divergence is None else float(generator_derivative(1.0, divergence, alpha))
    rng = np.random.default_rng(seed)
    m = np.zeros(n_arms)
    v = np.zeros(n_arms)
    half = steps // 2
    average_from = steps - max(1, int(round(average_last * steps)))
    average = np.zeros(n_arms)
    recorded_steps, recorded = [], []

    iterator = range(steps + 1)
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(iterator, desc=f"{regularizer} beta={beta:g}")
    for t in iterator:
        z = theta[on] - theta[on].max()
        pi = np.zeros(n_arms)
        pi[on] = np.exp(z) / np.exp(z).sum()  # (A,)
        if t % record_every == 0 or t == steps:
            recorded_steps.append(t)
            recorded.append(pi)
        if t >= average_from and t > 0:
            average += pi
        if t == steps:
            break
        log_pi = np.full(n_arms, -np.inf)
        log_pi[on] = z - np.log(np.exp(z).sum())

        if estimator == "exact":
            # g = dJ/dpi; the softmax chain rule gives pi * (g - <pi, g>)  (DESIGN.md §1 KKT)
            g = r_exact.copy()
            if divergence is not None:
                g[on] -= beta * generator_derivative(pi[on] / ref_exact[on], divergence, alpha)
            grad = np.where(on, pi * (g - np.dot(pi[on], g[on])), 0.0)
        else:
            idx = _sample(rng, np.cumsum(pi), group_size)  # (G,) y_i ~ pi
            r = rewards[idx]
            kl_reference_logps = reference_logps[idx]  # (G,)
            if mara and mara_variant == 1:
                r = mara_rewards(r, kl_reference_logps, beta, tau, variant=1)
            elif mara:
                r, kl_reference_logps = mara_rewards(r, kl_reference_logps, beta, tau, variant=2)
                r = np.asarray(r, dtype=float)
                kl_reference_logps = np.asarray(kl_reference_logps, dtype=float)
            x = log_pi[idx] - kl_reference_logps  # (G,) on-policy log-ratio
            if regularizer == "reverse_kl_k1":
                r = r - beta * kl_estimator(x, "k1")  # KL in the reward, no gradient through x
            grad = _score_mean(idx, _advantages(r, advantage), pi)
            if regularizer == "reverse_kl_k3":
                grad -= beta * _score_mean(idx, -np.expm1(-x), pi)  # d k3/dx = 1 - e^{-x}
            elif divergence is not None and regularizer != "reverse_kl_k1":
                ridx = _sample(rng, reference_cdf, reference_batch)  # (M,) y_j ~ pi_ref (DPH)
                u = np.exp(log_pi[ridx] - reference_logps[ridx])
                dloss = u * (generator_derivative(u, divergence, alpha) - f_prime_one)  # l'(x)
                grad -= beta * _score_mean(ridx, dloss, pi)

        step_lr = lr if t < half else lr * (lr_final_fraction + (1 - lr_final_fraction)
                                             * 0.5 * (1 + np.cos(np.pi * (t - half) / max(1, steps - half))))
        if optimizer == "adam":
            m = 0.9 * m + 0.1 * grad
            v = 0.999 * v + 0.001 * grad**2
            m_hat = m / (1 - 0.9 ** (t + 1))
            v_hat = v / (1 - 0.999 ** (t + 1))
            theta[on] += step_lr * (m_hat[on] / (np.sqrt(v_hat[on]) + 1e-8))
        else:
            theta[on] += step_lr * grad[on]

    final = recorded[-1] if estimator == "exact" else average / max(1, steps - max(average_from, 1) + 1)
    config = dict(bandit=bandit.name, regularizer=regularizer, beta=beta, alpha=alpha,
                  mara=mara, tau=tau, mara_variant=mara_variant, steps=steps, group_size=group_size,
                  lr=lr, optimizer=optimizer, estimator=estimator, advantage=advantage, seed=seed)
    return TrainResult(steps=np.asarray(recorded_steps), policies=np.asarray(recorded),
                       final=np.asarray(final), target=target, config=config)
