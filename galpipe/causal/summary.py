"""Summaries of the local causal tests per model, statistic, galaxy class and stellar-mass bin.

The paper compares, per model and class, the distribution of each local statistic with the
distribution of its single-permutation null reference. :func:`summarise_local_tests` reports,
for every (model, query, condition, statistic, class, mass bin) group, quantiles of both, a
two-sample Kolmogorov-Smirnov test between them and the share of galaxies whose permutation
p-value survives a Benjamini-Hochberg false-discovery correction. Rows with class ``"all"``
include every galaxy (also those without a class) and rows with null mass-bin edges every
stellar mass.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from galpipe.causal.local_tests import STATISTICS
from galpipe.contracts import load_contract

logger = logging.getLogger(__name__)

ALL_CLASSES = "all"
QUANTILES: tuple[float, ...] = (0.05, 0.25, 0.50, 0.75, 0.95)
_QUANTILE_NAMES = ("q05", "q25", "q50", "q75", "q95")
_GROUP_KEYS = ("model", "query", "condition")


def benjamini_hochberg(p_values: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values; NaN entries stay NaN and are not counted.

    For the m finite p-values sorted ascending, p_(i) becomes min over j >= i of
    ``m * p_(j) / j``, capped at 1. A p-value is significant at false-discovery rate alpha
    when its adjusted value is at most alpha.
    """
    p_values = np.asarray(p_values, dtype=np.float64)
    adjusted = np.full(p_values.shape, np.nan)
    finite = ~np.isnan(p_values)
    ranked_p = p_values[finite]
    n_tests = ranked_p.size
    if n_tests == 0:
        return adjusted
    order = np.argsort(ranked_p, kind="stable")
    scaled = ranked_p[order] * n_tests / np.arange(1, n_tests + 1)
    monotone = np.minimum.accumulate(scaled[::-1])[::-1]
    in_original_order = np.empty(n_tests)
    in_original_order[order] = np.minimum(monotone, 1.0)
    adjusted[finite] = in_original_order
    return adjusted


def as_arrow_table(frame: Any) -> pa.Table:
    """A pyarrow Table from a pyarrow, pandas or polars frame."""
    if isinstance(frame, pa.Table):
        return frame
    if type(frame).__module__.startswith("polars"):
        return frame.to_arrow()
    if type(frame).__module__.startswith("pandas"):
        return pa.Table.from_pandas(frame, preserve_index=False)
    raise TypeError(f"expected a pyarrow Table, pandas or polars DataFrame; got {type(frame)}")


def _floats(table: pa.Table, name: str) -> np.ndarray:
    """A column as float64 with nulls as NaN."""
    return np.asarray(table.column(name).cast(pa.float64()).to_numpy(zero_copy_only=False),
                      dtype=np.float64)


def _strings(table: pa.Table, name: str) -> np.ndarray:
    """A column as an object array of str or None."""
    return np.array(table.column(name).cast(pa.string()).to_pylist(), dtype=object)


def _quantiles(values: np.ndarray) -> list[float | None]:
    """The summary quantiles of finite values (linear interpolation), or Nones if empty."""
    values = values[~np.isnan(values)]
    if values.size == 0:
        return [None] * len(QUANTILES)
    return [float(q) for q in np.quantile(values, QUANTILES)]


def _mass_bins(stellar_mass: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Bin index of each mass, -1 outside [edges[0], edges[-1]] or NaN; the last bin is closed."""
    index = np.searchsorted(edges, stellar_mass, side="right") - 1
    index[stellar_mass == edges[-1]] = len(edges) - 2
    index[(index < 0) | (index >= len(edges) - 1) | np.isnan(stellar_mass)] = -1
    return index


def _group_codes(columns: list[np.ndarray]) -> np.ndarray:
    """One integer per row, equal for rows whose string columns (None included) all agree."""
    codes = np.zeros(len(columns[0]), dtype=np.int64)
    for values in columns:
        # Prefixing every real value keeps None (the empty string) apart from any value.
        filled = np.array(["" if v is None else f"+{v}" for v in values], dtype=str)
        distinct, inverse = np.unique(filled, return_inverse=True)
        codes = codes * len(distinct) + inverse.ravel()
    return codes


def summarise_local_tests(
    frame: Any,
    mass_bin_edges: Sequence[float],
    *,
    run_id: str,
    alpha: float = 0.05,
    statistics: Sequence[str] = STATISTICS,
) -> pa.Table:
    """Summary table of local tests per model, statistic, class and stellar-mass bin.

    Parameters
    ----------
    frame:
        ``local_tests`` rows joined with the galaxies' ``class`` (string, may be null) and
        ``stellar_mass`` (dex): a pyarrow Table or a pandas or polars DataFrame. Needs columns
        model, query, condition, class, stellar_mass and, for each statistic s, s, s_perm1 and
        s_pvalue.
    mass_bin_edges:
        Increasing stellar-mass bin edges (dex); bins are [low, high), the last one closed.
        Galaxies outside every bin appear only in the all-mass rows.
    run_id:
        Written into every row.
    alpha:
        False-discovery rate. Benjamini-Hochberg runs over every galaxy of the same model,
        query, condition and statistic (the family does not change with the grouping), and
        each group reports the share of its galaxies with an adjusted p-value <= alpha.
    statistics:
        Which statistics to summarise (default r, pe, r_cond, pe_cond); a conditional statistic
        with no values (tests without a condition) gives no rows.

    Returns
    -------
    ``pyarrow.Table`` matching ``schemas/local_tests_summary.yaml``.
    """
    table = as_arrow_table(frame)
    needed = [*_GROUP_KEYS, "class", "stellar_mass"]
    needed += [f"{s}{suffix}" for s in statistics for suffix in ("", "_perm1", "_pvalue")]
    missing = [name for name in needed if name not in table.column_names]
    if missing:
        raise ValueError(f"local tests frame lacks columns {missing}; join local_tests with the "
                         "galaxies' class and stellar_mass first")
    unknown = [s for s in statistics if s not in STATISTICS]
    if unknown:
        raise ValueError(f"unknown statistics {unknown}; expected some of {STATISTICS}")
    edges = np.asarray(mass_bin_edges, dtype=np.float64)
    if edges.ndim != 1 or edges.size < 2 or np.any(np.diff(edges) <= 0):
        raise ValueError(f"mass_bin_edges must be at least two increasing values; got {edges}")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must lie in (0, 1); got {alpha}")

    keys = {name: _strings(table, name) for name in (*_GROUP_KEYS, "class")}
    if np.any(keys["class"] == ALL_CLASSES):
        raise ValueError(f"column 'class' holds the value '{ALL_CLASSES}', which the summary "
                         "reserves for every class together; rename that class")
    mass_bin = _mass_bins(_floats(table, "stellar_mass"), edges)
    classes = [ALL_CLASSES] + sorted({c for c in keys["class"] if c is not None})
    bins = [(None, None, -1)] + [(float(edges[i]), float(edges[i + 1]), i)
                                 for i in range(edges.size - 1)]
    group_codes = _group_codes([keys[name] for name in _GROUP_KEYS])
    groups = np.unique(group_codes)

    rows: list[dict[str, Any]] = []
    for code in groups:
        in_group = group_codes == code
        first = int(np.flatnonzero(in_group)[0])
        group = tuple(keys[name][first] for name in _GROUP_KEYS)
        for statistic in statistics:
            original = _floats(table, statistic)
            permuted = _floats(table, f"{statistic}_perm1")
            adjusted = benjamini_hochberg(
                np.where(in_group, _floats(table, f"{statistic}_pvalue"), np.nan)
            )
            if np.all(np.isnan(original[in_group])):
                continue
            for galaxy_class in classes:
                in_class = in_group if galaxy_class == ALL_CLASSES else (
                    in_group & (keys["class"] == galaxy_class))
                for low, high, index in bins:
                    selected = in_class if index < 0 else in_class & (mass_bin == index)
                    rows.append(_group_row(
                        original[selected], permuted[selected], adjusted[selected], alpha,
                        dict(zip(_GROUP_KEYS, group), statistic=statistic,
                             **{"class": galaxy_class}, mass_bin_low=low, mass_bin_high=high),
                    ))
    logger.info("summarised local tests: %d groups of model/query/condition, %d rows",
                len(groups), len(rows))

    schema = load_contract("local_tests_summary").arrow_schema()
    columns = {field.name: [row.get(field.name) for row in rows] for field in schema}
    columns["run_id"] = [run_id] * len(rows)
    return pa.table(columns, schema=schema)


def _group_row(
    original: np.ndarray,
    permuted: np.ndarray,
    adjusted: np.ndarray,
    alpha: float,
    labels: dict[str, Any],
) -> dict[str, Any]:
    """One summary row from a group's statistics, single-permutation values and BH p-values."""
    row = dict(labels, alpha=alpha)
    finite_original = original[~np.isnan(original)]
    finite_permuted = permuted[~np.isnan(permuted)]
    row["count"] = int(finite_original.size)
    row |= dict(zip(_QUANTILE_NAMES, _quantiles(original)))
    row |= {f"perm1_{name}": value
            for name, value in zip(_QUANTILE_NAMES, _quantiles(permuted))}
    if finite_original.size and finite_permuted.size:
        # Imported here: scipy.stats takes seconds to import, and Ray workers that only run
        # the local-test kernel import this package too.
        from scipy.stats import ks_2samp

        test = ks_2samp(finite_original, finite_permuted)
        row["ks_statistic"], row["ks_pvalue"] = float(test.statistic), float(test.pvalue)
    tested = adjusted[~np.isnan(adjusted)]
    row["significant_fraction"] = float(np.mean(tested <= alpha)) if tested.size else None
    return row
