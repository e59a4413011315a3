"""Figures for the toy bandits (DESIGN.md §1). Every function returns a matplotlib Figure.

No ``plt.show()``, no LaTeX (mathtext only), no network. Colours follow one convention
everywhere (``style.py``): the reference is black (dashed lines, dashed outlines for bars), each
divergence keeps its colour in every figure, and legends sit outside the axes.
"""

from __future__ import annotations

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure

from .divergences import DIVERGENCES
from .mara import crossover_beta, mara_target
from .metrics import pass_at_k
from .targets import optimal_policy
from .style import (DIVERGENCE_COLORS, DIVERGENCE_LABELS, REFERENCE_COLOR, REFERENCE_LINE, SPARE_COLORS,
                    distinct_colors, legend_outside, series_colors, shade)
from .strength import grad_share, gradient_strength
from .train import TrainResult, regularizer_divergence

_ARM_COLORMAP = colormaps["cividis"]  # arms are no divergences: a sequential map, apart from COLORS
COLORS = {"reference": REFERENCE_COLOR, **DIVERGENCE_COLORS}
"""Colour of each divergence (and of the reference) in every figure."""
REFERENCE_BAR = dict(facecolor="white", edgecolor=REFERENCE_COLOR, linestyle="--", linewidth=1.2)


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
    cols = min(3, len(divergences))
    rows = -(-len(divergences) // cols)
    fig = Figure(figsize=(3.5 * cols + (0.6 if n_arms > 6 else 0), 2.9 * rows + 0.7), layout="constrained")
    axes = list(fig.subplots(rows, cols, sharey=True, squeeze=False).flat)
    arm_colors = [tuple(c) for c in _ARM_COLORMAP(np.linspace(0, 0.9, max(n_arms, 2)))]
    for ax, divergence in zip(axes, divergences):
        pis = np.asarray(_target(bandit, betas, divergence, alpha, mara, tau))  # (B, A)
        if n_arms <= 6:
            for arm in range(n_arms):
                ax.semilogx(betas, pis[:, arm], color=arm_colors[arm],
                            label=f"arm {arm} (R={bandit.rewards[arm]:.2g}, ref={bandit.reference[arm]:.2g})")
            ax.set_ylabel("target probability")
            ax.set_ylim(-0.02, 1.02)
        else:
            mesh = ax.pcolormesh(np.log10(betas), np.arange(n_arms), pis.T, shading="nearest",
                                 cmap="viridis", vmin=0)
            ax.set_ylabel("arm")
            fig.colorbar(mesh, ax=ax, label="target probability")
        ax.set_xlabel("β" if n_arms <= 6 else "log10 β")
        ax.set_title(DIVERGENCE_LABELS[divergence] + (" + MARA" if mara else ""), color=COLORS[divergence])
        ax.grid(alpha=0.3)
    for ax in axes[len(divergences):]:
        ax.remove()
    if n_arms <= 6:
        handles, labels = fig.axes[0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="outside lower center", ncol=min(n_arms, 3), frameon=False)
    fig.suptitle(f"{bandit.name}: exact targets vs β" + (f" (MARA, τ={tau:g})" if mara else ""))
    return fig


def plot_policy_bars(bandit, policies: dict[str, np.ndarray]) -> Figure:
    """Reference (black dashed outline) next to each named policy, per arm; rewards on a twin axis.

    A policy named "<divergence> ..." takes that divergence's colour; names containing "MARA" are
    hatched (bars) or dashed (lines).
    """
    n_arms = np.asarray(bandit.rewards).size
    fig = Figure(figsize=(max(7.5, min(11.0, 0.12 * n_arms + 5.5)), 3.4), layout="constrained")
    ax = fig.subplots()
    arms = np.arange(n_arms)
    series = {"reference": bandit.reference, **policies}
    colors = series_colors(list(series))
    if n_arms <= 12:
        width = 0.8 / len(series)
        for i, ((name, pi), color) in enumerate(zip(series.items(), colors)):
            style = REFERENCE_BAR if name == "reference" else dict(
                color=color, edgecolor="white" if "MARA" in name else color, hatch="///" if "MARA" in name else None)
            ax.bar(arms + (i - (len(series) - 1) / 2) * width, pi, width, label=name, **style)
        ax.set_xticks(arms)
    else:
        for (name, pi), color in zip(series.items(), colors):
            style = REFERENCE_LINE if name == "reference" else dict(color=color, lw=1.5, ls="--" if "MARA" in name else "-")
            ax.step(arms, pi, where="mid", label=name, **style)
    ax.set_xlabel("arm")
    ax.set_ylabel("probability")
    twin = ax.twinx()
    twin.plot(arms, bandit.rewards, ":", color="0.35", lw=1, label="reward (right axis)")
    twin.set_ylabel("reward (dotted)")
    handles, labels = ax.get_legend_handles_labels()
    twin_handles, twin_labels = twin.get_legend_handles_labels()
    fig.legend(handles + twin_handles, labels + twin_labels, loc="outside right center", frameon=False, fontsize=9)
    ax.set_title(bandit.name)
    return fig


def plot_pass_at_k(curves: dict[str, np.ndarray], correct, ks=None) -> Figure:
    """Pass@k = 1 - (1 - pi(correct))^k in %, against k (log axis), one line per named policy."""
    ks = np.unique(np.round(np.logspace(0, 3, 31))) if ks is None else np.asarray(ks, dtype=float)
    fig = Figure(figsize=(6.5, 3.6), layout="constrained")
    ax = fig.subplots()
    for (name, pi), color in zip(curves.items(), series_colors(list(curves))):
        style = REFERENCE_LINE if name == "reference" else dict(color=color)
        ax.semilogx(ks, 100 * pass_at_k(pi, correct, ks), marker=".", label=name, **style)
    ax.set_xlabel("k (samples)")
    ax.set_ylabel("Pass@k (%)")
    ax.set_ylim(-2, 102)
    ax.grid(alpha=0.3, which="both")
    legend_outside(ax)
    return fig


def plot_training(result: TrainResult | dict[str, TrainResult]) -> Figure:
    """Left: total variation to the exact target vs step. Right: final policy vs exact target.

    Each run takes its regularizer's divergence colour; runs sharing one get shades of it.
    """
    results = result if isinstance(result, dict) else {result.config.get("regularizer", "run"): result}
    fig = Figure(figsize=(10.0, 3.4 + 0.25 * len(results)), layout="constrained")
    ax_tv, ax_pi = fig.subplots(1, 2)
    arms = np.arange(next(iter(results.values())).final.size)
    divergences = [regularizer_divergence(res.config["regularizer"]) for res in results.values()]
    spare = iter(SPARE_COLORS * len(results))
    colors = distinct_colors([DIVERGENCE_COLORS[d] if d else next(spare) for d in divergences])
    for (name, res), color in zip(results.items(), colors):
        ax_tv.semilogy(res.steps, np.maximum(res.tv_to_target(), 1e-6), color=color,
                       label=f"{name} (final TV {res.final_tv:.3f})")
        ax_pi.plot(arms, res.final, "o-" if arms.size <= 12 else "-", color=color, ms=4)
        ax_pi.plot(arms, res.target, "x--" if arms.size <= 12 else "--", color=color, alpha=0.7)
    ax_tv.axhline(0.02, color="k", lw=0.8, ls=":")
    ax_tv.set_xlabel("step")
    ax_tv.set_ylabel("TV(π, exact target)")
    ax_tv.grid(alpha=0.3)
    ax_pi.plot([], [], "o-", color="0.3", ms=4, label="trained (solid)")
    ax_pi.plot([], [], "x--", color="0.3", alpha=0.7, label="exact target (dashed)")
    if arms.size <= 12:
        ax_pi.set_xticks(arms)
    ax_pi.set_xlabel("arm")
    ax_pi.set_ylabel("probability")
    ax_pi.legend(fontsize=8, loc="best")
    ax_pi.grid(alpha=0.3)
    handles, labels = ax_tv.get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=min(len(labels), 3), frameon=False, fontsize=9)
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
    fig = Figure(figsize=(8.0, 3.6), layout="constrained")
    ax = fig.subplots()
    for arm, color in ((arm1, SPARE_COLORS[0]), (arm2, SPARE_COLORS[1])):
        label = f"arm {arm} (R={rewards[arm]:.2g}, ref={reference[arm]:.2g})"
        ax.semilogx(betas, vanilla[:, arm], color=color, label=f"{label}: vanilla")
        ax.semilogx(betas, mara[:, arm], color=color, ls="--", label=f"{label}: MARA")
    if np.isfinite(b_star) and b_star > 0:
        ax.axvline(b_star, color="k", lw=1, ls=":", label=f"beta* = {b_star:.3g}")
    ax.set_xlabel("β")
    ax.set_ylabel("target probability")
    ax.set_title(f"two good modes under {DIVERGENCE_LABELS[divergence]}")
    ax.grid(alpha=0.3)
    legend_outside(ax, fontsize=8)
    return fig


def plot_gradient_strength(bandit, divergences=DIVERGENCES, etas=(0.00125, 0.01, 0.1, 1.0), share_divergence: str = "js",
                           alpha: float = 0.5) -> Figure:
    """Left: the size of each divergence's gradient on the logits (beta = 1) and of RL's pull, as the
    policy collapses from pi_ref onto one correct arm, against the drift KL(pi_ref || pi). Right: the
    exact ``dph_grad_share`` of ``share_divergence`` at each ``eta`` (strength.py)."""
    strength = gradient_strength(bandit, divergences, alpha)
    drift = strength["drift"]
    fig = Figure(figsize=(10.5, 3.8), layout="constrained")
    ax_norm, ax_share = fig.subplots(1, 2)
    moved = slice(1, None)  # every divergence's gradient is exactly 0 at pi_ref: off a log axis
    ax_norm.semilogy(drift[moved], strength["reward"][moved], color=SPARE_COLORS[2], lw=2.5, label="RL's pull ‖∇E[R]‖")
    for name in divergences:
        ax_norm.semilogy(drift[moved], strength[name][moved], color=DIVERGENCE_COLORS[name],
                         label=f"‖∇D‖, {DIVERGENCE_LABELS[name]}")
    ax_norm.set_xlabel("drift KL(π_ref ‖ π) (nats)")
    ax_norm.set_ylabel("gradient norm on the logits")
    ax_norm.set_title("every divergence's pull is 0 at π_ref and grows with drift", fontsize=10)
    ax_norm.grid(alpha=0.3)
    legend_outside(ax_norm, where="below", ncol=3, fontsize=8)
    base = DIVERGENCE_COLORS[share_divergence]
    shades = [shade(base, amount) for amount in np.linspace(0.55, -0.35, len(etas))]
    for eta, color in zip(etas, shades):
        ax_share.plot(drift, 100 * grad_share(strength, share_divergence, eta), color=color, label=f"η = {eta:g}")
    ax_share.axhline(50, color="k", lw=0.8, ls=":")
    ax_share.set_xlabel("drift KL(π_ref ‖ π) (nats)")
    ax_share.set_ylabel(f"{DIVERGENCE_LABELS[share_divergence]} share of the gradient (%)")
    ax_share.set_ylim(-2, 102)
    ax_share.set_title("η·‖∇D‖ / (‖∇E[R]‖ + η·‖∇D‖)", fontsize=10)
    ax_share.grid(alpha=0.3)
    legend_outside(ax_share)
    return fig
