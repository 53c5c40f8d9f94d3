"""Inference: point estimates, metrics and KNN mass PDFs from binned stellar-mass PDFs."""

from galpipe.infer.estimates import point_estimates, pdf_quantiles, true_bin_cross_entropy
from galpipe.infer.knn_estimator import gather_neighbour_masses, knn_pdf
from galpipe.infer.metrics import (
    bias,
    crps,
    crps_per_galaxy,
    metrics_table,
    outlier_fraction,
    sigma_mad,
)

__all__ = [
    "bias",
    "crps",
    "crps_per_galaxy",
    "gather_neighbour_masses",
    "knn_pdf",
    "metrics_table",
    "outlier_fraction",
    "pdf_quantiles",
    "point_estimates",
    "sigma_mad",
    "true_bin_cross_entropy",
]
