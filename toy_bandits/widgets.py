"""An interactive explorer of exact targets: a thin ipywidgets wrapper over ``explorer_figure``.

``explorer_figure`` is an ordinary plot function (it also works without widgets).
``explorer()`` adds sliders when ipywidgets runs in a live kernel. Otherwise it returns the static
figure, so a notebook executed in CI or rendered on GitHub still shows something.
"""

from __future__ import annotations

from matplotlib.figure import Figure

from .divergences import DIVERGENCES
from .envs import PRESETS
from .mara import mara_target
from .metrics import entropy
from .plots import REFERENCE_BAR
from .style import DIVERGENCE_COLORS, REFERENCE_LINE
from .targets import optimal_policy


def explorer_figure(preset="fig4", log10_beta: float = -1.0, divergence: str = "reverse_kl",
                    alpha: float = 0.5, mara: bool = False, tau: float = 1.0) -> Figure:
    """Reference and exact target of one bandit at one beta (MARA Algorithm 1 if ``mara``).

    ``preset`` is a name in ``PRESETS`` or a ``Bandit``.
    """
    bandit = PRESETS[preset]() if isinstance(preset, str) else preset
    beta = 10.0 ** log10_beta
    if mara:
        target = mara_target(bandit.rewards, bandit.reference, beta, tau, divergence=divergence,
                             alpha=alpha)
    else:
        target = optimal_policy(bandit.rewards, bandit.reference, beta, divergence=divergence,
                                alpha=alpha)
    fig = Figure(figsize=(7.0, 3.4), layout="constrained")
    ax = fig.subplots()
    arms = range(bandit.rewards.size)
    color = DIVERGENCE_COLORS[divergence]
    if bandit.rewards.size <= 12:
        ax.bar([a - 0.2 for a in arms], bandit.reference, 0.4, label="reference", **REFERENCE_BAR)
        ax.bar([a + 0.2 for a in arms], target, 0.4, color=color, label="target", hatch="///" if mara else None,
               edgecolor="white" if mara else color)
        ax.set_xticks(list(arms))
    else:
        ax.step(arms, bandit.reference, where="mid", label="reference", **REFERENCE_LINE)
        ax.step(arms, target, where="mid", color=color, label="target", ls="--" if mara else "-")
    twin = ax.twinx()
    twin.plot(arms, bandit.rewards, "k:", lw=1)
    twin.set_ylabel("reward (dotted)")
    ax.set_xlabel("arm")
    ax.set_ylabel("probability")
    ax.legend(fontsize=8, loc="upper left")
    name = divergence + (f" alpha={alpha:.2f}" if divergence == "alpha" else "")
    name += f" + MARA(tau={tau:g})" if mara else ""
    ax.set_title(f"{bandit.name}: {name}, beta={beta:.3g}, entropy={entropy(target):.2f} nats")
    return fig


def _live_kernel() -> bool:
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and shell.__class__.__name__ == "ZMQInteractiveShell"


def explorer(bandit=None, *, static: bool | None = None):
    """Sliders for log10 beta, divergence, alpha, MARA and tau, plus a preset dropdown.

    Returns an ipywidgets box in a live kernel, after displaying the static figure of its starting
    values (for the rendered notebook, e.g. on GitHub, where widgets do not show). Otherwise (``static=True``, no ipywidgets, or a
    plain Python process) it returns the static ``explorer_figure`` of ``bandit`` (default fig4).
    """
    presets = dict(PRESETS)
    if bandit is not None:
        presets = {bandit.name: lambda: bandit}
        presets.update({k: v for k, v in PRESETS.items() if k != bandit.name})
    first = next(iter(presets))
    try:
        import ipywidgets as w
    except ImportError:
        w = None
    if w is None or static or (static is None and not _live_kernel()):
        return explorer_figure(presets[first](), -1.0)

    out = w.Output()
    controls = dict(
        preset=w.Dropdown(options=list(presets), value=first, description="bandit"),
        log10_beta=w.FloatSlider(value=-1.0, min=-3.0, max=1.0, step=0.05, description="log10 beta"),
        divergence=w.Dropdown(options=list(DIVERGENCES), value="reverse_kl", description="divergence"),
        alpha=w.FloatSlider(value=0.5, min=0.05, max=0.95, step=0.05, description="alpha"),
        mara=w.Checkbox(value=False, description="MARA"),
        tau=w.FloatSlider(value=1.0, min=0.0, max=1.0, step=0.05, description="tau"),
    )

    def redraw(_=None):
        values = {k: c.value for k, c in controls.items()}
        values["preset"] = presets[values["preset"]]()
        fig = explorer_figure(**values)
        with out:
            out.clear_output(wait=True)
            from IPython.display import display

            display(fig)

    for control in controls.values():
        control.observe(redraw, names="value")
    redraw()
    from IPython.display import display

    display(explorer_figure(presets[first](), -1.0))  # the static view: rendered notebooks (GitHub) show no widgets
    return w.VBox([w.HBox([controls["preset"], controls["divergence"], controls["mara"]]),
                   w.HBox([controls["log10_beta"], controls["alpha"], controls["tau"]]), out])
