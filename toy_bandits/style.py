"""One visual language for every figure of the project: a colour per divergence, the reference
in black, readable names, and legends and labels that never sit on the data.

``dphrl_mini.style`` builds its method-family colours on these (RKL takes reverse KL's colour,
DPH-F forward KL's, DPH-JS JS's, DPH-α alpha's), so a divergence looks the same in a toy bandit
and in an RLVR run. Colours are the colour-blind-safe Okabe-Ito set.
"""

from __future__ import annotations

import re
from typing import Sequence

import numpy as np
from matplotlib.axes import Axes
from matplotlib.colors import to_rgb

DIVERGENCE_COLORS: dict[str, str] = {
    "reverse_kl": "#0072B2",  # blue
    "forward_kl": "#E69F00",  # orange
    "js": "#009E73",          # green
    "alpha": "#D55E00",       # vermillion
    "chi2": "#56B4E9",        # sky blue
}
"""Colour of each divergence in every figure (toy bandits and RLVR runs alike)."""

DIVERGENCE_LABELS: dict[str, str] = {"reverse_kl": "reverse KL", "forward_kl": "forward KL", "js": "JS",
                                     "alpha": "α-divergence", "chi2": "χ²"}
"""How each divergence is written in titles and legends."""

REFERENCE_COLOR = "black"
REFERENCE_LINE = dict(color=REFERENCE_COLOR, linestyle="--", linewidth=2)
"""The reference policy (the base model): black and dashed, everywhere."""

SPARE_COLORS = ("#CC79A7", "#8C564B", "#7F7F7F", "#BCBD22", "#17BECF")
"""For series that are no divergence (in order of first use)."""

_DIVERGENCE_IN_TEXT = re.compile(r"(?<![a-z])(%s)" % "|".join(sorted(DIVERGENCE_COLORS, key=len, reverse=True)))


def divergence_of(label: str) -> str | None:
    """The divergence a series label names first (``"reverse_kl_k1 beta=.5"`` -> ``reverse_kl``)."""
    match = _DIVERGENCE_IN_TEXT.search(label)
    return match.group(1) if match else None


def shade(color: str, amount: float) -> tuple[float, float, float]:
    """``color`` mixed towards black (``amount`` > 0) or white (< 0), |amount| in [0, 1]."""
    rgb = np.array(to_rgb(color))
    target = 0.0 if amount > 0 else 1.0
    return tuple(float(c) for c in rgb + abs(amount) * (target - rgb))


def distinct_colors(colors: Sequence, groups: Sequence | None = None) -> list:
    """The same colours, where a colour that repeats (within one of ``groups``, if given) gets
    darker and lighter shades of itself from its second use on, so that several runs of one
    family stay apart yet recognisably related."""
    groups = [None] * len(colors) if groups is None else list(groups)
    keys = [(str(c), g) for c, g in zip(colors, groups)]
    amounts = (0.0, 0.35, -0.35, 0.55, -0.55, 0.7, -0.7)
    out, seen = list(colors), {}
    for i, key in enumerate(keys):
        n = seen[key] = seen.get(key, -1) + 1
        if n:
            out[i] = shade(colors[i], amounts[n % len(amounts)])
    return out


def series_colors(labels: Sequence[str]) -> list:
    """One colour per series label: the divergence it names, black for ``reference``, otherwise a
    spare colour. Labels with "MARA" keep their divergence's colour (figures hatch or dash them);
    other repeats are shaded apart (``distinct_colors``)."""
    colors, spare = [], iter(SPARE_COLORS * (len(labels) // len(SPARE_COLORS) + 1))
    for label in labels:
        divergence = divergence_of(label)
        colors.append(REFERENCE_COLOR if label == "reference" else
                      DIVERGENCE_COLORS[divergence] if divergence else next(spare))
    return distinct_colors(colors, ["MARA" in label for label in labels])


def legend_outside(ax: Axes, where: str = "right", **kwargs) -> None:
    """A legend beside (``right``) or under (``below``) the axes, never on the data."""
    handles, labels = ax.get_legend_handles_labels()
    if not handles:
        return
    if where == "below":
        ax.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, -0.18), frameon=False,
                  ncol=min(len(labels), kwargs.pop("ncol", 3)), fontsize=kwargs.pop("fontsize", 9), **kwargs)
    else:
        ax.legend(handles, labels, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False,
                  fontsize=kwargs.pop("fontsize", 9), **kwargs)


def place_labels(ax: Axes, xy: Sequence[tuple[float, float]], texts: Sequence[str], colors: Sequence,
                 fontsize: float = 8) -> None:
    """Write ``texts`` next to the data points ``xy`` where they overlap no other label, no marker
    and as little line as possible: candidate spots on growing rings around each point, the
    cheapest wins, and a spot nearer to another point than to its own costs extra; a label pushed
    away from its point, or still nearer to another one, gets a thin leader line. Call it once
    the figure's layout is final (it draws the figure to measure the texts)."""
    fig = ax.figure
    fig.canvas.draw()  # fixes the layout, so display coordinates below are the final ones
    renderer = fig.canvas.get_renderer()
    marker = 4.5 * fig.dpi / 72.0  # half-size (pixels) of the box a marker occupies
    markers, line_points = _obstacles(ax)
    axes_box = ax.get_window_extent(renderer)
    taken: list[tuple[float, float, float, float]] = []
    order = np.argsort([-ax.transData.transform(p)[1] for p in xy])  # top first
    directions = [(1, 1), (-1, 1), (1, -1), (-1, -1), (1, 0), (-1, 0), (0, 1), (0, -1)]
    for i in order:
        own = ax.transData.transform(xy[i])
        best, best_cost = None, np.inf
        for radius in (4, 9, 15, 22, 30, 40):
            for dx, dy in directions:
                kwargs = dict(xytext=(dx * radius, dy * radius), textcoords="offset points", fontsize=fontsize,
                              color=colors[i], ha={1: "left", -1: "right", 0: "center"}[dx],
                              va={1: "bottom", -1: "top", 0: "center"}[dy])
                text = ax.annotate(texts[i], xy[i], **kwargs)
                box = text.get_window_extent(renderer)
                text.remove()
                cost = (100 * sum(_overlap(box, other) for other in taken)
                        + 10 * sum(_overlap(box, (x - marker, y - marker, x + marker, y + marker)) for x, y in markers)
                        + np.sum((line_points[:, 0] > box.x0) & (line_points[:, 0] < box.x1)
                                 & (line_points[:, 1] > box.y0) & (line_points[:, 1] < box.y1))
                        + 1e6 * (box.x0 < axes_box.x0 or box.x1 > axes_box.x1
                                 or box.y0 < axes_box.y0 or box.y1 > axes_box.y1)
                        + 50 * _nearer_other(box, own, markers)
                        + 0.5 * radius)  # among equals, the closest spot
                if cost < best_cost:
                    best, best_cost = (kwargs, radius, box), cost
        kwargs, radius, box = best
        leader = (dict(arrowstyle="-", color=colors[i], lw=0.6, shrinkA=0, shrinkB=3)
                  if radius > 9 or _nearer_other(box, own, markers) else None)
        ax.annotate(texts[i], xy[i], arrowprops=leader, **kwargs)
        taken.append((box.x0, box.y0, box.x1, box.y1))


def _obstacles(ax: Axes) -> tuple[np.ndarray, np.ndarray]:
    """Display coordinates of every line's markers, and of points every ~2 pixels along its segments."""
    markers, along = [np.zeros((0, 2))], [np.zeros((0, 2))]
    for line in ax.get_lines():
        points = ax.transData.transform(np.column_stack(line.get_data()).astype(float))
        if line.get_marker() not in (None, "None", "", " "):
            markers.append(points)
        if line.get_linestyle() not in ("None", "", " "):
            for a, b in zip(points[:-1], points[1:]):
                steps = max(2, int(np.hypot(*(b - a)) / 2))
                along.append(a + np.linspace(0, 1, steps)[:, None] * (b - a))
    return np.concatenate(markers), np.concatenate(along)


def _nearer_other(box, own: np.ndarray, markers: np.ndarray) -> bool:
    """True when some other marker is nearer to the label's centre than the label's own point."""
    centre = np.array([(box.x0 + box.x1) / 2, (box.y0 + box.y1) / 2])
    return bool(np.any(np.hypot(*(markers - centre).T) < np.hypot(*(own - centre)) - 1))


def _overlap(box, other) -> float:
    """Overlapping area (pixels²) of a matplotlib Bbox and an (x0, y0, x1, y1) tuple."""
    x0, y0, x1, y1 = other
    return max(0.0, min(box.x1, x1) - max(box.x0, x0)) * max(0.0, min(box.y1, y1) - max(box.y0, y0))
