"""Figures of the causal analysis: local-test distributions and bootstrap causal graphs.

* :func:`plot_local_tests`: for one model, a grid with one row per statistic (r, pe, ...) and
  one column per galaxy class, each panel overlaying the histogram of the original statistic
  and of its single-permutation null reference, as in the paper's comparison.
* :func:`plot_causal_graph`: the ``causal_edges`` table of one method as a graph on a circle;
  line width and opacity grow with the adjacency frequency and the line carries the marks of
  the pair's most frequent pattern (arrowheads, open circles for FCI's circle marks).

Figures are drawn on the Agg canvas directly (no pyplot state), so this runs in workers and
threads without a display.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from galpipe.causal.discovery import (
    BIDIRECTED,
    DIRECTED,
    NONDIRECTED,
    PARTIALLY_DIRECTED,
    PATTERN_COLUMNS,
    REVERSE_DIRECTED,
    REVERSE_PARTIALLY_DIRECTED,
    UNDIRECTED,
)
from galpipe.causal.summary import ALL_CLASSES, as_arrow_table

if TYPE_CHECKING:
    from matplotlib.figure import Figure

logger = logging.getLogger(__name__)

_LABELS = {"r": "local correlation r", "pe": "predictive efficiency PE",
           "r_cond": "conditional r", "pe_cond": "conditional PE"}
# Marks (at source, at target) drawn for each pattern: "tail", "arrow" or "circle".
_MARKS = {
    DIRECTED: ("tail", "arrow"),
    REVERSE_DIRECTED: ("arrow", "tail"),
    UNDIRECTED: ("tail", "tail"),
    BIDIRECTED: ("arrow", "arrow"),
    PARTIALLY_DIRECTED: ("circle", "arrow"),
    REVERSE_PARTIALLY_DIRECTED: ("arrow", "circle"),
    NONDIRECTED: ("circle", "circle"),
}


def plot_local_tests(
    frame: Any,
    model: str,
    path: str | Path,
    *,
    statistics: Sequence[str] = ("r", "pe"),
    bins: int = 40,
) -> Path:
    """Histograms of original against single-permutation statistics, per class, for one model.

    Parameters
    ----------
    frame:
        ``local_tests`` rows (pyarrow, pandas or polars) with a ``class`` column joined in;
        rows of other models are ignored.
    model:
        Model to draw.
    path:
        Output PNG file; parent directories are created.
    statistics:
        Statistics to draw, one row of panels each (columns s and s_perm1 must exist).
    bins:
        Histogram bins per panel.

    Returns
    -------
    The PNG path.
    """
    table = as_arrow_table(frame)
    needed = ["model", "class", *statistics, *(f"{s}_perm1" for s in statistics)]
    missing = [name for name in needed if name not in table.column_names]
    if missing:
        raise ValueError(f"local tests frame lacks columns {missing} needed for the figure")
    models = np.array(table.column("model").to_pylist(), dtype=object)
    selected = models == model
    if not selected.any():
        raise ValueError(f"no local tests of model {model!r}; models present: "
                         f"{sorted(set(models.tolist()))}")
    classes_of_rows = np.array(table.column("class").to_pylist(), dtype=object)[selected]
    classes = [ALL_CLASSES] + sorted({c for c in classes_of_rows if c is not None})

    figure = _new_figure((3.2 * len(classes), 2.6 * len(statistics)))
    axes = figure.subplots(len(statistics), len(classes), squeeze=False)
    for row, statistic in enumerate(statistics):
        original = np.asarray(table.column(statistic).to_numpy(zero_copy_only=False),
                              dtype=float)[selected]
        permuted = np.asarray(table.column(f"{statistic}_perm1").to_numpy(zero_copy_only=False),
                              dtype=float)[selected]
        finite = np.concatenate([original, permuted])
        finite = finite[np.isfinite(finite)]
        edges = np.histogram_bin_edges(finite if finite.size else [0.0, 1.0], bins=bins)
        for column, galaxy_class in enumerate(classes):
            axis = axes[row, column]
            in_class = (np.ones(len(original), dtype=bool) if galaxy_class == ALL_CLASSES
                        else classes_of_rows == galaxy_class)
            for values, label, colour in ((original, "original", "#c44e52"),
                                          (permuted, "permuted", "#4c72b0")):
                values = values[in_class & np.isfinite(values)]
                if values.size:
                    axis.hist(values, bins=edges, histtype="step", density=True, color=colour,
                              label=f"{label} (n={values.size})")
            if row == 0:
                axis.set_title(galaxy_class)
            if column == 0:
                axis.set_ylabel("density")
            axis.set_xlabel(_LABELS.get(statistic, statistic))
            axis.legend(fontsize="x-small", frameon=False)
    figure.suptitle(f"local tests, model {model}")
    return _save(figure, path)


def plot_causal_graph(
    edges: Any,
    path: str | Path,
    *,
    min_frequency: float = 0.1,
    title: str | None = None,
) -> Path:
    """Draw a ``causal_edges`` table (one method and test) as a graph on a circle.

    Parameters
    ----------
    edges:
        ``causal_edges`` rows of a single (method, indep_test) pair.
    path:
        Output PNG file; parent directories are created.
    min_frequency:
        Pairs adjacent in fewer resamples than this are not drawn.
    title:
        Figure title; by default method, test and B.

    Returns
    -------
    The PNG path.
    """
    table = as_arrow_table(edges)
    runs = {(m, t) for m, t in zip(table.column("method").to_pylist(),
                                   table.column("indep_test").to_pylist())}
    if len(runs) != 1:
        raise ValueError(f"edges table holds {len(runs)} (method, indep_test) pairs {sorted(runs)}"
                         "; filter it to one")
    rows = table.to_pylist()
    names = list(dict.fromkeys([r["source"] for r in rows] + [r["target"] for r in rows]))
    angles = np.pi / 2 - 2 * np.pi * np.arange(len(names)) / max(1, len(names))
    position = {name: np.array([math.cos(a), math.sin(a)]) for name, a in zip(names, angles)}

    figure = _new_figure((6.0, 6.0))
    axis = figure.subplots()
    for row in rows:
        frequency = row["adjacency_frequency"]
        if frequency < min_frequency:
            continue
        shares = {code: row[column] or 0.0 for code, column in PATTERN_COLUMNS.items()}
        pattern = max(shares, key=shares.get)
        _draw_edge(axis, position[row["source"]], position[row["target"]],
                   _MARKS.get(pattern, ("tail", "tail")), frequency)
        middle = (position[row["source"]] + position[row["target"]]) / 2
        axis.text(*middle, f"{frequency:.2f}", fontsize=7, ha="center", va="center",
                  bbox={"boxstyle": "round,pad=0.1", "fc": "white", "ec": "none", "alpha": 0.7})
    for name, xy in position.items():
        axis.text(*xy, name, ha="center", va="center", fontsize=9, zorder=3,
                  bbox={"boxstyle": "round,pad=0.3", "fc": "#f0f0f0", "ec": "#333333"})
    method, indep_test = next(iter(runs))
    n_bootstrap = rows[0]["n_bootstrap"] if rows else 0
    axis.set_title(title or f"{method.upper()} ({indep_test}), B = {n_bootstrap}: "
                   "width = adjacency frequency, marks = most frequent pattern", fontsize=8)
    axis.set_xlim(-1.35, 1.35)
    axis.set_ylim(-1.35, 1.35)
    axis.set_aspect("equal")
    axis.axis("off")
    return _save(figure, path)


def _draw_edge(axis: Any, start: np.ndarray, end: np.ndarray, marks: tuple[str, str],
               frequency: float) -> None:
    """One edge from start to end with its end marks, shortened to clear the node labels."""
    direction = (end - start) / np.linalg.norm(end - start)
    start, end = start + 0.16 * direction, end - 0.16 * direction
    # Circle marks are drawn as markers over a plain line end.
    head_at_start, head_at_end = marks[0] == "arrow", marks[1] == "arrow"
    arrowstyle = {(False, False): "-", (False, True): "->", (True, False): "<-",
                  (True, True): "<->"}[(head_at_start, head_at_end)]
    colour = "#333333"
    axis.annotate("", xy=end, xytext=start, arrowprops={
        "arrowstyle": arrowstyle, "lw": 0.5 + 4.0 * frequency, "color": colour,
        "alpha": 0.25 + 0.75 * frequency, "mutation_scale": 14 + 6 * frequency,
        "shrinkA": 0, "shrinkB": 0})
    for mark, point, inward in ((marks[0], start, direction), (marks[1], end, -direction)):
        if mark == "circle":
            centre = point + 0.03 * inward
            axis.plot(*centre, marker="o", markersize=7, markerfacecolor="white",
                      markeredgecolor=colour, zorder=2)


def _new_figure(size: tuple[float, float]) -> Figure:
    """A figure on its own Agg canvas (size in inches)."""
    # Imported here so that importing galpipe.causal (as Ray workers do) skips matplotlib.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=size, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _save(figure: Figure, path: str | Path) -> Path:
    """Write a figure as PNG, creating parent directories; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    logger.info("wrote figure %s", path)
    return path
