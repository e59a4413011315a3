"""Multi-modal bandits where every regularized target is exact (DESIGN.md §1, MARA notes §3).

Core API (numpy only): ``optimal_policy`` (targets.py), ``mara_rewards`` / ``mara_target`` /
``crossover_beta`` (mara.py), ``pass_at_k`` / ``coverage`` / ``entropy`` (metrics.py), ``Bandit``
and its presets (envs.py), and ``DIVERGENCES`` (divergences.py).
"""

from .divergences import DIVERGENCES
from .envs import PRESETS, Bandit, biased_modes, fig3, fig4, fig5, rlvr_like
from .mara import crossover_beta, mara_rewards, mara_target
from .metrics import coverage, entropy, pass_at_k
from .targets import optimal_policy

__all__ = [
    "DIVERGENCES", "PRESETS", "Bandit", "biased_modes", "fig3", "fig4", "fig5", "rlvr_like",
    "crossover_beta", "mara_rewards", "mara_target", "coverage", "entropy", "pass_at_k",
    "optimal_policy",
]
from .train import REGULARIZERS, TrainResult, exact_target, train_policy  # noqa: E402
from .plots import (plot_gradient_strength, plot_mara_crossover, plot_pass_at_k, plot_policy_bars,  # noqa: E402
                    plot_targets_vs_beta, plot_training)
from .strength import gradient_strength  # noqa: E402
from .widgets import explorer, explorer_figure  # noqa: E402
