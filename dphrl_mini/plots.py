"""Figures for training runs and evaluations. Every function returns a matplotlib Figure.

Every variant is shown by its display name in its method family's colour, the base model black
and dashed (``style.py``); legends sit outside the axes, fractions are shown in %.

Inputs are what the trainer writes: ``metrics.jsonl`` histories (or the list of dicts), and
``EvalResult`` objects or a ``compare`` output folder (``METHOD/seedS/eval_SPLIT.json``).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Iterable, Mapping

import matplotlib.pyplot as plt
import numpy as np

from toy_bandits.style import distinct_colors, legend_outside, place_labels

from .evaluate import EvalResult
from .style import (BASE_LINE, coefficient_label, display_name, family, family_color, is_percent, metric_label,
                    parse_name)

TRAINING_KEYS = ("reward_mean", "solve_rate", "entropy", "completion_length", "dph_loss", "kl", "dph_update_share",
                 "kl_update_share", "reference_drift")


def load_history(path: str | Path) -> list[dict]:
    path = Path(path)
    if path.is_dir():
        path = path / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _smooth(values: np.ndarray, window: int) -> np.ndarray:
    if window <= 1 or len(values) < window:
        return values
    kernel = np.ones(window) / window
    return np.convolve(np.pad(values, (window - 1, 0), mode="edge"), kernel, mode="valid")


def variant_colors(names: Iterable[str]) -> dict[str, Any]:
    """Each variant's family colour (``style.family_color``); several variants of one family get
    shades of it in a fixed order (the family's plain variant first, then by name), so that one set
    of variants is coloured the same in every figure, whatever order a figure draws them in."""
    order = sorted(set(names), key=lambda n: (family(n), n != family(n), n))
    return dict(zip(order, distinct_colors([family_color(n) for n in order])))


def plot_training_curves(histories: Mapping[str, list[dict] | str | Path], keys: Iterable[str] = TRAINING_KEYS,
                         smooth: int = 5) -> plt.Figure:
    """One panel per metric, one line per run (moving average over ``smooth`` steps)."""
    runs = {name: load_history(h) if isinstance(h, (str, Path)) else h for name, h in histories.items()}
    keys = [k for k in keys if any(any(k in m for m in h) for h in runs.values())]
    cols = min(3, len(keys)) or 1
    rows = int(np.ceil(len(keys) / cols)) or 1
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 2.7 * rows + 0.5), squeeze=False, layout="constrained")
    colors = variant_colors(runs)
    for ax, key in zip(axes.flat, keys):
        scale = 100 if is_percent(key) else 1
        for name, history in runs.items():
            steps = np.array([m["step"] for m in history if key in m])
            values = scale * np.array([m[key] for m in history if key in m], dtype=float)
            if len(values):
                ax.plot(steps, _smooth(values, smooth), label=display_name(name), color=colors[name])
        ax.set_xlabel("RL step")
        ax.set_ylabel(metric_label(key))
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=min(len(labels), 4), frameon=False)
    return fig


def _ks(n: int) -> list[int]:
    ks = [k for k in (2**i for i in range(12)) if k <= n]
    return ks + ([n] if ks[-1] != n else [])


def load_results(folder: str | Path, split: str = "test", methods: Iterable[str] | None = None,
                 seeds: Iterable[int] | None = None) -> dict[str, list[EvalResult]]:
    """``{method: [EvalResult per seed]}`` from a ``compare`` output folder; only the given
    ``methods`` and ``seeds`` when set (a folder can also hold runs that one command did not ask for)."""
    from .experiments import load_eval

    methods, seeds = (None if methods is None else set(methods)), (None if seeds is None else set(seeds))
    out: dict[str, list[EvalResult]] = {}
    for path in sorted(Path(folder).glob(f"*/seed*/eval_{split}.json")):
        method, seed = path.parent.parent.name, path.parent.name.removeprefix("seed")
        if (methods is None or method in methods) and (seeds is None or (seed.isdigit() and int(seed) in seeds)):
            out.setdefault(method, []).append(load_eval(path))
    return out


def _curves(results: Mapping[str, EvalResult | list[EvalResult]]) -> dict[str, tuple[list[int], np.ndarray]]:
    curves = {}
    for name, res in results.items():
        runs = res if isinstance(res, list) else [res]
        n = min(r.n for r in runs)
        ks = _ks(n)
        values = np.array([[r.summary(ks)[f"pass@{k}"] for k in ks] for r in runs])  # (seeds, ks)
        curves[name] = (ks, values)
    return curves


def _base_first(names: Iterable[str]) -> list[str]:
    names = list(names)
    return ["base"] * ("base" in names) + [n for n in names if n != "base"]


def split_name(split: str, task: str | None = None) -> str:
    """"test split"; the "transfer" split also names the task it scores: "transfer split (sql)"."""
    return f"{split} split ({task})" if split == "transfer" and task else f"{split} split"


def plot_pass_at_k_curves(results: Mapping[str, EvalResult | list[EvalResult]] | str | Path,
                          split: str = "test", title: str | None = None) -> plt.Figure:
    """Pass@k against k (log axis) for every method; the band is ± one std over seeds."""
    if isinstance(results, (str, Path)):
        results = load_results(results, split)
    curves = _curves(results)
    names = sorted(curves, key=lambda n: -curves[n][1].mean(0)[-1])  # legend in the order of the right ends
    colors = variant_colors(names)
    fig, ax = plt.subplots(figsize=(7.5, 4.2), layout="constrained")
    for name in names:
        ks, values = curves[name]
        mean = 100 * values.mean(0)
        style = dict(BASE_LINE, zorder=3) if name == "base" else dict(color=colors[name], linewidth=1.6)  # base on top
        ax.plot(ks, mean, marker="o", markersize=3, label=display_name(name), **style)
        if len(values) > 1:
            std = 100 * values.std(0, ddof=1)
            ax.fill_between(ks, mean - std, mean + std, alpha=0.12, color=style["color"], linewidth=0)
    ax.set_xscale("log", base=2)
    ax.set_ylim(bottom=0)  # a Pass@k of 0 stays at the bottom, not in the middle of a +-0.05 axis
    ax.set_xlabel("k (samples per prompt)")
    first = next(iter(results.values()), None)
    first = first[0] if isinstance(first, list) and first else first
    name = split_name(split, getattr(first, "task", None))
    ax.set_ylabel(f"Pass@k, {name} (%)")
    ax.set_title(title or f"Pass@k, {name}" + (" (band: ± 1 std over seeds)" if any(
        len(v) > 1 for _, v in curves.values()) else ""))
    ax.grid(alpha=0.3, which="both")
    legend_outside(ax)
    return fig


def plot_metric_bars(rows: list[dict], metric: str = "distinct_correct", split: str = "test",
                     ylabel: str | None = None) -> plt.Figure:
    """Horizontal bars (mean ± std over seeds) of one metric per method, e.g. distinct correct
    solutions; the base model's bar is an outline, black and dashed."""
    from .experiments import aggregate_rows

    table = [r for r in aggregate_rows(rows) if r["split"] == split and metric in r]
    table = sorted(table, key=lambda r: r["method"] != "base")  # base on top
    scale = 100 if is_percent(metric) else 1
    names = [r["method"] for r in table]
    colors = list(map(variant_colors(names).get, names))
    values = [scale * r[metric] for r in table]
    errors = [scale * r.get(f"{metric}_std", 0.0) for r in table]
    fig, ax = plt.subplots(figsize=(7.0, 0.42 * len(table) + 1.3), layout="constrained")
    y = np.arange(len(table))[::-1]
    bars = ax.barh(y, values, xerr=errors, color=colors, capsize=3, height=0.65,
                   error_kw=dict(ecolor="0.3", lw=1))
    for bar, name in zip(bars, names):
        if name == "base":
            bar.set(facecolor="white", edgecolor=BASE_LINE["color"], linestyle="--", linewidth=1.5)
    for bar, value, error in zip(bars, values, errors):  # the value just past its error bar
        ax.annotate(f"{value:.1f}", (value + error, bar.get_y() + bar.get_height() / 2), xytext=(5, 0),
                    textcoords="offset points", va="center", fontsize=8)
    ax.set_yticks(y, [display_name(n) for n in names])
    ax.set_xlabel(ylabel or metric_label(metric))
    ax.set_title(f"{split} split" + (" (mean ± std over seeds)" if any(r.get("seeds", 1) > 1 for r in table) else ""))
    ax.set_xlim(0, 1.15 * max([v + e for v, e in zip(values, errors)] + [1e-9]))
    ax.grid(alpha=0.3, axis="x")
    return fig


SWEPT_FIELDS = ("eta", "kl_coef", "mara_beta")
_SWEEP = re.compile(r"_((?:%s)[-+0-9.e]*)(?=_|$)" % "|".join(SWEPT_FIELDS))


def sweep_family(name: str) -> str:
    """The method a swept variant belongs to: the name without its coefficient, in the CLI's
    naming (``dph_js_eta2`` -> ``dph_js``, ``rkl_kl_coef0.05`` -> ``rkl``,
    ``grpo+mara_mara_beta0.1`` -> ``grpo+mara``, ``dph_js_eta4_keep_referencesall_distinct`` ->
    ``dph_js_keep_referencesall_distinct``)."""
    return _SWEEP.sub("", name)


_MARKERS = ("o", "s", "^", "D", "v", "P")


def sweep_order(members: list[dict], x: str = "pass@1") -> list[dict]:
    """A sweep's aggregated rows from low to high coefficient, the path the sweep takes; by ``x``
    when some row's name carries no single swept coefficient (``dph_js`` at its default eta)."""
    def coefficient(row: dict) -> float | None:
        parsed = parse_name(row["method"])
        values = [float(v) for k, v in (parsed[1] if parsed else {}).items() if k in SWEPT_FIELDS]
        return values[0] if len(values) == 1 else None

    keys = [coefficient(r) for r in members]
    if None in keys:
        return sorted(members, key=lambda r: r[x])
    return [r for _, r in sorted(zip(keys, members), key=lambda pair: pair[0])]


def plot_pareto(rows: list[dict], x: str = "pass@1", y: str = "pass@64", split: str = "test",
                group: callable = None, task: str | None = None) -> plt.Figure:
    """Pass@1 against Pass@k, one point per run (method x coefficient, mean over seeds); ``task``
    names the task of a "transfer" split in the title.

    Each sweep is a line from its lowest to its highest coefficient, in its method family's colour
    (variants of one family differ in shade and marker); every point is labelled with its
    coefficient where the label fits without overlap; the base model is the black star.
    """
    from .experiments import aggregate_rows

    group = group or sweep_family
    table = [r for r in aggregate_rows(rows) if r["split"] == split and x in r and y in r]
    groups: dict[str, list[dict]] = {}
    for r in table:
        groups.setdefault(group(r["method"]), []).append(r)
    names = _base_first(groups)
    colors = variant_colors(names)
    fig, ax = plt.subplots(figsize=(9.0, 5.0))
    seen: dict[str, int] = {}
    labels = []  # (xy, text, colour) of each swept point
    for name in names:
        members = sweep_order(groups[name], x)
        xs, ys = [100 * r[x] for r in members], [100 * r[y] for r in members]
        if name == "base":
            ax.plot(xs, ys, linestyle="none", marker="*", markersize=15, color=BASE_LINE["color"],
                    label=display_name(name), zorder=3)
            continue
        marker = _MARKERS[seen.setdefault(family(members[0]["method"]), 0) % len(_MARKERS)]
        seen[family(members[0]["method"])] += 1
        ax.plot(xs, ys, marker=marker, markersize=6, color=colors[name], label=display_name(name))
        labels += [((px, py), coefficient_label(r["method"]), colors[name])
                   for px, py, r in zip(xs, ys, members) if len(members) > 1 and coefficient_label(r["method"])]
    ax.set_xlabel(metric_label(x))
    ax.set_ylabel(metric_label(y))
    ax.set_title(f"Pareto front, {split_name(split, task)} (up and right is better)")
    ax.grid(alpha=0.3)
    legend_outside(ax)
    ax.margins(0.08)
    fig.tight_layout()
    place_labels(ax, [p for p, _, _ in labels], [t for _, t, _ in labels], [c for _, _, c in labels])
    return fig


class LivePlot:
    """A training callback that redraws curves in a notebook every ``every`` steps.

    ``Trainer(cfg, callbacks=[LivePlot()])``; outside IPython it only collects the metrics. The default
    keys include the regularizer's share of each update, for the runs that log one (DPH, RKL).
    """

    def __init__(self, keys: Iterable[str] = ("reward_mean", "solve_rate", "entropy", "dph_update_share",
                                              "kl_update_share"), every: int = 5):
        self.keys, self.every, self.history, self.handle = tuple(keys), every, [], None

    def __call__(self, metrics: dict) -> None:
        self.history.append(metrics)
        if len(self.history) % self.every:
            return
        try:
            from IPython.display import display
        except ImportError:
            return
        fig = plot_training_curves({"run": self.history}, self.keys, smooth=1)
        if self.handle is None:
            self.handle = display(fig, display_id=True)
        else:
            self.handle.update(fig)
        plt.close(fig)


SHARE_KEYS = ("dph_update_share", "kl_update_share")
"""The regularizer's share of each optimizer update (``shares.py``): DPH's for DPH runs, the KL penalty's for RKL."""


def mean_update_share(run_folder: str | Path) -> float | None:
    """A run's mean share of the update made by its regularizer (``SHARE_KEYS``) over all steps, or None
    when its ``metrics.jsonl`` logs none (GRPO, DAPO, runs made before the shares were logged)."""
    path = Path(run_folder) / "metrics.jsonl"
    history = load_history(path) if path.exists() else []
    values = [m[k] for m in history for k in SHARE_KEYS if k in m]
    return float(np.mean(values)) if values else None


def plot_share_sweep(rows: list[dict], folder: str | Path, split: str = "test", k: int = 64) -> plt.Figure:
    """Pass@1 and Pass@k against how much of each update the regularizer made: every variant of a
    ``compare`` output (``rows``, per seed, and its ``folder``; mean over seeds), one line per method family
    (the DPH eta sweep, the RKL beta sweep); the base model and the runs without a logged share as
    horizontal lines."""
    folder = Path(folder)
    rows = [r for r in rows if r["split"] == split]
    points: dict[str, list[tuple[float, float, float, str]]] = {}  # family -> (share, pass@1, pass@k, method)
    flat: dict[str, tuple[float, float]] = {}
    for method in dict.fromkeys(r["method"] for r in rows):
        mine = [r for r in rows if r["method"] == method]
        scores = (np.mean([r["pass@1"] for r in mine]), np.mean([r[f"pass@{k}"] for r in mine]))
        shares = [s for r in mine if (s := mean_update_share(folder / method / f"seed{r['seed']}")) is not None]
        if not shares:
            flat[method] = scores
            continue
        points.setdefault(sweep_family(method), []).append((float(np.mean(shares)), *scores, method))
    fig, axes = plt.subplots(1, 2, figsize=(10.5, 4.2), layout="constrained")
    colors = variant_colors([*flat, *points])
    labels: list[list] = [[], []]  # per axes: (xy, text, colour) of each swept point
    for ax, column, metric in zip(axes, (1, 2), ("pass@1", f"pass@{k}")):
        for method, scores in flat.items():
            style = BASE_LINE if method == "base" else dict(color=colors[method], linestyle=":", lw=1.5)
            ax.axhline(100 * scores[column - 1], label=display_name(method), **style)
        for name, members in points.items():
            members.sort()
            xs, ys = [m[0] * 100 for m in members], [m[column] * 100 for m in members]
            ax.semilogx(xs, ys, marker="o", color=colors[name], label=display_name(name))
            labels[column - 1] += [((x, y), coefficient_label(m[3]), colors[name]) for x, y, m in zip(xs, ys, members)]
        ax.set_xlabel("regularizer's share of the update (%, mean over the run)")
        ax.set_ylabel(metric_label(metric))
        ax.grid(alpha=0.3, which="both")
        ax.margins(0.1)
    axes[0].set_title(f"{split_name(split)}: how much rehearsal it takes", fontsize=10)
    handles, names = axes[0].get_legend_handles_labels()
    fig.legend(handles, names, loc="outside lower center", ncol=min(len(names), 5), frameon=False)
    for ax, spots in zip(axes, labels):
        place_labels(ax, [p for p, _, _ in spots], [t for _, t, _ in spots], [c for _, _, c in spots], fontsize=7)
    return fig

