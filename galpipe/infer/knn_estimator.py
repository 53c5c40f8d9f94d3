"""Stellar-mass PDFs from a galaxy's neighbours in the latent space S.

A galaxy's KNN PDF is a weighted histogram of its neighbours' true stellar masses over the same
mass bins as the networks (:class:`galpipe.bins.MassBins`), optionally smoothed by a Gaussian in
log mass, then normalised. It scores what the latent space alone knows about mass, with the same
metrics as the network's own softmax.

Weights (``weighting``), with d a neighbour's distance in S:

* ``"inverse_distance"`` (default): w = 1 / (d + eps). ``eps`` is in S units; by default it is
  1% of the galaxy's median neighbour distance, so the weights do not depend on the scale of S
  and a neighbour at distance 0 gets a large but finite weight.
* ``"gaussian"``: w = exp(-d^2 / (2 h^2)); ``bandwidth`` h in S units, by default the galaxy's
  median neighbour distance.
* ``"uniform"``: w = 1.

Smoothing (``smoothing_dex``, default 0.05 dex): each neighbour's mass, taken at the centre of
its bin, is spread over the bins by a Gaussian of that standard deviation, integrated exactly over
every bin; mass beyond the range goes to the edge bins (as the training labels do). Without
smoothing every bin no neighbour falls in has probability 0, and the true-bin cross-entropy of
any galaxy whose true bin is not among its neighbours' bins is infinite; 0.05 dex (four bins of
0.0125 dex) keeps it finite for truths within a few tenths of a dex of some neighbour. Beyond
about 14 standard deviations (0.7 dex at the default) from every neighbour the Gaussian tails
underflow float32 to 0; ``floor`` (a uniform mixture weight, default 0) makes every bin's
probability strictly positive.

Neighbours with a null (NaN) mass or distance are skipped; a galaxy with none left gets a row of
NaN.
"""

from __future__ import annotations

import functools
import logging

import numpy as np
from scipy.special import ndtr

from galpipe.bins import MassBins

logger = logging.getLogger(__name__)

WEIGHTINGS = ("inverse_distance", "gaussian", "uniform")
#: Default eps of inverse-distance weights, as a fraction of the galaxy's median distance.
RELATIVE_EPS = 0.01
#: Rows per working chunk: a (rows x n_bins) float64 histogram and its smoothed copy.
_CHUNK_ROWS = 4096


def neighbour_weights(
    distances: np.ndarray,
    valid: np.ndarray,
    weighting: str = "inverse_distance",
    *,
    eps: float | None = None,
    bandwidth: float | None = None,
) -> np.ndarray:
    """Weights of each galaxy's neighbours, shape (G, k) float64, 0 where ``valid`` is False.

    ``distances`` (G, k) in S units; ``weighting``, ``eps`` and ``bandwidth`` as in the module
    docstring.
    """
    if weighting not in WEIGHTINGS:
        raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")
    dist = np.where(valid, np.asarray(distances, dtype=np.float64), np.nan)
    if (dist < 0).any():
        raise ValueError("neighbour distances must be non-negative")

    if weighting == "uniform":
        weights = np.ones_like(dist)
    else:
        has_any = valid.any(axis=1)
        median = np.zeros(dist.shape[0])
        if has_any.any():
            median[has_any] = np.nanmedian(dist[has_any], axis=1)
        if weighting == "inverse_distance":
            if eps is None:
                scale = np.where(median > 0, RELATIVE_EPS * median, 1e-12)
            else:
                if eps <= 0:
                    raise ValueError(f"eps must be positive, got {eps}")
                scale = np.full(dist.shape[0], float(eps))
            weights = 1.0 / (dist + scale[:, None])
        else:
            if bandwidth is None:
                # All neighbours at distance 0: any width gives them equal weights.
                width = np.where(median > 0, median, 1.0)
            else:
                if bandwidth <= 0:
                    raise ValueError(f"bandwidth must be positive, got {bandwidth}")
                width = np.full(dist.shape[0], float(bandwidth))
            weights = np.exp(-0.5 * (dist / width[:, None]) ** 2)
    return np.where(valid, weights, 0.0)


def _bin_probability(lower: np.ndarray, upper: np.ndarray) -> np.ndarray:
    """P(lower < Z <= upper) for a standard normal Z, accurate in both tails."""
    # Differences of upper-tail probabilities keep precision where both limits are positive.
    both_positive = lower > 0
    tail = ndtr(-lower) - ndtr(-upper)
    body = ndtr(upper) - ndtr(lower)
    return np.where(both_positive, tail, body)


@functools.lru_cache(maxsize=8)
def smoothing_matrix(bins: MassBins, smoothing_dex: float) -> np.ndarray:
    """Shape (n_bins, n_bins) float64: row b is the smoothed PDF of a unit mass at bin b's centre.

    Entry [b, j] is the probability that a Gaussian of standard deviation ``smoothing_dex``
    centred on bin b's centre falls in bin j; the first and last bins also collect the tails
    beyond the range, so every row sums to 1. The identity for ``smoothing_dex == 0``.
    """
    if smoothing_dex < 0:
        raise ValueError(f"smoothing_dex must be >= 0, got {smoothing_dex}")
    if smoothing_dex == 0:
        return np.eye(bins.n_bins)
    lower = bins.edges[:-1].copy()
    upper = bins.edges[1:].copy()
    lower[0], upper[-1] = -np.inf, np.inf
    centres = bins.centres[:, None]
    matrix = _bin_probability(
        (lower[None, :] - centres) / smoothing_dex, (upper[None, :] - centres) / smoothing_dex
    )
    matrix.setflags(write=False)
    return matrix


def knn_pdf(
    neighbour_masses: np.ndarray,
    distances: np.ndarray,
    bins: MassBins,
    weighting: str = "inverse_distance",
    smoothing_dex: float = 0.05,
    *,
    eps: float | None = None,
    bandwidth: float | None = None,
    floor: float = 0.0,
    chunk_rows: int = _CHUNK_ROWS,
) -> np.ndarray:
    """KNN stellar-mass PDF of each galaxy from its neighbours' true masses.

    Parameters
    ----------
    neighbour_masses:
        Shape (G, k), true log10 stellar masses of each galaxy's neighbours, dex; NaN = null.
    distances:
        Shape (G, k), the neighbours' distances in S.
    bins:
        Mass bins of the output (the networks' bins).
    weighting, eps, bandwidth:
        Neighbour weights; see the module docstring. Default inverse distance.
    smoothing_dex:
        Standard deviation of the Gaussian smoothing, dex; 0 for a plain histogram.
    floor:
        Weight in [0, 1) of a uniform PDF mixed in after normalisation.
    chunk_rows:
        Galaxies per working chunk (memory about ``2 * chunk_rows * n_bins * 8`` bytes).

    Returns
    -------
    Shape (G, n_bins) float32 probabilities summing to 1 per row; NaN rows for galaxies without
    a neighbour of known mass.
    """
    masses = np.asarray(neighbour_masses, dtype=np.float64)
    distances = np.asarray(distances, dtype=np.float64)
    if masses.ndim != 2 or distances.shape != masses.shape:
        raise ValueError(
            f"neighbour_masses and distances must both be (galaxies, k), got {masses.shape} "
            f"and {distances.shape}"
        )
    if not 0.0 <= floor < 1.0:
        raise ValueError(f"floor must lie in [0, 1), got {floor}")
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be at least 1, got {chunk_rows}")
    if smoothing_dex < 0:
        raise ValueError(f"smoothing_dex must be >= 0, got {smoothing_dex}")
    smoother = None if smoothing_dex == 0 else smoothing_matrix(bins, float(smoothing_dex))
    n_galaxies, k = masses.shape
    n_bins = bins.n_bins
    out = np.empty((n_galaxies, n_bins), dtype=np.float32)

    for start in range(0, n_galaxies, chunk_rows):
        rows = slice(start, min(start + chunk_rows, n_galaxies))
        chunk_masses = masses[rows]
        n_rows = chunk_masses.shape[0]
        valid = np.isfinite(chunk_masses) & np.isfinite(distances[rows])
        weights = neighbour_weights(
            distances[rows], valid, weighting, eps=eps, bandwidth=bandwidth
        )

        mass_bins = bins.index(np.where(valid, chunk_masses, np.nan))
        flat = (np.arange(n_rows)[:, None] * n_bins + mass_bins)[valid]
        histogram = np.bincount(
            flat, weights=weights[valid], minlength=n_rows * n_bins
        ).reshape(n_rows, n_bins)
        if smoother is not None:
            histogram = histogram @ smoother

        total = histogram.sum(axis=1, keepdims=True)
        with np.errstate(invalid="ignore", divide="ignore"):
            pdf = histogram / np.where(total > 0, total, np.nan)
        if floor:
            pdf = (1.0 - floor) * pdf + floor / n_bins
        out[rows] = pdf
    logger.debug(
        "knn_pdf: %d galaxies, k=%d, %s weights, %.3f dex smoothing",
        n_galaxies, k, weighting, smoothing_dex,
    )
    return out


def gather_neighbour_masses(
    neighbour_ids: np.ndarray, galaxy_ids: np.ndarray, stellar_mass: np.ndarray
) -> np.ndarray:
    """Stellar masses of neighbours looked up by galaxy id, shape like ``neighbour_ids``, dex.

    ``galaxy_ids`` (N,) unique and ``stellar_mass`` (N,) dex (NaN = null) describe the training
    galaxies; neighbours absent from them get NaN.
    """
    neighbour_ids = np.asarray(neighbour_ids, dtype=np.int64)
    galaxy_ids = np.asarray(galaxy_ids, dtype=np.int64)
    stellar_mass = np.asarray(stellar_mass, dtype=np.float64)
    if galaxy_ids.shape != stellar_mass.shape or galaxy_ids.ndim != 1:
        raise ValueError(
            f"galaxy_ids and stellar_mass must be 1-D of equal length, got {galaxy_ids.shape} "
            f"and {stellar_mass.shape}"
        )
    if galaxy_ids.size == 0:
        return np.full(neighbour_ids.shape, np.nan)
    order = np.argsort(galaxy_ids, kind="stable")
    sorted_ids = galaxy_ids[order]
    pos = np.minimum(np.searchsorted(sorted_ids, neighbour_ids), sorted_ids.size - 1)
    found = sorted_ids[pos] == neighbour_ids
    return np.where(found, stellar_mass[order][pos], np.nan)
