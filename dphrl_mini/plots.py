"""Figures for training runs and evaluations. Every function returns a matplotlib Figure.

Inputs are what the trainer writes: ``metrics.jsonl`` histories (or the list of dicts), and
``EvalResult`` objects or a ``compare`` output folder (``METHOD/seedS/eval_SPLIT.json``).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Iterable, Mapping

import matplotlib.pyplot as plt
import numpy as np

from .evaluate import EvalResult

TRAINING_KEYS = ("reward_mean", "solve_rate", "entropy", "completion_length", "dph_loss", "kl")


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


def plot_training_curves(histories: Mapping[str, list[dict] | str | Path], keys: Iterable[str] = TRAINING_KEYS,
                         smooth: int = 5) -> plt.Figure:
    """One panel per metric, one line per run (moving average over ``smooth`` steps)."""
    runs = {name: load_history(h) if isinstance(h, (str, Path)) else h for name, h in histories.items()}
    keys = [k for k in keys if any(any(k in m for m in h) for h in runs.values())]
    cols = min(3, len(keys)) or 1
    rows = int(np.ceil(len(keys) / cols)) or 1
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.0 * rows), squeeze=False)
    for ax, key in zip(axes.flat, keys):
        for name, history in runs.items():
            steps = np.array([m["step"] for m in history if key in m])
            values = np.array([m[key] for m in history if key in m], dtype=float)
            if len(values):
                ax.plot(steps, _smooth(values, smooth), label=name)
        ax.set_xlabel("RL step")
        ax.set_ylabel(key.replace("_", " "))
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=8)
    fig.tight_layout()
    return fig


def _ks(n: int) -> list[int]:
    ks = [k for k in (2**i for i in range(12)) if k <= n]
    return ks + ([n] if ks[-1] != n else [])


def load_results(folder: str | Path, split: str = "test") -> dict[str, list[EvalResult]]:
    """``{method: [EvalResult per seed]}`` from a ``compare`` output folder."""
    from .experiments import load_eval

    out: dict[str, list[EvalResult]] = {}
    for path in sorted(Path(folder).glob(f"*/seed*/eval_{split}.json")):
        out.setdefault(path.parent.parent.name, []).append(load_eval(path))
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


def plot_pass_at_k_curves(results: Mapping[str, EvalResult | list[EvalResult]] | str | Path,
                          split: str = "test", title: str | None = None) -> plt.Figure:
    """Pass@k against k (log axis) for every method; the band is ± one std over seeds."""
    if isinstance(results, (str, Path)):
        results = load_results(results, split)
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, (ks, values) in _curves(results).items():
        mean = 100 * values.mean(0)
        style = dict(color="black", linestyle="--", linewidth=2) if name == "base" else {}
        (line,) = ax.plot(ks, mean, marker="o", markersize=3, label=name, **style)
        if len(values) > 1:
            std = 100 * values.std(0, ddof=1)
            ax.fill_between(ks, mean - std, mean + std, alpha=0.15, color=line.get_color())
    ax.set_xscale("log", base=2)
    ax.set_ylim(bottom=0)  # a Pass@k of 0 stays at the bottom, not in the middle of a +-0.05 axis
    ax.set_xlabel("k (samples per prompt)")
    ax.set_ylabel(f"Pass@k on {split} (%)")
    ax.set_title(title or f"Pass@k, {split} split")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_metric_bars(rows: list[dict], metric: str = "distinct_correct", split: str = "test",
                     ylabel: str | None = None) -> plt.Figure:
    """Bars (mean ± std over seeds) of one metric per method, e.g. distinct correct solutions."""
    from .experiments import aggregate_rows

    table = [r for r in aggregate_rows(rows) if r["split"] == split and metric in r]
    fig, ax = plt.subplots(figsize=(max(4, 0.9 * len(table) + 1), 3.5))
    names = [r["method"] for r in table]
    ax.bar(names, [r[metric] for r in table], yerr=[r.get(f"{metric}_std", 0) for r in table],
           color=["0.5" if n == "base" else f"C{i}" for i, n in enumerate(names)], capsize=3)
    ax.set_ylabel(ylabel or metric.replace("_", " "))
    ax.set_xlabel("method")
    ax.tick_params(axis="x", rotation=30)
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    return fig


SWEPT_FIELDS = ("eta", "kl_coef", "mara_beta")
_SWEEP = re.compile(r"_((?:%s)[-+0-9.e]*)(?=_|$)" % "|".join(SWEPT_FIELDS))


def sweep_family(name: str) -> str:
    """The method a swept variant belongs to: the name without its coefficient, in the CLI's
    naming (``dph_js_eta2`` -> ``dph_js``, ``rkl_kl_coef0.05`` -> ``rkl``,
    ``grpo+mara_mara_beta0.1`` -> ``grpo+mara``, ``dph_js_eta4_keep_referencesall_distinct`` ->
    ``dph_js_keep_referencesall_distinct``)."""
    return _SWEEP.sub("", name)


def _sweep_label(name: str) -> str:
    match = _SWEEP.search(name)
    return match.group(1) if match else ""


def plot_pareto(rows: list[dict], x: str = "pass@1", y: str = "pass@64", split: str = "test",
                group: callable = None) -> plt.Figure:
    """Pass@1 against Pass@k, one point per run (method x coefficient), lines within a method."""
    from .experiments import aggregate_rows

    group = group or sweep_family
    table = [r for r in aggregate_rows(rows) if r["split"] == split and x in r and y in r]
    fig, ax = plt.subplots(figsize=(8.5, 4.5))
    families: dict[str, list[dict]] = {}
    for r in table:
        families.setdefault(group(r["method"]), []).append(r)
    for i, (family, members) in enumerate(families.items()):
        members.sort(key=lambda r: r[x])
        style = dict(color="black", marker="*", markersize=12) if family == "base" else dict(color=f"C{i}", marker="o")
        ax.plot([100 * r[x] for r in members], [100 * r[y] for r in members], label=family, **style)
        for r in members:
            ax.annotate(_sweep_label(r["method"]), (100 * r[x], 100 * r[y]),
                        fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel(f"{x} (%)")
    ax.set_ylabel(f"{y} (%)")
    ax.set_title(f"Pareto front, {split} split (up and right is better)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))  # beside the points, not on them
    fig.tight_layout()
    return fig


class LivePlot:
    """A training callback that redraws curves in a notebook every ``every`` steps.

    ``Trainer(cfg, callbacks=[LivePlot()])``; outside IPython it only collects the metrics.
    """

    def __init__(self, keys: Iterable[str] = ("reward_mean", "solve_rate", "entropy"), every: int = 5):
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
