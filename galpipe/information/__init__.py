"""Pointwise mutual-information decomposition of stellar-mass models (METHOD.md section 5).

From the cross-entropies of information models on feature sets X1, X2 and X1 u X2:

* :mod:`~galpipe.information.pointwise`: prior surprisal and pointwise information, in nats;
* :mod:`~galpipe.information.decomposition`: redundant, unique and synergistic parts per galaxy
  (pluggable redundancy measures) and the ``information`` table;
* :mod:`~galpipe.information.aggregates`: means per class and profiles against stellar mass and
  magnitude with bootstrap intervals (optionally on Ray), the ``information_summary`` table;
* :mod:`~galpipe.information.figures`: the paper's bar and stacked-profile figures.
"""

from galpipe.information.aggregates import (
    SUMMARY_COMPONENTS,
    SUMMARY_SCHEMA,
    assign_profile_bins,
    bootstrap_mean_intervals,
    default_magnitude_edges,
    default_mass_edges,
    summarise_information,
)
from galpipe.information.decomposition import (
    COMPONENTS,
    INFORMATION_SCHEMA,
    decompose,
    get_redundancy,
    information_table,
    redundancy_measures,
    register_redundancy,
)
from galpipe.information.figures import information_figures
from galpipe.information.pointwise import (
    pointwise_information,
    prior_entropy,
    prior_log_probabilities,
    true_mass_bins,
)

__all__ = [
    "COMPONENTS",
    "INFORMATION_SCHEMA",
    "SUMMARY_COMPONENTS",
    "SUMMARY_SCHEMA",
    "assign_profile_bins",
    "bootstrap_mean_intervals",
    "decompose",
    "default_magnitude_edges",
    "default_mass_edges",
    "get_redundancy",
    "information_figures",
    "information_table",
    "pointwise_information",
    "prior_entropy",
    "prior_log_probabilities",
    "redundancy_measures",
    "register_redundancy",
    "summarise_information",
    "true_mass_bins",
]
