"""Figures for the toy bandits (DESIGN.md §1). Every function returns a matplotlib Figure.

No ``plt.show()``, no LaTeX (mathtext only), no network. Colours follow one convention
everywhere: the reference is grey, and each divergence keeps its colour in every figure.
"""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from .divergences import DIVERGENCES
from .mara import crossover_beta, mara_target
from .metrics import pass_at_k
from .targets import optimal_policy
from .train import TrainResult

COLORS = {"reference": "0.55", "reverse_kl": "C0", "forward_kl": "C1", "js": "C2", "alpha": "C3",
          "chi2": "C4"}
"""Colour of each divergence (and of the reference) in every figure."""


def _target(bandit, beta, divergence, alpha, mara, tau):
    if mara:
        return mara_target(bandit.rewards, bandit.reference, beta, tau, divergence=divergence,
                           alpha=alpha)
    return optimal_policy(bandit.rewards, bandit.reference, beta, divergence=divergence, alpha=alpha)


def plot_targets_vs_beta(bandit, betas, divergences=DIVERGENCES, alpha: float = 0.5,
                         mara: bool = False, tau: float = 1.0) -> Figure:
    """Heat maps of the exact target pi*(y) (arm x log10 beta), one panel per divergence.

    Small bandits (<= 6 arms) get line plots of each arm's probability instead.
    """
    betas = np.asarray(betas, dtype=float)
    n_arms = np.asarray(bandit.rewards).size
    fig = Figure(figsize=(3.4 * len(divergences), 3.2), layout="constrained")
    axes = fig.subplots(1, len(divergences), sharey=True, squeeze=False)[0]
    for ax, divergence in zip(axes, divergences):
        pis = np.asarray(_target(bandit, betas, divergence, alpha, mara, tau))  # (B, A)
        if n_arms <= 6:
            for arm in range(n_arms):
                ax.semilogx(betas, pis[:, arm], label=f"arm {arm} (R={bandit.rewards[arm]:.2g})")
            ax.set_ylabel("target probability")
            ax.set_ylim(-0.02, 1.02)
        else:
            mesh = ax.pcolormesh(np.log10(betas), np.arange(n_arms), pis.T, shading="nearest",
                                 cmap="viridis")
            ax.set_ylabel("arm")
            fig.colorbar(mesh, ax=ax, label="target probability")
        ax.set_xlabel("beta" if n_arms <= 6 else "log10 beta")
        ax.set_title(divergence + (" + MARA" if mara else ""))
    if n_arms <= 6:
        axes[0].legend(fontsize=8)
    fig.suptitle(f"{bandit.name}: exact targets vs beta")
    return fig


def plot_policy_bars(bandit, policies: dict[str, np.ndarray]) -> Figure:
    """Reference (grey) next to each named policy, per arm; rewards on a twin axis.

    A policy named "<divergence> ..." takes that divergence's colour; names containing "MARA" are
    hatched (bars) or dashed (lines).
    """
    n_arms = np.asarray(bandit.rewards).size
    fig = Figure(figsize=(max(5.0, min(12.0, 0.12 * n_arms + 4)), 3.4), layout="constrained")
    ax = fig.subplots()
    arms = np.arange(n_arms)
    series = {"reference": bandit.reference, **policies}
    if n_arms <= 12:
        width = 0.8 / len(series)
        for i, (name, pi) in enumerate(series.items()):
            ax.bar(arms + (i - (len(series) - 1) / 2) * width, pi, width, label=name,
                   color=COLORS.get(name.split(" ")[0], f"C{i + 5}"),
                   hatch="//" if "MARA" in name else None)
        ax.set_xticks(arms)
    else:
        for i, (name, pi) in enumerate(series.items()):
            ax.step(arms, pi, where="mid", label=name, color=COLORS.get(name.split(" ")[0], f"C{i + 5}"),
                    lw=2 if name == "reference" else 1.5, ls="--" if "MARA" in name else "-")
    ax.set_xlabel("arm")
    ax.set_ylabel("probability")
    twin = ax.twinx()
    twin.plot(arms, bandit.rewards, "k:", lw=1, label="reward")
    twin.set_ylabel("reward (dotted)")
    ax.legend(fontsize=8, loc="upper right")
    ax.set_title(bandit.name)
    return fig


def plot_pass_at_k(curves: dict[str, np.ndarray], correct, ks=None) -> Figure:
    """Pass@k = 1 - (1 - pi(correct))^k against k (log axis), one line per named policy."""
    ks = np.unique(np.round(np.logspace(0, 3, 31))) if ks is None else np.asarray(ks, dtype=float)
    fig = Figure(figsize=(5.0, 3.4), layout="constrained")
    ax = fig.subplots()
    for name, pi in curves.items():
        ax.semilogx(ks, pass_at_k(pi, correct, ks), marker=".", label=name, color=COLORS.get(name))
    ax.set_xlabel("k (samples)")
    ax.set_ylabel("Pass@k")
    ax.set_ylim(-0.02, 1.02)
    ax.legend(fontsize=8)
    return fig


def plot_training(result: TrainResult | dict[str, TrainResult]) -> Figure:
    """Left: total variation to the exact target vs step. Right: final policy vs exact target."""
    results = result if isinstance(result, dict) else {result.config.get("regularizer", "run"): result}
    fig = Figure(figsize=(10.0, 3.4), layout="constrained")
    ax_tv, ax_pi = fig.subplots(1, 2)
    arms = np.arange(next(iter(results.values())).final.size)
    for i, (name, res) in enumerate(results.items()):
        color = f"C{i}"
        ax_tv.semilogy(res.steps, np.maximum(res.tv_to_target(), 1e-6), color=color,
                       label=f"{name} (final TV {res.final_tv:.3f})")
        ax_pi.plot(arms, res.final, "o-" if arms.size <= 12 else "-", color=color, ms=4,
                   label=f"{name}: trained")
        ax_pi.plot(arms, res.target, "x--" if arms.size <= 12 else "--", color=color, alpha=0.7,
                   label=f"{name}: exact target")
    ax_tv.axhline(0.02, color="k", lw=0.8, ls=":")
    ax_tv.set_xlabel("step")
    ax_tv.set_ylabel("TV(pi, exact target)")
    ax_tv.legend(fontsize=8)
    ax_pi.set_xlabel("arm")
    ax_pi.set_ylabel("probability")
    ax_pi.legend(fontsize=7)
    return fig


def plot_mara_crossover(rewards, reference, arm1: int, arm2: int, betas=None,
                        divergence: str = "reverse_kl", tau: float | None = None) -> Figure:
    """Probability of two good modes vs beta, vanilla (solid) and MARA (dashed), with beta*.

    beta* = (R2 - R1) / (log pi_ref(y1) - log pi_ref(y2)) (MARA Eq. 10): below it the
    higher-reward mode wins, above it the better-supported one. MARA's threshold ``tau``
    defaults to the lower of the two rewards.
    """
    rewards = np.asarray(rewards, dtype=float)
    reference = np.asarray(reference, dtype=float)
    betas = np.logspace(-3, 1, 81) if betas is None else np.asarray(betas, dtype=float)
    tau = min(rewards[arm1], rewards[arm2]) if tau is None else tau
    vanilla = optimal_policy(rewards, reference, betas, divergence=divergence)  # (B, A)
    mara = mara_target(rewards, reference, betas, tau, divergence=divergence)  # (B, A)
    b_star = crossover_beta(rewards[arm1], np.log(reference[arm1]), rewards[arm2],
                            np.log(reference[arm2]))
    fig = Figure(figsize=(5.5, 3.6), layout="constrained")
    ax = fig.subplots()
    for arm, color in ((arm1, "C0"), (arm2, "C3")):
        label = f"arm {arm} (R={rewards[arm]:.2g}, ref={reference[arm]:.2g})"
        ax.semilogx(betas, vanilla[:, arm], color=color, label=f"{label}: vanilla")
        ax.semilogx(betas, mara[:, arm], color=color, ls="--", label=f"{label}: MARA")
    if np.isfinite(b_star) and b_star > 0:
        ax.axvline(b_star, color="k", lw=1, ls=":", label=f"beta* = {b_star:.3g}")
    ax.set_xlabel("beta")
    ax.set_ylabel("target probability")
    ax.set_title(f"two good modes under {divergence}")
    ax.legend(fontsize=7)
    return fig
