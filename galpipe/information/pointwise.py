"""Pointwise mutual information between a galaxy's stellar mass and a model's input, in nats.

For an information ("MI") model on feature set X and galaxy i, the model's cross-entropy at the
true mass bin is CE_i = -ln p_model(bin_i | x_i) and the prior surprisal is
h_i = -ln p_prior(bin_i), where p_prior is the histogram of the catalogue's true masses over the
same bins the models classify into. The pointwise information is i_i = h_i - CE_i: positive when
the model puts more probability on the truth than the prior does, negative ("misinformation")
when it puts less. Averaged over galaxies drawn from the catalogue it estimates I(M*; X).
"""

from __future__ import annotations

import logging
from typing import Literal

import numpy as np

from galpipe.bins import MassBins

logger = logging.getLogger(__name__)

OutOfRange = Literal["edge", "drop"]


def true_mass_bins(
    stellar_mass: np.ndarray,
    mass_bins: MassBins | None = None,
    out_of_range: OutOfRange = "edge",
) -> np.ndarray:
    """Bin index of each galaxy's true stellar mass, -1 where there is no usable mass.

    Parameters
    ----------
    stellar_mass:
        Shape (n,), log10(M*/Msun) in dex; NaN for galaxies without a target mass.
    mass_bins:
        The bins the models classify into (default: the paper's 520 bins over [6, 12.5] dex).
    out_of_range:
        What happens to a finite mass outside [low, high]. ``"edge"`` (default) clips it into the
        first or last bin, exactly as the models' training labels do, so its cross-entropy is
        the one the model was trained against. ``"drop"`` gives it bin -1, so it gets no
        pointwise information (NaN) and does not enter the prior histogram.

    Returns
    -------
    Shape (n,) int64 bin indices in [0, n_bins - 1], or -1.
    """
    mass_bins = mass_bins or MassBins()
    if out_of_range not in ("edge", "drop"):
        raise ValueError(f"out_of_range must be 'edge' or 'drop', got {out_of_range!r}")
    stellar_mass = np.asarray(stellar_mass, dtype=np.float64)

    bins = mass_bins.index(stellar_mass)
    outside = np.isfinite(stellar_mass) & ~mass_bins.in_range(stellar_mass)
    if out_of_range == "drop":
        bins[outside] = -1
    if outside.any():
        logger.debug("%d masses outside [%g, %g] dex handled as %r", int(outside.sum()),
                     mass_bins.low, mass_bins.high, out_of_range)
    return bins


def _check_bins(true_bins: np.ndarray, n_bins: int) -> np.ndarray:
    """Return true_bins as int64 after checking every value is -1 or a valid bin index."""
    true_bins = np.asarray(true_bins)
    if true_bins.ndim != 1:
        raise ValueError(f"true_bins must be one-dimensional, got shape {true_bins.shape}")
    if not np.issubdtype(true_bins.dtype, np.integer):
        raise ValueError(f"true_bins must hold integer bin indices, got dtype {true_bins.dtype}")
    bad = (true_bins < -1) | (true_bins >= n_bins)
    if bad.any():
        position = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"true_bins must lie in [0, {n_bins - 1}] or be -1 (no mass); "
            f"found {int(true_bins[position])} at position {position}"
        )
    return true_bins.astype(np.int64, copy=False)


def prior_log_probabilities(
    true_bins: np.ndarray, n_bins: int, pseudocount: float = 0.0
) -> np.ndarray:
    """Natural log of the prior probability of each mass bin, from the catalogue's histogram.

    Pass the bins of ALL galaxies of the catalogue that have a true mass (every split), not only
    the test galaxies: the prior is the marginal distribution of M* that the models' inputs are
    measured against.

    Parameters
    ----------
    true_bins:
        Shape (n,), int bin indices as from :func:`true_mass_bins`; -1 (no mass) is ignored.
    n_bins:
        Number of mass bins of the models.
    pseudocount:
        Added to every bin's count before normalising, p_k = (c_k + a) / (n + a * n_bins).

    Returns
    -------
    Shape (n_bins,) float64, ln p_prior(bin) in nats.

    Empty bins: with ``pseudocount=0`` (the paper's plain histogram) an empty bin gets -inf.
    That is harmless when the prior is evaluated on the galaxies it was counted from, since no
    such galaxy falls in an empty bin; :func:`prior_entropy` raises if asked for one that does.
    Use ``pseudocount > 0`` to evaluate a prior on galaxies outside the histogram.
    """
    if n_bins < 1:
        raise ValueError(f"n_bins must be positive, got {n_bins}")
    if not (np.isfinite(pseudocount) and pseudocount >= 0):
        raise ValueError(f"pseudocount must be a finite number >= 0, got {pseudocount}")
    true_bins = _check_bins(true_bins, n_bins)

    counts = np.bincount(true_bins[true_bins >= 0], minlength=n_bins).astype(np.float64)
    total = counts.sum() + pseudocount * n_bins
    if total <= 0:
        raise ValueError("no galaxy has a true mass bin (all true_bins are -1) and pseudocount "
                         "is 0: the prior histogram is empty")
    with np.errstate(divide="ignore"):
        return np.log(counts + pseudocount) - np.log(total)


def prior_entropy(true_bins: np.ndarray, log_prior: np.ndarray) -> np.ndarray:
    """Prior surprisal h_i = -ln p_prior(bin_i) of each galaxy's true mass bin, in nats.

    Parameters
    ----------
    true_bins:
        Shape (n,), int bin indices; -1 means no true mass.
    log_prior:
        Shape (n_bins,), from :func:`prior_log_probabilities`.

    Returns
    -------
    Shape (n,) float64, NaN where the bin is -1.
    """
    log_prior = np.asarray(log_prior, dtype=np.float64)
    if log_prior.ndim != 1:
        raise ValueError(f"log_prior must be one-dimensional, got shape {log_prior.shape}")
    true_bins = _check_bins(true_bins, log_prior.size)

    has_mass = true_bins >= 0
    entropy = np.full(true_bins.shape, np.nan)
    entropy[has_mass] = -log_prior[true_bins[has_mass]]
    impossible = has_mass & ~np.isfinite(entropy)
    if impossible.any():
        position = int(np.flatnonzero(impossible)[0])
        raise ValueError(
            f"{int(impossible.sum())} galaxies fall in mass bins with zero prior probability "
            f"(first: position {position}, bin {int(true_bins[position])}); build the prior "
            "from a sample that contains these galaxies or use pseudocount > 0"
        )
    return entropy


def pointwise_information(
    cross_entropy: np.ndarray, true_bins: np.ndarray, log_prior: np.ndarray
) -> np.ndarray:
    """Pointwise information i_i = h_i - CE_i between stellar mass and a model's input, in nats.

    Parameters
    ----------
    cross_entropy:
        Shape (n,), CE_i = -ln p_model(true bin | x_i) in nats, from the predictions table;
        NaN where the galaxy has no true mass.
    true_bins:
        Shape (n,), int true mass bin of each galaxy (-1: no true mass), the bins the
        cross-entropy was evaluated at.
    log_prior:
        Shape (n_bins,), from :func:`prior_log_probabilities`.

    Returns
    -------
    Shape (n,) float64 in nats; NaN where the bin is -1 or the cross-entropy is NaN.
    """
    cross_entropy = np.asarray(cross_entropy, dtype=np.float64)
    true_bins = np.asarray(true_bins)
    if cross_entropy.shape != true_bins.shape:
        raise ValueError(
            f"cross_entropy has shape {cross_entropy.shape} but true_bins has shape "
            f"{true_bins.shape}: both need one value per galaxy"
        )
    infinite = np.isinf(cross_entropy)
    if infinite.any():
        position = int(np.flatnonzero(infinite)[0])
        raise ValueError(
            f"cross_entropy is infinite for {int(infinite.sum())} galaxies (first at position "
            f"{position}): the model gave the true bin zero probability; store cross-entropies "
            "computed from log-softmax so they stay finite"
        )

    # prior_entropy is NaN for bin -1, and NaN cross-entropies propagate, so both cases give NaN.
    return prior_entropy(true_bins, log_prior) - cross_entropy
