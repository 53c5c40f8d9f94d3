"""Global causal discovery with causal-learn, repeated on bootstrap resamples.

PC and FCI search for the causal graph of a few catalogue variables (stellar mass, colours,
morphology, redshift, ...) over all galaxies at once, complementing the local tests. A single
run's edges are fragile, so the search is repeated on B bootstrap resamples, run as Ray tasks,
and each pair of variables gets the share of resamples in which it was adjacent and in which
it showed each edge mark pattern (table ``causal_edges``).

causal-learn's graphs are ``GeneralGraph`` objects whose matrix ``graph[i, j]`` holds the mark
of edge i-j at node i's end: -1 tail, 1 arrowhead, 2 circle, 0 no edge (4 and 5 flag multiple
edges). So ``graph[i, j] == -1 and graph[j, i] == 1`` is i --> j, and for FCI
``graph[i, j] == 2 and graph[j, i] == 1`` is i o-> j.

Limitation: the KCI test is cubic in the sample size (about 3 s per PC run at n = 500 and 140 s
at n = 2000 on one core), so with ``indep_test="kci"`` each resample holds at most
``kci_max_samples`` rows (500 by default).
"""

from __future__ import annotations

import contextlib
import io
import logging
import time
from typing import Any

import numpy as np
import pyarrow as pa

from galpipe.contracts import load_contract

logger = logging.getLogger(__name__)

METHODS = ("pc", "fci")
INDEPENDENCE_TESTS = ("fisherz", "kci")
DEFAULT_KCI_MAX_SAMPLES = 500

# Codes of the mark pattern of an unordered pair (i, j), i < j, read as "i ... j".
NO_EDGE, DIRECTED, REVERSE_DIRECTED, UNDIRECTED, BIDIRECTED = 0, 1, 2, 3, 4
PARTIALLY_DIRECTED, REVERSE_PARTIALLY_DIRECTED, NONDIRECTED, OTHER = 5, 6, 7, 8
_TAIL, _ARROW, _CIRCLE = -1, 1, 2
# (mark at i, mark at j) -> pattern of i ... j.
_PATTERNS = {
    (_TAIL, _ARROW): DIRECTED,
    (_ARROW, _TAIL): REVERSE_DIRECTED,
    (_TAIL, _TAIL): UNDIRECTED,
    (_ARROW, _ARROW): BIDIRECTED,
    (_CIRCLE, _ARROW): PARTIALLY_DIRECTED,
    (_ARROW, _CIRCLE): REVERSE_PARTIALLY_DIRECTED,
    (_CIRCLE, _CIRCLE): NONDIRECTED,
}
# Output column of each pattern's frequency; circle patterns are FCI-only.
PATTERN_COLUMNS = {
    DIRECTED: "directed_frequency",
    REVERSE_DIRECTED: "reverse_directed_frequency",
    UNDIRECTED: "undirected_frequency",
    BIDIRECTED: "bidirected_frequency",
    PARTIALLY_DIRECTED: "partially_directed_frequency",
    REVERSE_PARTIALLY_DIRECTED: "reverse_partially_directed_frequency",
    NONDIRECTED: "nondirected_frequency",
    OTHER: "other_frequency",
}
_FCI_ONLY = (PARTIALLY_DIRECTED, REVERSE_PARTIALLY_DIRECTED, NONDIRECTED)


def discover_graph(
    data: np.ndarray,
    names: list[str],
    *,
    method: str = "pc",
    indep_test: str = "fisherz",
    alpha: float = 0.01,
) -> np.ndarray:
    """Run PC or FCI once and return causal-learn's endpoint matrix.

    Parameters
    ----------
    data:
        (n, p) float array without NaN; columns are variables.
    names:
        p variable names, used as node names.
    method, indep_test, alpha:
        ``"pc"`` or ``"fci"``; ``"fisherz"`` or ``"kci"``; significance level of the tests.

    Returns
    -------
    (p, p) int array ``graph`` with ``graph[i, j]`` the mark at node i of edge i-j (module
    docstring). causal-learn's FCI prints the edges it finds; that text goes to DEBUG logging.
    """
    from causallearn.search.ConstraintBased.FCI import fci
    from causallearn.search.ConstraintBased.PC import pc

    printed = io.StringIO()
    # FCI prints every visible edge unconditionally; route it to the log instead of stdout.
    with contextlib.redirect_stdout(printed):
        if method == "pc":
            graph = pc(data, alpha, indep_test, show_progress=False, node_names=list(names)).G
        elif method == "fci":
            graph, _ = fci(data, indep_test, alpha, show_progress=False, node_names=list(names))
        else:
            raise ValueError(f"method must be one of {METHODS}; got {method!r}")
    if printed.getvalue():
        logger.debug("causal-learn %s output:\n%s", method, printed.getvalue().rstrip())
    return np.array(graph.graph, dtype=np.int64)


def edge_patterns(graph: np.ndarray) -> np.ndarray:
    """Pattern code of every pair from an endpoint matrix.

    Returns a (p, p) int8 array whose entry [i, j] for i < j is the code of "i ... j"
    (``NO_EDGE``, ``DIRECTED`` for i --> j, ``REVERSE_DIRECTED`` for i <-- j, ``UNDIRECTED``,
    ``BIDIRECTED``, ``PARTIALLY_DIRECTED`` for i o-> j, ``REVERSE_PARTIALLY_DIRECTED`` for
    i <-o j, ``NONDIRECTED`` for o-o, ``OTHER``); entries on and below the diagonal are 0.
    """
    graph = np.asarray(graph)
    n_variables = graph.shape[0]
    patterns = np.zeros((n_variables, n_variables), dtype=np.int8)
    for i in range(n_variables):
        for j in range(i + 1, n_variables):
            marks = (int(graph[i, j]), int(graph[j, i]))
            if marks != (0, 0):
                patterns[i, j] = _PATTERNS.get(marks, OTHER)
    return patterns


def bootstrap_replicate(
    data: np.ndarray,
    names: list[str],
    replicate: int,
    *,
    seed: int,
    sample_size: int,
    method: str,
    indep_test: str,
    alpha: float,
) -> np.ndarray:
    """Pattern codes (p, p) of one bootstrap resample.

    Replicate b draws ``sample_size`` rows of ``data`` with replacement from a generator seeded
    by ``SeedSequence([seed, b])``, so it is the same whichever worker runs it.
    """
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, replicate])))
    rows = rng.integers(0, data.shape[0], size=sample_size)
    graph = discover_graph(data[rows], names, method=method, indep_test=indep_test, alpha=alpha)
    return edge_patterns(graph)


def edge_frequencies(
    patterns: np.ndarray, names: list[str], method: str
) -> dict[str, list]:
    """Per-pair frequencies from stacked pattern codes.

    Parameters
    ----------
    patterns:
        (B, p, p) pattern codes of B replicates (:func:`edge_patterns`).
    names:
        p variable names.
    method:
        ``"pc"`` leaves the FCI-only circle-pattern frequencies null (None).

    Returns
    -------
    dict of equal-length lists: source, target, adjacency_frequency and one list per entry of
    ``PATTERN_COLUMNS``, one element per pair i < j in input order.
    """
    n_replicates = patterns.shape[0]
    columns: dict[str, list] = {"source": [], "target": [], "adjacency_frequency": []}
    columns |= {name: [] for name in PATTERN_COLUMNS.values()}
    for i in range(len(names)):
        for j in range(i + 1, len(names)):
            codes = patterns[:, i, j]
            columns["source"].append(names[i])
            columns["target"].append(names[j])
            columns["adjacency_frequency"].append(float(np.mean(codes != NO_EDGE)))
            for code, column in PATTERN_COLUMNS.items():
                frequency = float(np.sum(codes == code)) / n_replicates
                columns[column].append(
                    None if method == "pc" and code in _FCI_ONLY else frequency
                )
    return columns


def causal_edges_table(
    patterns: np.ndarray,
    names: list[str],
    *,
    run_id: str,
    method: str,
    indep_test: str,
    alpha: float,
    n_samples: int,
    n_rows_complete: int,
    n_rows_dropped: int,
) -> pa.Table:
    """The ``causal_edges`` table from stacked pattern codes (B, p, p) of B replicates.

    The remaining arguments describe how the replicates were made and are written into every
    row (see ``schemas/causal_edges.yaml``).
    """
    columns = edge_frequencies(patterns, list(names), method)
    n_pairs = len(columns["source"])
    columns |= {
        "run_id": [run_id] * n_pairs,
        "method": [method] * n_pairs,
        "indep_test": [indep_test] * n_pairs,
        "alpha": [float(alpha)] * n_pairs,
        "n_bootstrap": [int(patterns.shape[0])] * n_pairs,
        "n_samples": [int(n_samples)] * n_pairs,
        "n_rows_complete": [int(n_rows_complete)] * n_pairs,
        "n_rows_dropped": [int(n_rows_dropped)] * n_pairs,
    }
    schema = load_contract("causal_edges").arrow_schema()
    return pa.table({field.name: columns[field.name] for field in schema}, schema=schema)


def _collect(ray: Any, pending: dict, patterns: np.ndarray) -> None:
    """Wait for one finished replicate task and store its pattern codes at its index."""
    (done,), _ = ray.wait(list(pending), num_returns=1)
    patterns[pending.pop(done)] = ray.get(done)


def _validated_data(data: np.ndarray, names: list[str]) -> tuple[np.ndarray, int]:
    """Finite float64 rows of ``data`` and the number of rows dropped for NaN/inf."""
    data = np.asarray(data, dtype=np.float64)
    if data.ndim != 2:
        raise ValueError(f"data must be a 2-d (samples, variables) array; got shape {data.shape}")
    if len(names) != data.shape[1]:
        raise ValueError(f"{len(names)} names for {data.shape[1]} data columns; give one name "
                         "per column")
    if len(set(names)) != len(names):
        raise ValueError(f"variable names must be unique; got {names}")
    if data.shape[1] < 2:
        raise ValueError("causal discovery needs at least two variables")
    complete = np.isfinite(data).all(axis=1)
    return np.ascontiguousarray(data[complete]), int((~complete).sum())


def bootstrap_discovery(
    data: np.ndarray,
    names: list[str],
    *,
    method: str = "pc",
    indep_test: str = "fisherz",
    alpha: float = 0.01,
    n_bootstrap: int = 50,
    sample_size: int | None = None,
    seed: int = 0,
    num_actors: int = 2,
    run_id: str,
    kci_max_samples: int = DEFAULT_KCI_MAX_SAMPLES,
) -> pa.Table:
    """Edge frequencies of PC or FCI over bootstrap resamples, on a Ray actor pool.

    Parameters
    ----------
    data:
        (n, p) array, rows are galaxies, columns the variables in ``names``. Rows with any NaN
        (or inf) are dropped first; the count is logged and stored in ``n_rows_dropped``.
    names:
        p unique variable names (table columns ``source`` and ``target``).
    method, indep_test, alpha:
        ``"pc"`` or ``"fci"``; ``"fisherz"`` or ``"kci"``; test significance level.
    n_bootstrap:
        Number of resamples B.
    sample_size:
        Rows per resample, drawn with replacement. Default: every complete row for fisherz, and
        ``min(complete rows, kci_max_samples)`` for kci; a larger size with kci is refused.
    seed:
        Replicate b uses ``SeedSequence([seed, b])``: the table is identical for a given seed
        whatever ``num_actors``.
    num_actors:
        Replicates running at once, as Ray tasks of 0.5 CPU each. Ray must already be
        initialised.
    run_id:
        Written into every row.
    kci_max_samples:
        Cap on rows per resample with kci (its cost is cubic in that number).

    Returns
    -------
    ``pyarrow.Table`` matching ``schemas/causal_edges.yaml``, one row per pair i < j.
    """
    import ray

    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}; got {method!r}")
    if indep_test not in INDEPENDENCE_TESTS:
        raise ValueError(f"indep_test must be one of {INDEPENDENCE_TESTS}; got {indep_test!r}")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must lie in (0, 1); got {alpha}")
    if n_bootstrap < 1 or num_actors < 1:
        raise ValueError(f"n_bootstrap and num_actors must be at least 1; got {n_bootstrap} "
                         f"and {num_actors}")
    if not ray.is_initialized():
        raise RuntimeError("bootstrap_discovery needs a running Ray runtime; call ray.init() first")
    complete, n_dropped = _validated_data(data, names)
    n_complete = complete.shape[0]
    if sample_size is None:
        sample_size = n_complete if indep_test == "fisherz" else min(n_complete, kci_max_samples)
    if indep_test == "kci" and sample_size > kci_max_samples:
        raise ValueError(f"sample_size {sample_size} exceeds kci_max_samples {kci_max_samples}; "
                         "KCI is cubic in the sample size: lower sample_size or raise the cap")
    minimum = len(names) + 3
    if n_complete < minimum or sample_size < minimum:
        raise ValueError(f"need at least {minimum} complete rows per resample for {len(names)} "
                         f"variables; have {n_complete} complete rows (dropped {n_dropped} with "
                         f"NaN) and sample_size {sample_size}")
    logger.info("bootstrap %s/%s on %d variables: %d complete rows (%d dropped for NaN), "
                "B=%d resamples of %d rows, %d at once", method, indep_test, len(names),
                n_complete, n_dropped, n_bootstrap, sample_size, num_actors)

    started = time.perf_counter()
    settings = {"seed": int(seed), "sample_size": int(sample_size), "method": method,
                "indep_test": indep_test, "alpha": float(alpha)}
    data_ref = ray.put(complete)
    # Tasks rather than actors: Ray reuses its idle worker processes for tasks, so repeated
    # calls do not pay a process start per worker, and the data travel once via data_ref.
    replicate_task = ray.remote(num_cpus=0.5)(bootstrap_replicate)
    patterns = np.empty((n_bootstrap, len(names), len(names)), dtype=np.int8)
    pending: dict = {}
    for replicate in range(n_bootstrap):
        if len(pending) >= num_actors:
            _collect(ray, pending, patterns)
        reference = replicate_task.remote(data_ref, list(names), replicate, **settings)
        pending[reference] = replicate
    while pending:
        _collect(ray, pending, patterns)
    logger.info("bootstrap %s/%s done in %.1f s", method, indep_test,
                time.perf_counter() - started)

    return causal_edges_table(
        patterns, list(names), run_id=run_id, method=method, indep_test=indep_test,
        alpha=alpha, n_samples=sample_size, n_rows_complete=n_complete, n_rows_dropped=n_dropped,
    )
