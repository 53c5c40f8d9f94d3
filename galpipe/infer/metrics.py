"""Estimation metrics of stellar masses: bias, sigma_MAD, outlier fraction and CRPS.

With ``delta = estimate - truth`` in dex (the paper's definitions):

* bias = mean(delta);
* sigma_MAD = 1.4826 * median(|delta - median(delta)|), dex;
* outlier fraction = share of galaxies with |delta| > 3 sigma_MAD (|delta| itself, not its
  distance from the median);
* CRPS = mean over galaxies of sum over bins of (CDF_pred - CDF_true)^2 * bin width, dex.

CRPS placement of the true step: both CDFs are evaluated at the *upper edge* of every bin.
CDF_pred(bin j) = p_0 + ... + p_j (the PDF normalised to sum 1). CDF_true(bin j) = 1 if
j >= b_true else 0, where b_true = ``MassBins.index(truth)`` is the bin holding the true mass
(truths outside the range go to the edge bins, like the training labels). A PDF that puts all
its mass in bin b therefore scores exactly |b - b_true| * width, the distance between the two
bin centres.

NaNs are skipped: galaxies with a NaN truth or estimate are left out of every statistic, and of
the CRPS also those whose PDF row is not usable (no positive finite total).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import pyarrow as pa

from galpipe.bins import MassBins
from galpipe.contracts import load_contract
from galpipe.infer.estimates import check_pdf, normalised_cdf, row_chunks

logger = logging.getLogger(__name__)

#: Scale from the median absolute deviation to a Gaussian sigma.
MAD_TO_SIGMA = 1.4826
#: An outlier lies further than this many sigma_MAD from the truth.
OUTLIER_SIGMAS = 3.0
#: Values allowed in the categorical columns of the metrics table.
ESTIMATORS = ("network", "knn")
POINT_KINDS = ("mean", "median", "mode")
#: Rows per CRPS chunk: (rows x n_bins) float64 working arrays, about 34 MB at 520 bins.
CRPS_CHUNK_ROWS = 8192


def _finite(delta: np.ndarray) -> np.ndarray:
    """The finite entries of a 1-D array of residuals, float64."""
    delta = np.asarray(delta, dtype=np.float64).ravel()
    return delta[np.isfinite(delta)]


def bias(delta: np.ndarray) -> float:
    """Mean of ``delta = estimate - truth`` (dex), NaNs skipped; NaN when none is finite."""
    values = _finite(delta)
    return float(values.mean()) if values.size else float("nan")


def sigma_mad(delta: np.ndarray) -> float:
    """1.4826 * median(|delta - median(delta)|), dex, NaNs skipped; NaN when none is finite."""
    values = _finite(delta)
    if values.size == 0:
        return float("nan")
    return float(MAD_TO_SIGMA * np.median(np.abs(values - np.median(values))))


def outlier_fraction(delta: np.ndarray, sigma: float | None = None) -> float:
    """Share of galaxies with |delta| > 3 sigma_MAD, NaNs skipped; NaN when none is finite.

    ``sigma`` defaults to :func:`sigma_mad` of the same residuals.
    """
    values = _finite(delta)
    if values.size == 0:
        return float("nan")
    if sigma is None:
        sigma = sigma_mad(values)
    return float(np.mean(np.abs(values) > OUTLIER_SIGMAS * sigma))


def crps_per_galaxy(
    pdf: np.ndarray,
    truth: np.ndarray,
    bins: MassBins,
    *,
    chunk_rows: int = CRPS_CHUNK_ROWS,
) -> np.ndarray:
    """Continuous ranked probability score of each galaxy's binned PDF, dex.

    Parameters
    ----------
    pdf:
        Shape (N, n_bins), probabilities over ``bins`` (normalised here).
    truth:
        Shape (N,), true log10 stellar masses, dex; NaN for none.
    bins:
        The mass bins of the PDF.
    chunk_rows:
        Rows per working chunk; memory is about ``3 * chunk_rows * n_bins * 8`` bytes.

    Returns
    -------
    Shape (N,) float64, dex; NaN where the truth is NaN or the PDF row is unusable. See the
    module docstring for where the true step sits.
    """
    pdf = check_pdf(pdf, bins)
    truth = np.asarray(truth, dtype=np.float64)
    if truth.shape != (pdf.shape[0],):
        raise ValueError(f"truth must have shape ({pdf.shape[0]},), got {truth.shape}")
    true_bins = bins.index(truth)
    bin_numbers = np.arange(bins.n_bins)
    out = np.full(pdf.shape[0], np.nan)

    for rows in row_chunks(pdf.shape[0], chunk_rows):
        cdf = normalised_cdf(pdf[rows])
        chunk_bins = true_bins[rows]
        step = bin_numbers[None, :] >= chunk_bins[:, None]
        cdf -= step
        scores = np.einsum("ij,ij->i", cdf, cdf) * bins.width
        out[rows] = np.where(chunk_bins >= 0, scores, np.nan)
    return out


def crps(
    pdf: np.ndarray, truth: np.ndarray, bins: MassBins, *, chunk_rows: int = CRPS_CHUNK_ROWS
) -> float:
    """Mean CRPS over galaxies (dex), NaNs skipped; see :func:`crps_per_galaxy`."""
    scores = crps_per_galaxy(pdf, truth, bins, chunk_rows=chunk_rows)
    finite = scores[np.isfinite(scores)]
    return float(finite.mean()) if finite.size else float("nan")


def _group_row(delta: np.ndarray, crps_scores: np.ndarray | None) -> dict[str, object]:
    """The statistics of one group of galaxies; nulls where the group is empty."""
    n = int(np.isfinite(delta).sum())
    if n == 0:
        return {"n": 0, "bias": None, "sigma_mad": None, "outlier_fraction": None, "crps": None}
    spread = sigma_mad(delta)
    mean_crps = None
    if crps_scores is not None:
        finite = crps_scores[np.isfinite(crps_scores)]
        mean_crps = float(finite.mean()) if finite.size else None
    return {
        "n": n,
        "bias": bias(delta),
        "sigma_mad": spread,
        "outlier_fraction": outlier_fraction(delta, spread),
        "crps": mean_crps,
    }


def metrics_table(
    *,
    run_id: str,
    model: str,
    estimator: str,
    estimate_kind: str,
    split: str,
    truth: np.ndarray,
    estimate: np.ndarray,
    pdf: np.ndarray | None,
    bins: MassBins,
    classes: Sequence[str | None] | np.ndarray | None = None,
    mass_edges_for_groups: Sequence[float] | np.ndarray | None = None,
    chunk_rows: int = CRPS_CHUNK_ROWS,
) -> pa.Table:
    """Metrics of one point estimate of one model on one split, overall and by group.

    Parameters
    ----------
    run_id, model, split:
        Written into every row.
    estimator:
        ``"network"`` (the model's softmax) or ``"knn"`` (neighbours' masses).
    estimate_kind:
        Which point estimate ``estimate`` is: ``"mean"``, ``"median"`` or ``"mode"``.
    truth, estimate:
        Shape (N,), true and estimated log10 stellar masses, dex; NaN where missing.
    pdf:
        Shape (N, n_bins) PDFs over ``bins`` for the CRPS, or None (CRPS column null).
    classes:
        Shape (N,), class label per galaxy (None for unknown: counted only overall), or None for
        no per-class rows.
    mass_edges_for_groups:
        Increasing edges (dex) of the true-mass groups; a galaxy belongs to [low, high), the
        last group also includes its upper edge. None for no per-mass rows.

    Returns
    -------
    ``metrics`` table (schemas/metrics.yaml): one row with grouping ``"all"``, then one per
    class (sorted by label, grouping ``"class"``), then one per true-mass group (grouping
    ``"true_mass"``, with bin_low/bin_high; empty groups have n = 0 and null statistics).
    Galaxies with a NaN truth or estimate count in no row.
    """
    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator must be one of {ESTIMATORS}, got {estimator!r}")
    if estimate_kind not in POINT_KINDS:
        raise ValueError(f"estimate_kind must be one of {POINT_KINDS}, got {estimate_kind!r}")
    truth = np.asarray(truth, dtype=np.float64)
    estimate = np.asarray(estimate, dtype=np.float64)
    if truth.ndim != 1 or estimate.shape != truth.shape:
        raise ValueError(
            f"truth and estimate must be 1-D of equal length, got {truth.shape} and "
            f"{estimate.shape}"
        )
    n_galaxies = truth.shape[0]

    delta = estimate - truth
    valid = np.isfinite(delta)
    crps_scores = None
    if pdf is not None:
        pdf = check_pdf(pdf, bins)
        if pdf.shape[0] != n_galaxies:
            raise ValueError(f"pdf has {pdf.shape[0]} rows but truth has {n_galaxies} galaxies")
        crps_scores = crps_per_galaxy(pdf, truth, bins, chunk_rows=chunk_rows)
        crps_scores[~valid] = np.nan

    def scores_of(mask: np.ndarray) -> np.ndarray | None:
        return None if crps_scores is None else crps_scores[mask]

    groups: list[tuple[str, str, float | None, float | None, np.ndarray]] = []
    groups.append(("all", "all", None, None, np.ones(n_galaxies, dtype=bool)))

    if classes is not None:
        labels = np.asarray(classes, dtype=object)
        if labels.shape != (n_galaxies,):
            raise ValueError(f"classes must have shape ({n_galaxies},), got {labels.shape}")
        known = np.array([label is not None and label == label for label in labels], dtype=bool)
        for label in sorted({str(label) for label in labels[known]}):
            mask = known & (labels.astype(str) == label)
            groups.append(("class", label, None, None, mask))

    if mass_edges_for_groups is not None:
        edges = np.asarray(mass_edges_for_groups, dtype=np.float64)
        if edges.ndim != 1 or edges.size < 2 or not (np.diff(edges) > 0).all():
            raise ValueError(
                f"mass_edges_for_groups must be at least two increasing edges (dex), got "
                f"{edges.tolist()}"
            )
        for position, (low, high) in enumerate(zip(edges[:-1], edges[1:])):
            last = position == edges.size - 2
            mask = (truth >= low) & ((truth <= high) if last else (truth < high))
            groups.append(("true_mass", f"{low:.2f}-{high:.2f}", float(low), float(high), mask))

    contract = load_contract("metrics")
    columns: dict[str, list] = {name: [] for name in contract.column_names}
    for grouping, group, low, high, mask in groups:
        in_group = mask & valid
        stats = _group_row(delta[in_group], scores_of(in_group))
        row = {
            "run_id": run_id,
            "model": model,
            "estimator": estimator,
            "point": estimate_kind,
            "split": split,
            "grouping": grouping,
            "group": group,
            "bin_low": low,
            "bin_high": high,
            **stats,
        }
        for name in columns:
            columns[name].append(row[name])
    logger.debug(
        "metrics: %s/%s/%s on %s, %d galaxies, %d rows",
        model, estimator, estimate_kind, split, int(valid.sum()), len(groups),
    )
    return pa.Table.from_pydict(columns, schema=contract.arrow_schema())
