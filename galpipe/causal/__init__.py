"""Causal analysis of stellar-mass models (METHOD.md section 4, and global discovery).

* :mod:`~galpipe.causal.local_tests`: local correlation and predictive efficiency of a query
  variable within each galaxy's latent-space neighbours, conditional versions, permutation
  p-values; a vectorised kernel and a Ray actor edge streaming the ``local_tests`` table;
* :mod:`~galpipe.causal.summary`: quantiles, Kolmogorov-Smirnov comparisons and
  Benjamini-Hochberg significance per model, class and mass bin (``local_tests_summary``);
* :mod:`~galpipe.causal.discovery`: PC and FCI (causal-learn) over bootstrap resamples as Ray
  tasks, edge and orientation frequencies (``causal_edges``);
* :mod:`~galpipe.causal.figures`: local-test histograms and the bootstrap causal graph.
"""

from galpipe.causal.discovery import (
    INDEPENDENCE_TESTS,
    METHODS,
    PATTERN_COLUMNS,
    bootstrap_discovery,
    bootstrap_replicate,
    causal_edges_table,
    discover_graph,
    edge_frequencies,
    edge_patterns,
)
from galpipe.causal.figures import plot_causal_graph, plot_local_tests
from galpipe.causal.local_tests import (
    STATISTICS,
    LocalTestBlockWorker,
    block_rng,
    local_statistics_reference,
    local_test_statistics,
    local_tests_record_batch,
    run_local_tests,
)
from galpipe.causal.summary import ALL_CLASSES, benjamini_hochberg, summarise_local_tests

__all__ = [
    "ALL_CLASSES",
    "INDEPENDENCE_TESTS",
    "METHODS",
    "PATTERN_COLUMNS",
    "STATISTICS",
    "LocalTestBlockWorker",
    "benjamini_hochberg",
    "block_rng",
    "bootstrap_discovery",
    "bootstrap_replicate",
    "causal_edges_table",
    "discover_graph",
    "edge_frequencies",
    "edge_patterns",
    "local_statistics_reference",
    "local_test_statistics",
    "local_tests_record_batch",
    "plot_causal_graph",
    "plot_local_tests",
    "run_local_tests",
    "summarise_local_tests",
]
