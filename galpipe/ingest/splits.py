"""Seeded train / validation / test splits that do not depend on row order or chunking.

Each galaxy gets a pseudo-random key in [0, 1) from a hash of (seed, galaxy_id). Two ways use it:

* :func:`assign_split` (whole table in memory): inside each stratum (e.g. class) the labelled
  galaxies are ranked by key and the first ``round(f_train * n)`` go to train, the next
  ``round(f_validation * n)`` to validation, the rest to test. Exact fractions per stratum.
* :func:`assign_split_streaming` (one chunk at a time, e.g. the mock): thresholds on the key.
  Fractions hold only on average, but any chunking of the same ids gives the same splits.

Galaxies without a target stellar mass are always ``inference``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

DEFAULT_FRACTIONS = (0.70, 0.15, 0.15)
DEFAULT_SEED = 20250929
SPLITS = ("train", "validation", "test")
INFERENCE = "inference"

_MIX_1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX_2 = np.uint64(0x94D049BB133111EB)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _splitmix64(values: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser, a bijective avalanche hash of uint64 values."""
    z = values + _GOLDEN
    z = (z ^ (z >> np.uint64(30))) * _MIX_1
    z = (z ^ (z >> np.uint64(27))) * _MIX_2
    return z ^ (z >> np.uint64(31))


def split_keys(galaxy_ids: np.ndarray, seed: int) -> np.ndarray:
    """A float64 key in [0, 1) per galaxy, a deterministic function of (seed, galaxy_id)."""
    ids = np.asarray(galaxy_ids, dtype=np.int64).view(np.uint64)
    with np.errstate(over="ignore"):
        mixed_seed = _splitmix64(np.array([seed], dtype=np.int64).view(np.uint64))[0]
        hashed = _splitmix64(ids ^ mixed_seed)
    return (hashed >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def _check_fractions(fractions: Sequence[float]) -> tuple[float, float, float]:
    if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-9:
        raise ValueError(f"split fractions must be 3 non-negative numbers summing to 1 "
                         f"(train, validation, test), got {tuple(fractions)}")
    return float(fractions[0]), float(fractions[1]), float(fractions[2])


def assign_split(
    galaxy_ids: np.ndarray,
    has_target: np.ndarray,
    *,
    seed: int = DEFAULT_SEED,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    strata: np.ndarray | None = None,
) -> np.ndarray:
    """Exact, stratified split of the galaxies with a target.

    Parameters
    ----------
    galaxy_ids:
        Unique int64 ids, shape (N,).
    has_target:
        Bool (N,): galaxies with a stellar mass; the others become ``inference``.
    seed:
        Seed of the key hash.
    fractions:
        (train, validation, test) fractions summing to 1.
    strata:
        Optional labels (N,) (e.g. class; None/NaN allowed as their own stratum); the fractions
        then hold within each stratum.

    Returns
    -------
    Object array (N,) of ``train``/``validation``/``test``/``inference``.
    """
    f_train, f_validation, _ = _check_fractions(fractions)
    galaxy_ids = np.asarray(galaxy_ids, dtype=np.int64)
    has_target = np.asarray(has_target, dtype=bool)
    if len(np.unique(galaxy_ids)) != len(galaxy_ids):
        raise ValueError("galaxy ids must be unique to assign a split")
    strata_keys = (np.zeros(len(galaxy_ids), dtype=object) if strata is None
                   else np.array([str(s) for s in strata], dtype=object))
    keys = split_keys(galaxy_ids, seed)
    split = np.full(len(galaxy_ids), INFERENCE, dtype=object)
    for stratum in sorted(set(strata_keys[has_target])):
        members = np.flatnonzero(has_target & (strata_keys == stratum))
        order = members[np.lexsort((galaxy_ids[members], keys[members]))]
        n_train = int(round(f_train * len(order)))
        n_validation = int(round(f_validation * len(order)))
        split[order[:n_train]] = "train"
        split[order[n_train:n_train + n_validation]] = "validation"
        split[order[n_train + n_validation:]] = "test"
    return split


def assign_split_streaming(
    galaxy_ids: np.ndarray,
    has_target: np.ndarray,
    *,
    seed: int = DEFAULT_SEED,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
) -> np.ndarray:
    """Split by thresholds on the key: identical for any chunking of the same ids.

    Returns an object array like :func:`assign_split`; the fractions hold in expectation.
    """
    f_train, f_validation, _ = _check_fractions(fractions)
    keys = split_keys(galaxy_ids, seed)
    split = np.where(keys < f_train, "train",
                     np.where(keys < f_train + f_validation, "validation", "test")).astype(object)
    split[~np.asarray(has_target, dtype=bool)] = INFERENCE
    return split
