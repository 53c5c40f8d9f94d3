"""KNN stellar-mass PDFs against hand computations and a slow loop over galaxies and bins."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import norm

from galpipe.bins import MassBins
from galpipe.infer.estimates import true_bin_cross_entropy
from galpipe.infer.knn_estimator import gather_neighbour_masses, knn_pdf, smoothing_matrix


def slow_weights(distances, valid, weighting):
    """Per-galaxy weights written out one galaxy at a time."""
    weights = np.zeros_like(distances)
    for g in range(distances.shape[0]):
        d = distances[g][valid[g]]
        median = np.median(d)
        for j in range(distances.shape[1]):
            if not valid[g, j]:
                continue
            if weighting == "uniform":
                weights[g, j] = 1.0
            elif weighting == "inverse_distance":
                weights[g, j] = 1.0 / (distances[g, j] + 0.01 * median)
            else:
                weights[g, j] = np.exp(-0.5 * (distances[g, j] / median) ** 2)
    return weights


def slow_knn_pdf(masses, distances, bins, weighting, smoothing_dex):
    """Loop over galaxies, neighbours and bins with scipy's normal CDF."""
    valid = np.isfinite(masses)
    weights = slow_weights(distances, valid, weighting)
    edges, centres = bins.edges, bins.centres
    pdf = np.zeros((masses.shape[0], bins.n_bins))
    for g in range(masses.shape[0]):
        for j in range(masses.shape[1]):
            if not valid[g, j]:
                continue
            centre = centres[bins.index(np.array([masses[g, j]]))[0]]
            for b in range(bins.n_bins):
                lower = -np.inf if b == 0 else edges[b]
                upper = np.inf if b == bins.n_bins - 1 else edges[b + 1]
                mass = norm.cdf((upper - centre) / smoothing_dex) - norm.cdf(
                    (lower - centre) / smoothing_dex
                )
                pdf[g, b] += weights[g, j] * mass
        pdf[g] /= pdf[g].sum()
    return pdf


@pytest.mark.parametrize("weighting", ["inverse_distance", "gaussian", "uniform"])
def test_knn_pdf_equals_a_slow_loop(weighting):
    rng = np.random.default_rng(8)
    bins = MassBins(low=8.0, high=12.0, n_bins=80)
    masses = rng.normal(10.0, 0.6, size=(6, 9))
    masses[0, 0] = 12.7  # beyond the range: counts in the top bin
    masses[1, :4] = np.nan
    distances = np.sort(rng.uniform(0.1, 2.0, size=(6, 9)), axis=1)

    got = knn_pdf(masses, distances, bins, weighting, smoothing_dex=0.1, chunk_rows=4)
    want = slow_knn_pdf(masses, distances, bins, weighting, smoothing_dex=0.1)

    assert got.dtype == np.float32 and got.shape == (6, 80)
    np.testing.assert_allclose(got, want, rtol=2e-6, atol=1e-7)
    np.testing.assert_allclose(got.sum(axis=1), 1.0, rtol=1e-5)


def test_unsmoothed_pdf_is_the_weighted_histogram_by_hand():
    bins = MassBins()
    masses = np.array([[10.0, 10.0, 10.3, np.nan]])
    distances = np.array([[1.0, 2.0, 1.0, 0.5]])
    first, second = bins.index(np.array([10.0, 10.3]))

    uniform = knn_pdf(masses, distances, bins, "uniform", smoothing_dex=0.0)
    # Weights 1/(d + eps) with a negligible eps: 1, 0.5, 1 -> 1.5 / 2.5 and 1 / 2.5.
    inverse = knn_pdf(masses, distances, bins, "inverse_distance", 0.0, eps=1e-12)

    assert uniform[0, first] == pytest.approx(2 / 3) and uniform[0, second] == pytest.approx(1 / 3)
    assert inverse[0, first] == pytest.approx(0.6) and inverse[0, second] == pytest.approx(0.4)
    assert np.count_nonzero(uniform) == 2 and np.count_nonzero(inverse) == 2


def test_galaxy_without_known_neighbour_masses_gets_nan():
    pdf = knn_pdf(np.full((2, 3), np.nan), np.ones((2, 3)), MassBins())
    assert np.isnan(pdf).all()


def test_default_smoothing_keeps_cross_entropy_finite_near_the_neighbours():
    bins = MassBins()
    masses = np.full((1, 5), 10.0)
    distances = np.linspace(0.1, 0.5, 5)[None, :]
    truth_bins = bins.index(np.array([10.3]))  # 0.3 dex = 6 sigma from every neighbour

    smoothed = knn_pdf(masses, distances, bins)
    plain = knn_pdf(masses, distances, bins, smoothing_dex=0.0)
    floored = knn_pdf(masses, distances, bins, smoothing_dex=0.0, floor=1e-3)

    assert np.isfinite(true_bin_cross_entropy(smoothed, truth_bins)[0])
    with np.errstate(divide="ignore"):
        assert np.isinf(true_bin_cross_entropy(plain, truth_bins)[0])
    assert floored.min() == pytest.approx(1e-3 / bins.n_bins)


def test_smoothing_matrix_rows_sum_to_one_including_edge_bins():
    matrix = smoothing_matrix(MassBins(), 0.05)
    np.testing.assert_allclose(matrix.sum(axis=1), 1.0, atol=1e-12)
    # A mass in the bottom bin keeps its lower tail in that bin: more than half stays there.
    assert matrix[0, 0] > 0.5 > matrix[100, 100]


def test_gather_neighbour_masses_by_id():
    masses = gather_neighbour_masses(
        np.array([[30, 10], [99, 20]]), np.array([10, 20, 30]), np.array([9.5, np.nan, 11.0])
    )
    np.testing.assert_array_equal(masses, [[11.0, 9.5], [np.nan, np.nan]])
