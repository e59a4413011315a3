"""Every toy_bandits plot returns a labelled Figure; the explorer works with and without widgets."""

import numpy as np
import pytest
from matplotlib.figure import Figure

import toy_bandits as tb
from toy_bandits.plots import (plot_mara_crossover, plot_pass_at_k, plot_policy_bars,
                               plot_targets_vs_beta, plot_training)
from toy_bandits.train import train_policy
from toy_bandits.widgets import explorer, explorer_figure


def _labelled(fig):
    assert isinstance(fig, Figure)
    axes = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]
    assert axes
    for ax in axes:
        if ax.has_data() or ax.collections:
            assert ax.get_xlabel() or ax.get_ylabel(), "axes without labels"
    main = axes[0]
    assert main.get_xlabel() and main.get_ylabel()
    return fig


@pytest.mark.parametrize("preset", ["fig3", "fig5"])
def test_plot_targets_vs_beta(preset):
    fig = _labelled(plot_targets_vs_beta(tb.PRESETS[preset](), np.logspace(-2, 1, 7),
                                         divergences=("reverse_kl", "js")))
    assert len([ax for ax in fig.axes if ax.get_title()]) == 2


def test_plot_targets_vs_beta_mara():
    _labelled(plot_targets_vs_beta(tb.fig4(), np.logspace(-2, 0, 5), divergences=("forward_kl",),
                                   mara=True, tau=1.0))


def test_plot_policy_bars_and_pass_at_k():
    b = tb.fig4()
    pi = tb.optimal_policy(b.rewards, b.reference, 0.1)
    fig = _labelled(plot_policy_bars(b, {"reverse_kl": pi}))
    assert fig.legends  # beside the axes, not on the bars
    fig = _labelled(plot_pass_at_k({"reference": b.reference, "reverse_kl": pi}, b.correct(1.0),
                                   [1, 2, 4, 8]))
    assert fig.axes[0].get_xscale() == "log"


def test_plot_training_single_and_dict():
    res = train_policy(tb.fig3(), "reverse_kl_k1", 0.5, steps=50)
    _labelled(plot_training(res))
    fig = _labelled(plot_training({"a": res, "b": res}))
    assert fig.legends  # under the panels, not on the curves


def test_plot_mara_crossover_marks_beta_star():
    b = tb.biased_modes()
    left, right = 25, 75
    fig = _labelled(plot_mara_crossover(b.rewards, b.reference, left, right, np.logspace(-2, 0, 9)))
    labels = fig.axes[0].get_legend_handles_labels()[1]
    assert any("beta*" in label for label in labels)


def test_explorer_figure_without_widgets():
    fig = _labelled(explorer_figure("fig4", -1.0, "alpha", alpha=0.3, mara=True, tau=1.0))
    assert "MARA" in fig.axes[0].get_title()
    _labelled(explorer_figure(tb.fig5(), 0.0, "chi2"))


def test_explorer_static_and_widget():
    assert isinstance(explorer(static=True), Figure)
    assert isinstance(explorer(tb.fig3()), Figure)  # no live kernel here: static fallback
    pytest.importorskip("ipywidgets")
    box = explorer(tb.fig3(), static=False)
    assert box.children  # the widget tree was built


def test_place_labels_ties_each_label_to_its_own_point():
    """Two points a few pixels apart: each label sits nearer its own point, or a leader line joins them."""
    import matplotlib.pyplot as plt

    from toy_bandits.style import place_labels

    fig, ax = plt.subplots(figsize=(6, 4))
    points = [(35.9, 84.3), (36.1, 84.7)]
    ax.plot([33, 34, 35.9, 36.1], [92, 90, 84.3, 84.7], marker="o")  # a sweep ending in two close points
    place_labels(ax, points, ["a", "b"], ["C0", "C0"])
    renderer = fig.canvas.get_renderer()
    for text in ax.texts:
        own, other = points if text.get_text() == "a" else points[::-1]
        box = text.get_window_extent(renderer)
        centre = np.array([(box.x0 + box.x1) / 2, (box.y0 + box.y1) / 2])
        to_own, to_other = (np.hypot(*(ax.transData.transform(p) - centre)) for p in (own, other))
        assert to_own < to_other or text.arrow_patch is not None
    plt.close(fig)
