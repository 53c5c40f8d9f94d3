"""Point estimates, quantiles and true-bin cross-entropies from binned stellar-mass PDFs.

Every estimator in galpipe (a network's softmax, or the KNN histogram of
:mod:`galpipe.infer.knn_estimator`) gives each galaxy a discretised PDF ``p`` of shape
(N, n_bins) over :class:`galpipe.bins.MassBins`. These functions turn it into numbers:

* point estimates (dex): mean, median (centre of the first bin where the CDF reaches 0.5) and
  mode (centre of the most probable bin, the first one on ties);
* quantiles (dex), read off the CDF interpolated linearly inside each bin (the PDF is taken as
  uniform within a bin);
* the cross-entropy of the true bin, ``CE_i = -ln p_i(true bin)`` in nats.

Rows are normalised to sum to 1 before point estimates and quantiles; a row with no positive,
finite total gives NaN. Work is done in chunks of rows so memory stays bounded for any N.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence

import numpy as np

from galpipe.bins import MassBins

logger = logging.getLogger(__name__)

#: Rows per chunk of float64 working arrays (about 34 MB at 520 bins).
_CHUNK_ROWS = 8192


def check_pdf(pdf: np.ndarray, bins: MassBins, what: str = "pdf") -> np.ndarray:
    """A batch of PDFs as a 2-D float array with one column per mass bin."""
    pdf = np.asarray(pdf)
    if pdf.ndim != 2 or pdf.shape[1] != bins.n_bins:
        raise ValueError(
            f"{what} must have shape (galaxies, {bins.n_bins}) for the {bins.n_bins} mass bins, "
            f"got {pdf.shape}"
        )
    if not np.issubdtype(pdf.dtype, np.floating):
        raise ValueError(f"{what} must hold floating-point probabilities, got dtype {pdf.dtype}")
    return pdf


def row_chunks(n_rows: int, chunk_rows: int = _CHUNK_ROWS) -> Iterator[slice]:
    """Slices covering ``range(n_rows)`` in pieces of at most ``chunk_rows`` rows."""
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be at least 1, got {chunk_rows}")
    for start in range(0, n_rows, chunk_rows):
        yield slice(start, min(start + chunk_rows, n_rows))


def normalised_cdf(pdf_chunk: np.ndarray) -> np.ndarray:
    """CDF at the upper edge of each bin, shape like the input, float64; NaN rows if unusable.

    Rows are divided by their sum; a row whose sum is not positive and finite, or that holds a
    NaN or a negative value, becomes all NaN.
    """
    pdf64 = np.asarray(pdf_chunk, dtype=np.float64)
    total = pdf64.sum(axis=1)
    usable = np.isfinite(total) & (total > 0) & ~(pdf64 < 0).any(axis=1)
    cdf = np.cumsum(pdf64, axis=1)
    cdf /= np.where(usable, total, np.nan)[:, None]
    return cdf


def point_estimates(
    pdf: np.ndarray, bins: MassBins, *, chunk_rows: int = _CHUNK_ROWS
) -> dict[str, np.ndarray]:
    """Mean, median and mode of each galaxy's binned stellar-mass PDF.

    Parameters
    ----------
    pdf:
        Shape (N, n_bins), probabilities per mass bin (normalised here).
    bins:
        The mass bins of the PDF.

    Returns
    -------
    dict with ``mean``, ``median``, ``mode``: each shape (N,) float64, log10(M*/Msun) in dex;
    NaN for rows that are not a usable PDF. The median is the centre of the first bin where the
    CDF reaches 0.5 (no interpolation); the mode the centre of the first most probable bin.
    """
    pdf = check_pdf(pdf, bins)
    centres = bins.centres
    n_rows = pdf.shape[0]
    out = {name: np.full(n_rows, np.nan) for name in ("mean", "median", "mode")}

    for rows in row_chunks(n_rows, chunk_rows):
        chunk = np.asarray(pdf[rows], dtype=np.float64)
        cdf = normalised_cdf(chunk)
        usable = np.isfinite(cdf[:, -1])
        total = np.where(usable, chunk.sum(axis=1), np.nan)
        out["mean"][rows] = (chunk @ centres) / total
        out["median"][rows] = np.where(usable, centres[np.argmax(cdf >= 0.5, axis=1)], np.nan)
        # The raw row, not differences of the CDF, so that equal probabilities stay equal.
        mode_bins = np.argmax(np.nan_to_num(chunk, nan=-np.inf), axis=1)
        out["mode"][rows] = np.where(usable, centres[mode_bins], np.nan)
    return out


def true_bin_cross_entropy(
    pdf: np.ndarray, true_bins: np.ndarray, *, log: bool = False
) -> np.ndarray:
    """Cross-entropy of each galaxy's true mass bin, ``CE_i = -ln p_i(true bin)``, in nats.

    Parameters
    ----------
    pdf:
        Shape (N, n_bins): probabilities (``log=False``, assumed normalised) or natural-log
        probabilities (``log=True``, e.g. a log-softmax, more accurate for tiny probabilities).
    true_bins:
        Shape (N,) int, bin of each galaxy's true mass (``MassBins.index``); -1 for no truth.
    log:
        Whether ``pdf`` holds log-probabilities.

    Returns
    -------
    Shape (N,) float64, nats; NaN where ``true_bins == -1``; +inf where the true bin has zero
    probability.
    """
    pdf = np.asarray(pdf)
    true_bins = np.asarray(true_bins)
    if pdf.ndim != 2 or true_bins.shape != (pdf.shape[0],):
        raise ValueError(
            f"pdf must be (N, n_bins) and true_bins (N,), got {pdf.shape} and {true_bins.shape}"
        )
    if not np.issubdtype(true_bins.dtype, np.integer):
        raise ValueError(f"true_bins must be integer bin indices, got dtype {true_bins.dtype}")
    n_bins = pdf.shape[1]
    bad = (true_bins < -1) | (true_bins >= n_bins)
    if bad.any():
        raise ValueError(
            f"true_bins must lie in [0, {n_bins - 1}] or be -1 (no truth); got values "
            f"{np.unique(true_bins[bad])[:5].tolist()}"
        )

    known = true_bins >= 0
    picked = pdf[np.arange(pdf.shape[0]), np.where(known, true_bins, 0)].astype(np.float64)
    with np.errstate(divide="ignore"):
        ce = -picked if log else -np.log(picked)
    return np.where(known, ce, np.nan)


def pdf_quantiles(
    pdf: np.ndarray,
    bins: MassBins,
    qs: Sequence[float] = (0.05, 0.16, 0.5, 0.84, 0.95),
    *,
    chunk_rows: int = _CHUNK_ROWS,
) -> np.ndarray:
    """Quantiles of each galaxy's binned PDF, interpolated linearly on the CDF, in dex.

    The CDF is 0 at the lower edge of the first bin and rises linearly across each bin by that
    bin's probability. The q-quantile is the smallest mass where the CDF reaches q, so a run of
    empty bins never lies inside a quantile interval's ends.

    Parameters
    ----------
    pdf:
        Shape (N, n_bins), probabilities (normalised here).
    qs:
        Probabilities in (0, 1].

    Returns
    -------
    Shape (N, len(qs)) float64, dex; NaN rows for unusable PDFs.
    """
    pdf = check_pdf(pdf, bins)
    qs = np.asarray(qs, dtype=np.float64)
    if qs.ndim != 1 or ((qs <= 0) | (qs > 1)).any():
        raise ValueError(f"quantile probabilities must lie in (0, 1], got {qs.tolist()}")
    edges = bins.edges
    out = np.full((pdf.shape[0], qs.shape[0]), np.nan)

    for rows in row_chunks(pdf.shape[0], chunk_rows):
        cdf = normalised_cdf(pdf[rows])
        usable = np.isfinite(cdf[:, -1])
        # Rounding can leave the last CDF value a hair under 1; the top bin must reach q = 1.
        cdf[:, -1] = 1.0
        cdf_edges = np.concatenate([np.zeros((cdf.shape[0], 1)), cdf], axis=1)
        for column, q in enumerate(qs):
            upper = np.argmax(cdf_edges >= q, axis=1)
            lower = upper - 1
            f_low = np.take_along_axis(cdf_edges, lower[:, None], axis=1)[:, 0]
            f_high = np.take_along_axis(cdf_edges, upper[:, None], axis=1)[:, 0]
            # f_low < q <= f_high, so the step is never zero.
            with np.errstate(invalid="ignore"):
                fraction = (q - f_low) / (f_high - f_low)
            out[rows, column] = np.where(
                usable, edges[lower] + fraction * (edges[upper] - edges[lower]), np.nan
            )
    return out
