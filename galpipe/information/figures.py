"""Figures of the information decomposition, drawn from an ``information_summary`` table.

Two kinds, as in the paper, for every redundancy measure in the summary:

* per-class bars: for each tuple a panel with the four components' means per class, grouped
  bars with the bootstrap intervals as error bars;
* stacked profiles against stellar mass (and magnitude when summarised): one panel per tuple,
  the components stacked with positive parts above zero and negative parts below, plus the
  union's total information and, where defined, the gap to the reference model.

Figures are drawn on the Agg canvas directly (no pyplot state), so this runs in workers and
threads without a display.
"""

from __future__ import annotations

import logging
import math
import os
import re

import numpy as np
import pyarrow as pa
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from galpipe.information.aggregates import ALL_GALAXIES
from galpipe.information.decomposition import COMPONENTS

logger = logging.getLogger(__name__)

_COLOURS = {"redundant": "#4c72b0", "unique_1": "#55a868", "unique_2": "#dd8452",
            "synergistic": "#c44e52"}
_LABELS = {"redundant": "redundant", "unique_1": "unique (source 1)",
           "unique_2": "unique (source 2)", "synergistic": "synergistic"}
_AXIS_LABELS = {"stellar_mass": r"$\log_{10} M_*/M_\odot$ [dex]", "magnitude": "magnitude [mag]"}
_REQUIRED = ("run_id", "tuple", "redundancy_measure", "component", "grouping", "group",
             "bin_low", "bin_high", "mean", "ci_low", "ci_high")


def _safe_name(text: str) -> str:
    """A file-name-safe version of a measure or grouping name."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text)


def _new_figure(n_panels: int) -> tuple[Figure, int, int]:
    """An Agg figure sized for a grid of at most three panels per row, and (rows, columns)."""
    n_columns = min(3, n_panels)
    n_rows = math.ceil(n_panels / n_columns)
    figure = Figure(figsize=(max(6.0, 5.0 * n_columns), 3.8 * n_rows + 0.4),
                    layout="constrained")
    FigureCanvasAgg(figure)
    return figure, n_rows, n_columns


def _rows(summary: pa.Table) -> list[dict]:
    """Summary rows as dicts, after checking the columns figures need."""
    missing = [name for name in _REQUIRED if name not in summary.column_names]
    if missing:
        raise ValueError(f"summary table lacks columns {missing}; expected an "
                         "information_summary table")
    run_ids = set(summary["run_id"].to_pylist())
    if len(run_ids) > 1:
        raise ValueError(f"summary holds several runs {sorted(run_ids)}; filter it to one run_id")
    return summary.select(list(_REQUIRED)).to_pylist()


def _error_bars(means: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """Asymmetric error bar lengths (2, n) from interval bounds; 0 where a bound is missing."""
    return np.nan_to_num(np.vstack([means - low, high - means]), nan=0.0).clip(min=0.0)


def _class_bars(rows: list[dict], measure: str, path: str) -> None:
    """Grouped bars of the four components per class, one panel per tuple."""
    tuples = sorted({row["tuple"] for row in rows})
    figure, n_rows, n_columns = _new_figure(len(tuples))
    width = 0.8 / len(COMPONENTS)

    for panel, tuple_name in enumerate(tuples, start=1):
        axes = figure.add_subplot(n_rows, n_columns, panel)
        table = {(row["group"], row["component"]): row for row in rows
                 if row["tuple"] == tuple_name}
        classes = sorted({group for group, _ in table}, key=lambda g: (g != ALL_GALAXIES, g))
        x = np.arange(len(classes))
        for k, component in enumerate(COMPONENTS):
            entries = [table.get((name, component)) for name in classes]
            means = np.array([e["mean"] if e else np.nan for e in entries], dtype=float)
            low = np.array([e["ci_low"] if e and e["ci_low"] is not None else np.nan
                            for e in entries], dtype=float)
            high = np.array([e["ci_high"] if e and e["ci_high"] is not None else np.nan
                             for e in entries], dtype=float)
            axes.bar(x + (k - (len(COMPONENTS) - 1) / 2) * width, np.nan_to_num(means), width,
                     yerr=_error_bars(means, low, high), capsize=2, color=_COLOURS[component],
                     label=_LABELS[component])
        axes.axhline(0.0, color="black", linewidth=0.8)
        axes.set_xticks(x, classes)
        axes.set_ylabel("mean pointwise information [nats]")
        axes.set_title(tuple_name)
        if panel == 1:
            axes.legend(fontsize="small")
    figure.suptitle(f"Information decomposition per class ({measure})", fontsize="medium")
    figure.savefig(path, dpi=110)


def _profile_panel(axes, rows: list[dict], grouping: str) -> bool:
    """Stacked components against one profile variable; False if there is nothing to draw."""
    bins = sorted({(row["bin_low"], row["bin_high"]) for row in rows
                   if row["component"] in COMPONENTS})
    table = {(row["bin_low"], row["bin_high"], row["component"]): row for row in rows}
    bins = [b for b in bins if all((*b, c) in table for c in COMPONENTS)]
    if not bins:
        return False
    low = np.array([b[0] for b in bins])
    high = np.array([b[1] for b in bins])
    centres, widths = 0.5 * (low + high), high - low

    # Positive parts stack upwards from zero and negative parts downwards, so the bar's signed
    # height is the union information and the misinformation stays visible.
    above = np.zeros(len(bins))
    below = np.zeros(len(bins))
    for component in COMPONENTS:
        means = np.array([table[(*b, component)]["mean"] for b in bins])
        positive, negative = np.clip(means, 0.0, None), np.clip(means, None, 0.0)
        axes.bar(centres, positive, widths, bottom=above, color=_COLOURS[component],
                 label=_LABELS[component], edgecolor="white", linewidth=0.4)
        axes.bar(centres, negative, widths, bottom=below, color=_COLOURS[component],
                 edgecolor="white", linewidth=0.4, hatch="//")
        above += positive
        below += negative

    for component, style, label in (("i_union", "-", "union information"),
                                    ("gap", "--", "gap to reference")):
        entries = [table.get((*b, component)) for b in bins]
        if not any(entries):
            continue
        means = np.array([e["mean"] if e else np.nan for e in entries], dtype=float)
        ci_low = np.array([e["ci_low"] if e and e["ci_low"] is not None else np.nan
                           for e in entries], dtype=float)
        ci_high = np.array([e["ci_high"] if e and e["ci_high"] is not None else np.nan
                            for e in entries], dtype=float)
        axes.plot(centres, means, style, color="black", label=label, linewidth=1.2)
        axes.fill_between(centres, ci_low, ci_high, color="black", alpha=0.12, linewidth=0)
    axes.axhline(0.0, color="black", linewidth=0.8)
    axes.set_xlabel(_AXIS_LABELS.get(grouping, grouping))
    axes.set_ylabel("mean pointwise information [nats]")
    return True


def _profiles(rows: list[dict], measure: str, grouping: str, path: str) -> bool:
    """One figure of stacked profiles, one panel per tuple; False if no bin has all parts."""
    tuples = sorted({row["tuple"] for row in rows})
    figure, n_rows, n_columns = _new_figure(len(tuples))
    drawn = False
    for panel, tuple_name in enumerate(tuples, start=1):
        axes = figure.add_subplot(n_rows, n_columns, panel)
        has_data = _profile_panel(axes, [row for row in rows if row["tuple"] == tuple_name],
                                  grouping)
        axes.set_title(tuple_name if has_data else f"{tuple_name} (no bin with enough galaxies)")
        if has_data and not drawn:
            axes.legend(fontsize="small")
        drawn = drawn or has_data
    if drawn:
        figure.suptitle(f"Information decomposition against {grouping} ({measure})\n"
                        "hatched: negative parts", fontsize="medium")
        figure.savefig(path, dpi=110)
    return drawn


def information_figures(summary: pa.Table, out_dir: str) -> list[str]:
    """Draw the paper's decomposition figures for one run's ``information_summary`` table.

    Parameters
    ----------
    summary:
        Output of :func:`galpipe.information.summarise_information` for a single run_id.
    out_dir:
        Local directory for the PNG files (created if needed).

    Returns
    -------
    Paths of the written PNGs: ``information_classes_<measure>.png`` and
    ``information_profile_<grouping>_<measure>.png`` for each redundancy measure and each
    profile grouping present.
    """
    rows = _rows(summary)
    os.makedirs(out_dir, exist_ok=True)
    paths: list[str] = []
    for measure in sorted({row["redundancy_measure"] for row in rows}):
        measure_rows = [row for row in rows if row["redundancy_measure"] == measure]
        class_rows = [row for row in measure_rows if row["grouping"] == "class"]
        if class_rows:
            path = os.path.join(out_dir, f"information_classes_{_safe_name(measure)}.png")
            _class_bars(class_rows, measure, path)
            paths.append(path)
        for grouping in sorted({row["grouping"] for row in measure_rows} - {"class"}):
            path = os.path.join(out_dir, f"information_profile_{_safe_name(grouping)}_"
                                f"{_safe_name(measure)}.png")
            if _profiles([row for row in measure_rows if row["grouping"] == grouping], measure,
                         grouping, path):
                paths.append(path)
    logger.info("wrote %d information figures to %s", len(paths), out_dir)
    return paths
