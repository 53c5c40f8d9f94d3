"""Averages of the pointwise information decomposition, with bootstrap confidence intervals.

The paper reports each component of the decomposition averaged per galaxy class and as profiles
against stellar mass and r-band magnitude. Here every average comes with a percentile bootstrap
interval. A "group" is one (tuple, redundancy measure, grouping, class or bin); its galaxies are
resampled jointly for all components, so the components' intervals come from the same
replicates. Each group's random stream is seeded from ``SeedSequence([seed, group_index])``, with
groups enumerated in a fixed order that does not depend on the data volume per group, on
``min_count`` or on how many Ray tasks share the work: the same seed gives the same intervals
with or without Ray.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from galpipe.bins import MassBins

logger = logging.getLogger(__name__)

SUMMARY_COMPONENTS: tuple[str, ...] = (
    "i_source_1", "i_source_2", "i_union", "redundant", "unique_1", "unique_2", "synergistic",
    "gap",
)
GROUPINGS: tuple[str, ...] = ("class", "stellar_mass", "magnitude")
ALL_GALAXIES = "all"
DEFAULT_MASS_STEP = 0.25  # dex
DEFAULT_MAGNITUDE_STEP = 0.5  # mag
# Bound on replicates x galaxies drawn at once, so memory stays near 100 MB per worker.
DEFAULT_MAX_CHUNK_ELEMENTS = 1 << 22

SUMMARY_SCHEMA = pa.schema([
    pa.field("run_id", pa.string(), nullable=False),
    pa.field("tuple", pa.string(), nullable=False),
    pa.field("redundancy_measure", pa.string(), nullable=False),
    pa.field("component", pa.string(), nullable=False),
    pa.field("grouping", pa.string(), nullable=False),
    pa.field("group", pa.string(), nullable=False),
    pa.field("bin_low", pa.float64(), nullable=True),
    pa.field("bin_high", pa.float64(), nullable=True),
    pa.field("n", pa.int64(), nullable=False),
    pa.field("mean", pa.float64(), nullable=False),
    pa.field("ci_low", pa.float64(), nullable=True),
    pa.field("ci_high", pa.float64(), nullable=True),
    pa.field("n_bootstrap", pa.int64(), nullable=False),
    pa.field("level", pa.float64(), nullable=False),
])


def bootstrap_mean_intervals(
    values: np.ndarray,
    *,
    n_bootstrap: int,
    level: float,
    seed_sequence: np.random.SeedSequence,
    max_chunk_elements: int = DEFAULT_MAX_CHUNK_ELEMENTS,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Means and percentile-bootstrap intervals of the columns of ``values``.

    Rows (galaxies) are resampled with replacement, the same draws for every column. NaN
    entries are missing: each mean, original or resampled, is over the finite entries only.

    Parameters
    ----------
    values:
        Shape (n, c) or (n,), any unit; n >= 1.
    n_bootstrap:
        Number of bootstrap replicates.
    level:
        Central coverage of the interval, e.g. 0.95 for the 2.5th to 97.5th percentiles.
    seed_sequence:
        Seeds the replicates' draws.
    max_chunk_elements:
        Most entries of the (replicates, n) index matrix drawn at once.

    Returns
    -------
    mean, ci_low, ci_high (float64) and n (int64, finite entries), each shape (c,) (or scalars
    for 1-d input). Means are NaN where a column has no finite entry; interval bounds are NaN
    only if no replicate drew a finite entry.
    """
    values = np.asarray(values, dtype=np.float64)
    one_column = values.ndim == 1
    matrix = values[:, None] if one_column else values
    if matrix.ndim != 2 or matrix.shape[0] < 1:
        raise ValueError(f"values must have shape (n,) or (n, c) with n >= 1, got {values.shape}")
    _check_bootstrap_options(n_bootstrap, level)
    n_rows = matrix.shape[0]

    finite = np.isfinite(matrix)
    filled = np.where(finite, matrix, 0.0)
    finite_weights = finite.astype(np.float64)
    n_finite = finite.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = filled.sum(axis=0) / n_finite

    # Each replicate's draw becomes a row of multiplicities, so the resampled sums are one
    # matrix product instead of a (replicates, n, c) gather.
    rng = np.random.default_rng(seed_sequence)
    rows_per_chunk = max(1, max_chunk_elements // n_rows)
    replicate_means = np.empty((n_bootstrap, matrix.shape[1]))
    for start in range(0, n_bootstrap, rows_per_chunk):
        stop = min(start + rows_per_chunk, n_bootstrap)
        draws = rng.integers(0, n_rows, size=(stop - start, n_rows))
        offsets = np.arange(stop - start)[:, None] * n_rows
        multiplicity = np.bincount((draws + offsets).ravel(), minlength=(stop - start) * n_rows)
        multiplicity = multiplicity.reshape(stop - start, n_rows).astype(np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            replicate_means[start:stop] = (multiplicity @ filled) / (multiplicity @ finite_weights)

    tail = (1.0 - level) / 2.0
    all_missing = np.isnan(replicate_means).all(axis=0)
    ci_low = np.full(matrix.shape[1], np.nan)
    ci_high = np.full(matrix.shape[1], np.nan)
    if (~all_missing).any():
        bounds = np.nanquantile(replicate_means[:, ~all_missing], [tail, 1.0 - tail], axis=0)
        ci_low[~all_missing], ci_high[~all_missing] = bounds
    if one_column:
        return mean[0], ci_low[0], ci_high[0], n_finite[0]
    return mean, ci_low, ci_high, n_finite.astype(np.int64)


def _check_bootstrap_options(n_bootstrap: int, level: float) -> None:
    """Raise for a replicate count or interval level no bootstrap can use."""
    if int(n_bootstrap) != n_bootstrap or n_bootstrap < 1:
        raise ValueError(f"n_bootstrap must be a positive integer, got {n_bootstrap}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must lie strictly between 0 and 1, got {level}")


def assign_profile_bins(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Profile bin of each value: k where edges[k] <= v < edges[k+1], the last bin closed.

    Parameters
    ----------
    values:
        Shape (n,), e.g. stellar mass in dex or a magnitude; NaN allowed.
    edges:
        Shape (m + 1,), strictly increasing.

    Returns
    -------
    Shape (n,) int64 bin indices in [0, m - 1]; -1 for NaN or values outside the edges.
    """
    edges = _check_edges("edges", edges)
    values = np.asarray(values, dtype=np.float64)
    index = np.searchsorted(edges, values, side="right") - 1
    index[values == edges[-1]] = edges.size - 2
    index[~np.isfinite(values) | (values < edges[0]) | (values > edges[-1])] = -1
    return index.astype(np.int64)


def _check_edges(name: str, edges: np.ndarray) -> np.ndarray:
    """Return edges as float64 after checking they are finite and strictly increasing."""
    edges = np.asarray(edges, dtype=np.float64)
    if edges.ndim != 1 or edges.size < 2 or not np.isfinite(edges).all():
        raise ValueError(f"{name} must be at least two finite bin edges, got {edges!r}")
    if not (np.diff(edges) > 0).all():
        raise ValueError(f"{name} must be strictly increasing, got {edges!r}")
    return edges


def default_mass_edges(mass_bins: MassBins | None = None) -> np.ndarray:
    """Profile edges every 0.25 dex over the models' mass range (default [6, 12.5] dex)."""
    mass_bins = mass_bins or MassBins()
    n_steps = max(1, round((mass_bins.high - mass_bins.low) / DEFAULT_MASS_STEP))
    return np.linspace(mass_bins.low, mass_bins.high, n_steps + 1)


def default_magnitude_edges(magnitudes: np.ndarray) -> np.ndarray:
    """Profile edges every 0.5 mag, on half-magnitude boundaries spanning the finite values."""
    finite = np.asarray(magnitudes, dtype=np.float64)
    finite = finite[np.isfinite(finite)]
    if finite.size == 0:
        raise ValueError("the magnitude column has no finite value to build profile bins from")
    low = math.floor(finite.min() / DEFAULT_MAGNITUDE_STEP) * DEFAULT_MAGNITUDE_STEP
    high = math.ceil(finite.max() / DEFAULT_MAGNITUDE_STEP) * DEFAULT_MAGNITUDE_STEP
    n_steps = max(1, round((high - low) / DEFAULT_MAGNITUDE_STEP))
    return low + DEFAULT_MAGNITUDE_STEP * np.arange(n_steps + 1)


@dataclass(frozen=True)
class _Group:
    """One set of galaxies whose components are averaged together."""

    index: int
    tuple_name: str
    redundancy_measure: str
    grouping: str
    label: str
    bin_low: float | None
    bin_high: float | None
    rows: np.ndarray  # indices into the tuple's rows of the information table


def _bin_label(low: float, high: float, last: bool) -> str:
    """Readable label of a profile bin, e.g. '[9.25, 9.50)'."""
    return f"[{low:.2f}, {high:.2f}{']' if last else ')'}"


def _profile_groups(values: np.ndarray, edges: np.ndarray) -> list[tuple[str, float, float,
                                                                          np.ndarray]]:
    """(label, low, high, rows) of every profile bin, empty bins included."""
    index = assign_profile_bins(values, edges)
    last = edges.size - 2
    return [(_bin_label(edges[k], edges[k + 1], k == last), float(edges[k]),
             float(edges[k + 1]), np.flatnonzero(index == k)) for k in range(edges.size - 1)]


def _column(table: pa.Table, name: str, table_name: str) -> np.ndarray:
    """A column as numpy (nulls as NaN or None), or an error naming the missing column."""
    if name not in table.column_names:
        raise ValueError(f"{table_name} table has no column {name!r}; columns are "
                         f"{table.column_names}")
    return table[name].to_numpy(zero_copy_only=False)


def _join_galaxies(info_ids: np.ndarray, galaxies: pa.Table, columns: list[str]) -> dict:
    """Columns of ``galaxies`` aligned to ``info_ids`` (every id must be present once)."""
    galaxy_ids = np.asarray(_column(galaxies, "galaxy_id", "galaxies"), dtype=np.int64)
    if galaxy_ids.size == 0:
        raise ValueError("galaxies table is empty; it must hold every galaxy of the "
                         "information table")
    order = np.argsort(galaxy_ids, kind="stable")
    sorted_ids = galaxy_ids[order]
    if (np.diff(sorted_ids) == 0).any():
        duplicate = int(sorted_ids[np.flatnonzero(np.diff(sorted_ids) == 0)[0]])
        raise ValueError(f"galaxies table repeats galaxy_id {duplicate}; ids must be unique")

    position = np.clip(np.searchsorted(sorted_ids, info_ids), 0, sorted_ids.size - 1)
    found = sorted_ids[position] == info_ids
    if not np.all(found):
        missing = info_ids[~found]
        raise ValueError(f"{missing.size} galaxy_id values of the information table are not in "
                         f"the galaxies table (first: {int(missing[0])})")
    rows = order[position]
    return {name: _column(galaxies, name, "galaxies")[rows] for name in columns}


def _enumerate_groups(
    info: pa.Table,
    galaxy_columns: dict,
    magnitude_column: str | None,
    mass_edges: np.ndarray,
    magnitude_edges: np.ndarray | None,
) -> tuple[list[_Group], dict[tuple[str, str], np.ndarray]]:
    """All groups in a fixed order, and the row indices of each (tuple, measure) in ``info``."""
    tuples = np.asarray(_column(info, "tuple", "information"), dtype=object)
    measures = np.asarray(_column(info, "redundancy_measure", "information"), dtype=object)
    keys = sorted(set(zip(tuples.tolist(), measures.tolist())))

    groups: list[_Group] = []
    tuple_rows: dict[tuple[str, str], np.ndarray] = {}
    for tuple_name, measure in keys:
        rows = np.flatnonzero((tuples == tuple_name) & (measures == measure))
        tuple_rows[(tuple_name, measure)] = rows
        classes = galaxy_columns["class"][rows]
        has_class = np.array([value is not None for value in classes], dtype=bool)
        candidates: list[tuple[str, str, float | None, float | None, np.ndarray]] = [
            ("class", ALL_GALAXIES, None, None, np.arange(rows.size))
        ]
        for name in sorted({str(value) for value in classes[has_class]}):
            members = np.flatnonzero(has_class & (classes.astype(str) == name))
            candidates.append(("class", name, None, None, members))
        for label, low, high, members in _profile_groups(
            np.asarray(galaxy_columns["stellar_mass"][rows], dtype=np.float64), mass_edges
        ):
            candidates.append(("stellar_mass", label, low, high, members))
        if magnitude_column is not None:
            for label, low, high, members in _profile_groups(
                np.asarray(galaxy_columns[magnitude_column][rows], dtype=np.float64),
                magnitude_edges,
            ):
                candidates.append(("magnitude", label, low, high, members))
        for grouping, label, low, high, members in candidates:
            groups.append(_Group(len(groups), tuple_name, measure, grouping, label, low, high,
                                 members))
    return groups, tuple_rows


def _bootstrap_batch(
    jobs: list[tuple[int, np.ndarray]],
    n_bootstrap: int,
    level: float,
    seed: int,
    max_chunk_elements: int,
) -> list[tuple[int, np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """Bootstrap every (group_index, values) job; the unit of work of one Ray task."""
    results = []
    for group_index, values in jobs:
        sequence = np.random.SeedSequence([seed, group_index])
        results.append((group_index, *bootstrap_mean_intervals(
            values, n_bootstrap=n_bootstrap, level=level, seed_sequence=sequence,
            max_chunk_elements=max_chunk_elements)))
    return results


def _balanced_batches(
    jobs: list[tuple[int, np.ndarray]], n_batches: int
) -> list[list[tuple[int, np.ndarray]]]:
    """Split jobs into about equal work (galaxies per job), largest first into the lightest."""
    batches: list[list[tuple[int, np.ndarray]]] = [[] for _ in range(n_batches)]
    load = np.zeros(n_batches)
    for job in sorted(jobs, key=lambda job: -job[1].shape[0]):
        lightest = int(np.argmin(load))
        batches[lightest].append(job)
        load[lightest] += job[1].shape[0]
    return [batch for batch in batches if batch]


def _bootstrap_on_ray(
    jobs: list[tuple[int, np.ndarray]],
    n_bootstrap: int,
    level: float,
    seed: int,
    max_chunk_elements: int,
) -> list[tuple[int, np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """Run the jobs as Ray tasks of half a CPU each, a few tasks per CPU of the cluster."""
    import ray

    if not ray.is_initialized():
        raise RuntimeError("summarise_information(use_ray=True) needs a running Ray runtime: "
                           "call ray.init() first or pass use_ray=False")
    n_cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
    batches = _balanced_batches(jobs, min(len(jobs), 4 * n_cpus))
    task = ray.remote(num_cpus=0.5)(_bootstrap_batch)
    refs = [task.remote(batch, n_bootstrap, level, seed, max_chunk_elements)
            for batch in batches]
    logger.debug("bootstrap of %d groups in %d Ray tasks", len(jobs), len(refs))
    return [result for batch_results in ray.get(refs) for result in batch_results]


def summarise_information(
    info: pa.Table,
    galaxies: pa.Table,
    *,
    run_id: str,
    magnitude_column: str | None = None,
    mass_edges: np.ndarray | None = None,
    magnitude_edges: np.ndarray | None = None,
    n_bootstrap: int = 200,
    level: float = 0.95,
    min_count: int = 20,
    seed: int = 0,
    use_ray: bool = True,
    max_chunk_elements: int = DEFAULT_MAX_CHUNK_ELEMENTS,
) -> pa.Table:
    """The ``information_summary`` table: component means per class and in profile bins.

    Parameters
    ----------
    info:
        An ``information`` table (any number of tuples and redundancy measures).
    galaxies:
        Columns galaxy_id, class (string, nullable), stellar_mass (dex, nullable) and
        ``magnitude_column``; every galaxy_id of ``info`` must appear exactly once.
    run_id:
        Run written into every row.
    magnitude_column:
        Optical magnitude column for the magnitude profile (e.g. the r-band Petrosian
        magnitude); None skips that profile.
    mass_edges:
        Stellar-mass profile bin edges in dex; default every 0.25 dex over [6, 12.5].
    magnitude_edges:
        Magnitude profile bin edges; default every 0.5 mag spanning the data.
    n_bootstrap, level:
        Bootstrap replicates and central coverage of the percentile intervals.
    min_count:
        A (component, group) row is dropped when fewer galaxies than this have a value; applies
        to classes as well as profile bins, so no average rests on a handful of galaxies.
    seed:
        Run seed; group g's replicates use ``SeedSequence([seed, g])``.
    use_ray:
        Spread groups over Ray tasks (needs ``ray.init`` by the caller); False runs in-process
        with identical results.

    Returns
    -------
    pyarrow Table with :data:`SUMMARY_SCHEMA` (schemas/information_summary.yaml), values in
    nats. Groupings: "class" (each class and "all"), "stellar_mass", "magnitude". The gap
    component appears only for tuples whose gap is not entirely null.
    """
    _check_bootstrap_options(n_bootstrap, level)
    if int(min_count) != min_count or min_count < 1:
        raise ValueError(f"min_count must be a positive integer, got {min_count}")
    if not isinstance(run_id, str) or not run_id:
        raise ValueError(f"run_id must be a non-empty string, got {run_id!r}")
    started = time.perf_counter()

    info_ids = np.asarray(_column(info, "galaxy_id", "information"), dtype=np.int64)
    galaxy_names = ["class", "stellar_mass"] + ([magnitude_column] if magnitude_column else [])
    galaxy_columns = _join_galaxies(info_ids, galaxies, galaxy_names)
    mass_edges = _check_edges("mass_edges",
                              default_mass_edges() if mass_edges is None else mass_edges)
    if magnitude_column is not None:
        magnitude_edges = _check_edges(
            "magnitude_edges",
            default_magnitude_edges(np.asarray(galaxy_columns[magnitude_column], dtype=float))
            if magnitude_edges is None else magnitude_edges,
        )
    components = np.column_stack([
        np.asarray(_column(info, name, "information"), dtype=np.float64)
        for name in SUMMARY_COMPONENTS
    ])

    groups, tuple_rows = _enumerate_groups(info, galaxy_columns, magnitude_column, mass_edges,
                                           magnitude_edges)
    jobs = []
    for group in groups:
        values = components[tuple_rows[(group.tuple_name, group.redundancy_measure)][group.rows]]
        if values.shape[0] and np.isfinite(values).sum(axis=0).max() >= min_count:
            jobs.append((group.index, values))
    if use_ray and jobs:
        results = _bootstrap_on_ray(jobs, n_bootstrap, level, seed, max_chunk_elements)
    else:
        results = _bootstrap_batch(jobs, n_bootstrap, level, seed, max_chunk_elements)
    by_group = {result[0]: result[1:] for result in results}

    rows: dict[str, list] = {field.name: [] for field in SUMMARY_SCHEMA}
    for group in groups:
        if group.index not in by_group:
            continue
        mean, ci_low, ci_high, n = by_group[group.index]
        for c, component in enumerate(SUMMARY_COMPONENTS):
            if n[c] < min_count:
                continue
            row = {"run_id": run_id, "tuple": group.tuple_name,
                   "redundancy_measure": group.redundancy_measure, "component": component,
                   "grouping": group.grouping, "group": group.label, "bin_low": group.bin_low,
                   "bin_high": group.bin_high, "n": int(n[c]), "mean": float(mean[c]),
                   "ci_low": _nullable(ci_low[c]), "ci_high": _nullable(ci_high[c]),
                   "n_bootstrap": int(n_bootstrap), "level": float(level)}
            for name, value in row.items():
                rows[name].append(value)
    summary = pa.Table.from_pydict(rows, schema=SUMMARY_SCHEMA)
    logger.info("information summary: %d groups bootstrapped (%d kept rows) in %.1f s",
                len(jobs), summary.num_rows, time.perf_counter() - started)
    return summary


def _nullable(value: float) -> float | None:
    """None for NaN, so Arrow stores a null."""
    return None if math.isnan(value) else float(value)
