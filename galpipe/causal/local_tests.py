"""Local causal tests in the latent space S (METHOD.md section 4).

Galaxies that are neighbours in a contrastive model's latent space S share nearly the same S. If
stellar mass still depends on a query variable Xq inside a neighbourhood, the model did not
extract that information from its input. For each galaxy and its k nearest training galaxies:

* ``r``: the local Pearson correlation of stellar mass M (dex) and Xq;
* ``pe``: the predictive efficiency ``1 - Var(residual) / Var(M)`` of the least-squares fit
  ``M = a0 + a1 Xq + a2 Xq^2``;
* ``r_cond`` and ``pe_cond``: the same on the residuals of M and Xq after quadratic least-squares
  fits on a conditioning variable Xc over the same neighbours.

Each statistic has a null reference from B permutations of Xq (of its residual for the
conditional ones) within the galaxy's valid neighbours: the first permutation's value (the
paper's single-permutation comparison) and a permutation p-value with the +1 correction.

The kernel, :func:`local_test_statistics`, works on a block of G galaxies by K neighbour slots
without a per-galaxy Python loop. It never forms design matrices: because
``span{1, Xq, Xq^2} = span{1, u, u^2}`` with ``u = Xq - mean(Xq)``, the quadratic fit's explained
variance is the sum of two squared projections of the centred mass onto an orthogonal pair
(u, q), where q is the centred u^2 with its u-component removed. A permutation of Xq permutes
u and q and leaves their norms unchanged, so each permutation costs two gathered dot products.
:func:`local_statistics_reference` computes the same with an obvious per-galaxy loop over
``np.corrcoef`` and ``np.polyfit``, for tests.

:func:`run_local_tests` is the Ray edge: an actor pool holding the training arrays once maps
the kernel over streamed blocks of (galaxy ids, neighbour ids) and yields ``local_tests``
record batches in block order.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections import deque
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import pyarrow as pa

from galpipe.contracts import load_contract

logger = logging.getLogger(__name__)

STATISTICS: tuple[str, ...] = ("r", "pe", "r_cond", "pe_cond")
DEFAULT_MIN_VALID = 10

# A variable counts as constant among the neighbours when its centred sum of squares is below
# this fraction of its raw sum of squares (a relative spread under 1e-10): rounding leaves
# about 1e-32 there, so the threshold separates rounding from any physical spread.
_DEGENERATE_RELATIVE_SPREAD = 1e-20
# Permutation statistics within this of the observed value count as at least as extreme, so
# ties that are exact in exact arithmetic (a binary query, a repeated value) are not decided by
# the last bit of rounding.
_TIE_TOLERANCE = 1e-12
# Permutation work is done in chunks of about this many (permutation, galaxy, slot) elements so
# that temporaries stay near 12 MB whatever the block size (smaller chunks stay in cache).
_CHUNK_ELEMENTS = 1 << 19


def block_rng(seed: int, block_id: int) -> np.random.Generator:
    """The random generator of one block, from ``SeedSequence([seed, block_id])``.

    Deriving it from the run seed and the block's position in the stream makes results
    independent of how many actors ran the blocks and in which order they finished. They do
    depend on how galaxies are cut into blocks.
    """
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, block_id])))


def _compact(valid: np.ndarray, *values: np.ndarray) -> tuple[np.ndarray, np.ndarray, list]:
    """Move each row's valid entries to the front (order kept) and zero the rest.

    Returns (n_valid (G,), slot mask (G, K) true for the first n_valid slots, compacted arrays).
    """
    order = np.argsort(~valid, axis=1, kind="stable")
    n_valid = valid.sum(axis=1)
    slots = np.arange(valid.shape[1]) < n_valid[:, None]
    compacted = [np.where(slots, np.take_along_axis(v, order, axis=1), 0.0) for v in values]
    return n_valid, slots, compacted


def _centre(values: np.ndarray, slots: np.ndarray, n_valid: np.ndarray) -> np.ndarray:
    """Subtract each row's mean over its valid slots; invalid slots stay zero."""
    mean = values.sum(axis=1) / np.maximum(n_valid, 1)
    return np.where(slots, values - mean[:, None], 0.0)


def _quadratic_basis(
    centred: np.ndarray, slots: np.ndarray, n_valid: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Orthogonal basis (u, q) of the centred span of {x, x^2}, with squared norms.

    ``centred`` is x minus its row mean. q is dropped (set to zero, norm 1) where x takes only
    two distinct values, since x^2 then adds nothing to a fit on x; the fit is then linear,
    as a rank-revealing least-squares solver would make it.
    """
    u = centred
    uu = np.vecdot(u, u)
    q = _centre(u * u, slots, n_valid)
    qq_before = np.vecdot(q, q)
    coefficient = np.vecdot(u, q) / np.where(uu > 0, uu, 1.0)
    q -= coefficient[:, None] * u
    qq = np.vecdot(q, q)
    keep = qq > _DEGENERATE_RELATIVE_SPREAD * qq_before
    q[~keep] = 0.0
    return u, q, uu, np.where(keep, qq, 1.0)


def _permutation_sums(
    target: np.ndarray,
    u: np.ndarray,
    q: np.ndarray,
    n_valid: np.ndarray,
    n_permutations: int,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Dot products of ``target`` with permuted u and q, each of shape (B, G).

    Permutation b of row g sorts the row's valid slots by random keys: the top
    ``64 - index_bits`` bits of 64-bit words ``rng.bit_generator.random_raw((B, G, K))``, with
    the slot index in the low bits so a single integer sort yields the permutation (ties, at
    odds of 2^-57, go to the lower slot). Invalid slots get all-ones keys and stay at the end.
    Words are drawn in chunks along B, which reproduces the one-shot draw exactly.
    """
    n_galaxies, n_slots = u.shape
    index_bits = np.uint64(max(1, (n_slots - 1).bit_length()))
    index_mask = np.uint64((1 << int(index_bits)) - 1)
    slot_index = np.arange(n_slots, dtype=np.uint64)
    invalid_key = ((np.uint64(~np.uint64(0)) >> index_bits) << index_bits) | slot_index
    invalid = slot_index[None, :].astype(np.int64) >= n_valid[:, None]
    offsets = (np.arange(n_galaxies, dtype=np.int64) * n_slots)[:, None]
    u_flat, q_flat = u.ravel(), q.ravel()

    sums_u = np.empty((n_permutations, n_galaxies))
    sums_q = np.empty((n_permutations, n_galaxies))
    chunk = max(1, _CHUNK_ELEMENTS // max(1, n_galaxies * n_slots))
    for start in range(0, n_permutations, chunk):
        stop = min(start + chunk, n_permutations)
        keys = rng.bit_generator.random_raw((stop - start, n_galaxies, n_slots))
        keys >>= index_bits
        keys <<= index_bits
        keys |= slot_index
        np.copyto(keys, invalid_key, where=invalid)
        keys.sort(axis=-1)
        keys &= index_mask
        rows = keys.view(np.int64)
        rows += offsets
        sums_u[start:stop] = np.vecdot(u_flat[rows], target)
        sums_q[start:stop] = np.vecdot(q_flat[rows], target)
    return sums_u, sums_q


def _pair_statistics(
    mass: np.ndarray,
    query: np.ndarray,
    slots: np.ndarray,
    n_valid: np.ndarray,
    mass_scale: np.ndarray,
    query_scale: np.ndarray,
    n_permutations: int,
    rng: np.random.Generator,
    min_valid: int,
) -> dict[str, np.ndarray]:
    """r and pe, their first-permutation values and p-values, for compacted (G, K) arrays.

    ``mass_scale`` and ``query_scale`` (G,) are the raw sums of squares of the original values,
    against which a centred sum of squares is judged degenerate.
    """
    target = _centre(mass, slots, n_valid)
    mm = np.vecdot(target, target)
    u, q, uu, qq = _quadratic_basis(_centre(query, slots, n_valid), slots, n_valid)
    defined = (
        (n_valid >= min_valid)
        & (mm > _DEGENERATE_RELATIVE_SPREAD * mass_scale)
        & (uu > _DEGENERATE_RELATIVE_SPREAD * query_scale)
    )
    mm = np.where(defined, mm, 1.0)
    uu = np.where(defined, uu, 1.0)

    def correlation(sum_u: np.ndarray) -> np.ndarray:
        return sum_u / np.sqrt(mm * uu)

    def efficiency(sum_u: np.ndarray, sum_q: np.ndarray) -> np.ndarray:
        return (sum_u**2 / uu + sum_q**2 / qq) / mm

    r = correlation(np.vecdot(target, u))
    pe = efficiency(np.vecdot(target, u), np.vecdot(target, q))
    perm_u, perm_q = _permutation_sums(target, u, q, n_valid, n_permutations, rng)
    r_perm = correlation(perm_u)
    pe_perm = efficiency(perm_u, perm_q)
    r_extreme = np.abs(r_perm) >= np.abs(r) - _TIE_TOLERANCE
    pe_extreme = pe_perm >= pe - _TIE_TOLERANCE

    columns = {
        "r": r,
        "r_perm1": r_perm[0],
        "r_pvalue": (1.0 + r_extreme.sum(axis=0)) / (n_permutations + 1.0),
        "pe": pe,
        "pe_perm1": pe_perm[0],
        "pe_pvalue": (1.0 + pe_extreme.sum(axis=0)) / (n_permutations + 1.0),
    }
    return {name: np.where(defined, value, np.nan) for name, value in columns.items()}


def _residualise_on_quadratic(
    values: list[np.ndarray], condition: np.ndarray, slots: np.ndarray, n_valid: np.ndarray
) -> tuple[list[np.ndarray], np.ndarray]:
    """Residuals of each array after a least-squares fit a0 + a1 c + a2 c^2, per row.

    Returns the residuals and the centred sum of squares of the condition (G,), to judge
    whether it has any spread.
    """
    u, q, uu, qq = _quadratic_basis(_centre(condition, slots, n_valid), slots, n_valid)
    safe_uu = np.where(uu > 0, uu, 1.0)
    residuals = []
    for value in values:
        centred = _centre(value, slots, n_valid)
        centred -= (np.vecdot(centred, u) / safe_uu)[:, None] * u
        centred -= (np.vecdot(centred, q) / qq)[:, None] * q
        residuals.append(centred)
    return residuals, uu


def _conditional_name(name: str) -> str:
    """Column name of a conditional statistic: r -> r_cond, pe_pvalue -> pe_cond_pvalue."""
    statistic, separator, suffix = name.partition("_")
    return f"{statistic}_cond{separator}{suffix}"


def _check_block(name: str, values: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """``values`` as float64 of the expected shape, or a ValueError naming the array."""
    values = np.asarray(values, dtype=np.float64)
    if values.shape != shape:
        raise ValueError(
            f"{name} has shape {values.shape}; expected {shape} (galaxies, neighbours)"
        )
    return values


def local_test_statistics(
    stellar_mass: np.ndarray,
    query: np.ndarray,
    condition: np.ndarray | None = None,
    *,
    n_permutations: int = 100,
    rng: np.random.Generator,
    min_valid: int = DEFAULT_MIN_VALID,
) -> dict[str, np.ndarray]:
    """Local tests for a block of galaxies, vectorised over galaxies and permutations.

    Parameters
    ----------
    stellar_mass, query, condition:
        (G, K) float arrays: stellar mass (dex), query Xq and conditioning Xc of each galaxy's K
        neighbours; NaN marks a missing value. ``condition`` is optional.
    n_permutations:
        Permutations B per galaxy and statistic (at least 1).
    rng:
        Source of the permutations. The unconditional permutations use the first B*G*K raw
        64-bit words of its bit generator, the conditional ones the next B*G*K (see
        ``_permutation_sums`` for how words become permutations).
    min_valid:
        Fewer valid neighbours than this gives null (NaN) statistics.

    Returns
    -------
    dict of (G,) arrays: ``n_valid`` (neighbours with finite M and Xq), ``r``, ``r_perm1``,
    ``r_pvalue``, ``pe``, ``pe_perm1``, ``pe_pvalue``; with a condition also
    ``n_valid_conditional`` and the same six with ``_cond`` after the statistic name
    (``r_cond``, ``r_cond_perm1``, ...). NaN where undefined: too few valid neighbours, or M,
    Xq (or Xc) constant among them. p-values are ``(1 + #{|r_b| >= |r|}) / (B + 1)`` for r
    and ``(1 + #{pe_b >= pe}) / (B + 1)`` for pe.
    """
    stellar_mass = np.asarray(stellar_mass, dtype=np.float64)
    if stellar_mass.ndim != 2:
        raise ValueError(f"stellar_mass must be (galaxies, neighbours); got {stellar_mass.shape}")
    query = _check_block("query", query, stellar_mass.shape)
    if n_permutations < 1:
        raise ValueError(f"n_permutations must be at least 1; got {n_permutations}")
    if min_valid < 4:
        raise ValueError(f"min_valid must be at least 4 for a quadratic fit; got {min_valid}")

    valid = np.isfinite(stellar_mass) & np.isfinite(query)
    n_valid, slots, (mass, query_values) = _compact(valid, stellar_mass, query)
    columns = {"n_valid": n_valid}
    columns |= _pair_statistics(
        mass, query_values, slots, n_valid,
        np.vecdot(mass, mass), np.vecdot(query_values, query_values),
        n_permutations, rng, min_valid,
    )
    if condition is None:
        return columns

    condition = _check_block("condition", condition, stellar_mass.shape)
    valid &= np.isfinite(condition)
    n_cond, slots, (mass, query_values, condition_values) = _compact(
        valid, stellar_mass, query, condition
    )
    (mass_residual, query_residual), condition_spread = _residualise_on_quadratic(
        [mass, query_values], condition_values, slots, n_cond
    )
    conditional = _pair_statistics(
        mass_residual, query_residual, slots, n_cond,
        np.vecdot(mass, mass), np.vecdot(query_values, query_values),
        n_permutations, rng, min_valid,
    )
    condition_scale = np.vecdot(condition_values, condition_values)
    constant_condition = ~(condition_spread > _DEGENERATE_RELATIVE_SPREAD * condition_scale)
    columns["n_valid_conditional"] = n_cond
    for name, value in conditional.items():
        value[constant_condition] = np.nan
        columns[_conditional_name(name)] = value
    return columns


def _reference_pair(
    mass: np.ndarray,
    query: np.ndarray,
    keys: np.ndarray,
    mass_scale: float,
    query_scale: float,
    min_valid: int,
) -> dict[str, float]:
    """Statistics of one galaxy by the textbook route; ``keys`` (B, n) order the permutations."""
    names = ("r", "r_perm1", "r_pvalue", "pe", "pe_perm1", "pe_pvalue")
    n = mass.size
    spread_m = np.var(mass) * n if n else 0.0
    spread_q = np.var(query) * n if n else 0.0
    if (
        n < min_valid
        or not spread_m > _DEGENERATE_RELATIVE_SPREAD * mass_scale
        or not spread_q > _DEGENERATE_RELATIVE_SPREAD * query_scale
    ):
        return dict.fromkeys(names, np.nan)

    def correlation(x: np.ndarray) -> float:
        return float(np.corrcoef(mass, x)[0, 1])

    def efficiency(x: np.ndarray) -> float:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", np.exceptions.RankWarning)
            coefficients = np.polyfit(x, mass, 2)
        residual = mass - np.polyval(coefficients, x)
        return float(1.0 - np.var(residual) / np.var(mass))

    r, pe = correlation(query), efficiency(query)
    r_perm, pe_perm = [], []
    for permutation_keys in keys:
        shuffled = query[np.argsort(permutation_keys, kind="stable")]
        r_perm.append(correlation(shuffled))
        pe_perm.append(efficiency(shuffled))
    r_perm, pe_perm = np.array(r_perm), np.array(pe_perm)
    n_perm = len(keys)
    return {
        "r": r,
        "r_perm1": r_perm[0],
        "r_pvalue": (1 + np.sum(np.abs(r_perm) >= abs(r) - _TIE_TOLERANCE)) / (n_perm + 1),
        "pe": pe,
        "pe_perm1": pe_perm[0],
        "pe_pvalue": (1 + np.sum(pe_perm >= pe - _TIE_TOLERANCE)) / (n_perm + 1),
    }


def local_statistics_reference(
    stellar_mass: np.ndarray,
    query: np.ndarray,
    condition: np.ndarray | None = None,
    *,
    n_permutations: int = 100,
    rng: np.random.Generator,
    min_valid: int = DEFAULT_MIN_VALID,
) -> dict[str, np.ndarray]:
    """Slow, obvious per-galaxy version of :func:`local_test_statistics`, for tests.

    Same inputs and outputs. Draws the same raw words from ``rng`` and turns them into the same
    permutations, so the results agree to rounding, permutation statistics included.
    """
    stellar_mass = np.asarray(stellar_mass, dtype=np.float64)
    query = np.asarray(query, dtype=np.float64)
    n_galaxies, n_slots = stellar_mass.shape
    index_bits = np.uint64(max(1, (n_slots - 1).bit_length()))
    words = rng.bit_generator.random_raw((n_permutations, n_galaxies, n_slots)) >> index_bits
    words_cond = None
    if condition is not None:
        condition = np.asarray(condition, dtype=np.float64)
        words_cond = rng.bit_generator.random_raw((n_permutations, n_galaxies, n_slots))
        words_cond >>= index_bits

    rows: list[dict[str, float]] = []
    for g in range(n_galaxies):
        valid = np.isfinite(stellar_mass[g]) & np.isfinite(query[g])
        mass, values = stellar_mass[g, valid], query[g, valid]
        row: dict[str, float] = {"n_valid": valid.sum()}
        row |= _reference_pair(
            mass, values, words[:, g, : valid.sum()],
            float(np.sum(mass**2)), float(np.sum(values**2)), min_valid,
        )
        if condition is not None:
            valid &= np.isfinite(condition[g])
            mass, values, conditioning = (a[g, valid] for a in (stellar_mass, query, condition))
            row["n_valid_conditional"] = valid.sum()
            residuals = []
            for y in (mass, values):
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", np.exceptions.RankWarning)
                    fit = np.polyfit(conditioning, y, 2) if valid.sum() >= 3 else np.zeros(3)
                residuals.append(y - np.polyval(fit, conditioning))
            pair = _reference_pair(
                residuals[0], residuals[1], words_cond[:, g, : valid.sum()],
                float(np.sum(mass**2)), float(np.sum(values**2)), min_valid,
            )
            spread_c = np.var(conditioning) * valid.sum() if valid.sum() else 0.0
            if not spread_c > _DEGENERATE_RELATIVE_SPREAD * np.sum(conditioning**2):
                pair = dict.fromkeys(pair, np.nan)
            row |= {_conditional_name(name): value for name, value in pair.items()}
        rows.append(row)
    return {name: np.array([row[name] for row in rows]) for name in rows[0]}


def local_tests_record_batch(
    galaxy_ids: np.ndarray,
    n_neighbours: np.ndarray,
    statistics: dict[str, np.ndarray],
    *,
    run_id: str,
    model: str,
    query_name: str,
    condition_name: str | None,
    n_permutations: int,
) -> pa.RecordBatch:
    """A ``local_tests`` record batch from the kernel's output; NaN statistics become nulls.

    ``n_neighbours`` (G,) is the number of non-empty neighbour slots per galaxy.
    """
    schema = load_contract("local_tests").arrow_schema()
    n_rows = len(galaxy_ids)

    def floats(name: str) -> pa.Array:
        if name not in statistics:
            return pa.nulls(n_rows, pa.float64())
        values = np.asarray(statistics[name], dtype=np.float64)
        return pa.array(values, pa.float64(), mask=np.isnan(values))

    def repeated(value: str | None) -> pa.Array:
        return pa.array([value] * n_rows, pa.string())

    arrays: dict[str, pa.Array] = {
        "run_id": repeated(run_id),
        "model": repeated(model),
        "galaxy_id": pa.array(np.asarray(galaxy_ids, dtype=np.int64)),
        "query": repeated(query_name),
        "condition": repeated(condition_name),
        "k": pa.array(np.asarray(n_neighbours, dtype=np.int32)),
        "n_valid": pa.array(np.asarray(statistics["n_valid"], dtype=np.int32)),
        "n_valid_conditional": (
            pa.array(np.asarray(statistics["n_valid_conditional"], dtype=np.int32))
            if "n_valid_conditional" in statistics else pa.nulls(n_rows, pa.int32())
        ),
        "n_permutations": pa.array(np.full(n_rows, n_permutations, dtype=np.int32)),
    }
    for field in schema:
        if field.name not in arrays:
            arrays[field.name] = floats(field.name)
    return pa.RecordBatch.from_arrays([arrays[f.name] for f in schema], schema=schema)


def _sorted_by_id(
    train_ids: np.ndarray, *values: np.ndarray | None
) -> tuple[np.ndarray, ...]:
    """Training ids in increasing order and the value arrays (float64) in the same order.

    Arrays already in id order are returned without a copy, so actors keep zero-copy views of
    the object store. Raises ValueError for duplicated or non-integer ids.
    """
    train_ids = np.asarray(train_ids)
    if not np.issubdtype(train_ids.dtype, np.integer):
        raise ValueError(f"training galaxy ids must be integers; got dtype {train_ids.dtype}")
    train_ids = train_ids.astype(np.int64, copy=False)
    values = tuple(None if v is None else np.asarray(v, dtype=np.float64) for v in values)
    if np.all(train_ids[1:] > train_ids[:-1]):
        return (train_ids, *values)
    order = np.argsort(train_ids, kind="stable")
    train_ids = train_ids[order]
    duplicated = train_ids[1:][train_ids[1:] == train_ids[:-1]]
    if duplicated.size:
        raise ValueError(f"training galaxy ids are not unique, e.g. {duplicated[:5].tolist()}")
    return (train_ids, *(None if v is None else v[order] for v in values))


class LocalTestBlockWorker:
    """Holds the training arrays once and runs the local tests on blocks of galaxies.

    A plain class: :func:`run_local_tests` wraps it as a Ray actor; tests and single-process
    callers may use it directly.

    Parameters
    ----------
    train_ids:
        (N,) int64 training-galaxy ids, unique; sorted here unless already increasing.
    train_mass, train_query, train_condition:
        (N,) float arrays aligned with ``train_ids``: stellar mass (dex), query and optional
        condition; NaN (or null) for missing values.
    settings:
        Keyword arguments of :func:`local_tests_record_batch` and :func:`local_test_statistics`
        shared by every block: run_id, model, query_name, condition_name, n_permutations,
        seed, min_valid.
    """

    def __init__(
        self,
        train_ids: np.ndarray,
        train_mass: np.ndarray,
        train_query: np.ndarray,
        train_condition: np.ndarray | None,
        settings: dict[str, Any],
    ) -> None:
        self._ids, self._mass, self._query, self._condition = _sorted_by_id(
            train_ids, train_mass, train_query, train_condition
        )
        self._settings = dict(settings)

    def _rows(self, block_id: int, neighbour_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Training rows of the neighbour ids and the mask of non-empty slots (ids >= 0)."""
        present = neighbour_ids >= 0
        rows = np.searchsorted(self._ids, neighbour_ids)
        rows = np.minimum(rows, self._ids.size - 1)
        unknown = present & (self._ids[rows] != neighbour_ids)
        if unknown.any():
            raise ValueError(
                f"block {block_id}: {int(unknown.sum())} neighbour ids are not training galaxies, "
                f"e.g. {np.unique(neighbour_ids[unknown])[:5].tolist()}; neighbours must come "
                "from the same training set as the arrays given to run_local_tests"
            )
        return rows, present

    def process(
        self, block_id: int, galaxy_ids: np.ndarray, neighbour_ids: np.ndarray
    ) -> pa.RecordBatch:
        """Local tests of one block: (G,) galaxy ids and (G, K) neighbour ids -> record batch.

        Negative neighbour ids mark empty slots and count as missing values.
        """
        settings = self._settings
        neighbour_ids = np.asarray(neighbour_ids, dtype=np.int64)
        rows, present = self._rows(block_id, neighbour_ids)

        def gather(values: np.ndarray) -> np.ndarray:
            return np.where(present, values[rows], np.nan)

        statistics = local_test_statistics(
            gather(self._mass),
            gather(self._query),
            None if self._condition is None else gather(self._condition),
            n_permutations=settings["n_permutations"],
            rng=block_rng(settings["seed"], block_id),
            min_valid=settings["min_valid"],
        )
        return local_tests_record_batch(
            galaxy_ids, present.sum(axis=1), statistics,
            run_id=settings["run_id"], model=settings["model"],
            query_name=settings["query_name"], condition_name=settings["condition_name"],
            n_permutations=settings["n_permutations"],
        )


def _checked_block(block_id: int, block: tuple[np.ndarray, np.ndarray]) -> tuple:
    """(galaxy_ids (G,), neighbour_ids (G, K)) as int64, or a ValueError naming the block."""
    try:
        galaxy_ids, neighbour_ids = block
    except (TypeError, ValueError) as exc:
        raise ValueError(
            f"block {block_id} must be a pair (galaxy_ids, neighbour_ids)"
        ) from exc
    galaxy_ids = np.asarray(galaxy_ids)
    neighbour_ids = np.asarray(neighbour_ids)
    if not (np.issubdtype(galaxy_ids.dtype, np.integer)
            and np.issubdtype(neighbour_ids.dtype, np.integer)):
        raise ValueError(
            f"block {block_id}: galaxy and neighbour ids must be integers; got "
            f"{galaxy_ids.dtype} and {neighbour_ids.dtype}"
        )
    if galaxy_ids.ndim != 1 or neighbour_ids.ndim != 2 or len(galaxy_ids) != len(neighbour_ids):
        raise ValueError(
            f"block {block_id}: expected galaxy_ids (G,) and neighbour_ids (G, K); got "
            f"{galaxy_ids.shape} and {neighbour_ids.shape}"
        )
    return galaxy_ids.astype(np.int64, copy=False), neighbour_ids.astype(np.int64, copy=False)


def run_local_tests(
    blocks: Iterable[tuple[np.ndarray, np.ndarray]],
    train_ids: np.ndarray,
    train_mass: np.ndarray,
    train_query: np.ndarray,
    train_condition: np.ndarray | None,
    *,
    run_id: str,
    model: str,
    query_name: str,
    condition_name: str | None,
    n_permutations: int = 100,
    seed: int = 0,
    min_valid: int = DEFAULT_MIN_VALID,
    num_actors: int = 2,
    max_in_flight: int = 4,
) -> Iterator[pa.RecordBatch]:
    """Stream ``local_tests`` record batches for blocks of galaxies, on a Ray actor pool.

    Parameters
    ----------
    blocks:
        Iterable of (galaxy_ids (G,), neighbour_ids (G, K)) int64 pairs; neighbour ids are ids
        of training galaxies, negative for an empty slot. Consumed lazily.
    train_ids, train_mass, train_query, train_condition:
        (N,) training-galaxy ids (unique) and their stellar mass (dex), query and optional
        condition values (NaN when missing). Put in the object store once, shared by actors.
    run_id, model, query_name, condition_name:
        Written into every row; ``condition_name`` is None exactly when ``train_condition`` is.
    n_permutations, seed, min_valid:
        As in :func:`local_test_statistics`; block i uses ``block_rng(seed, i)``.
    num_actors, max_in_flight:
        Actors (0.5 CPU each) and the most blocks submitted but not yet yielded; memory stays
        flat at about ``max_in_flight`` blocks whatever the number of galaxies.

    Yields
    ------
    One ``pyarrow.RecordBatch`` per block, in block order, matching ``schemas/local_tests.yaml``.
    Ray must already be initialised by the caller.
    """
    import ray

    if not ray.is_initialized():
        raise RuntimeError("run_local_tests needs a running Ray runtime; call ray.init() first")
    if (train_condition is None) != (condition_name is None):
        given = "missing" if train_condition is None else "given"
        raise ValueError(
            "give both train_condition and condition_name, or neither; got condition_name="
            f"{condition_name!r} with train_condition {given}"
        )
    n_train = len(train_ids)
    for name, values in (("train_mass", train_mass), ("train_query", train_query),
                         ("train_condition", train_condition)):
        if values is not None and np.shape(values) != (n_train,):
            raise ValueError(f"{name} has shape {np.shape(values)}; expected ({n_train},) "
                             "like train_ids")
    if n_train == 0:
        raise ValueError("train_ids is empty; local tests need training galaxies")
    if num_actors < 1 or max_in_flight < 1:
        raise ValueError(f"num_actors and max_in_flight must be at least 1; got {num_actors} "
                         f"and {max_in_flight}")
    if n_permutations < 1 or min_valid < 4:
        raise ValueError(f"need n_permutations >= 1 and min_valid >= 4; got {n_permutations} "
                         f"and {min_valid}")

    settings = {"run_id": run_id, "model": model, "query_name": query_name,
                "condition_name": condition_name, "n_permutations": int(n_permutations),
                "seed": int(seed), "min_valid": int(min_valid)}
    # Sorted once here, so every actor works on zero-copy views of the same object-store copy.
    training = _sorted_by_id(train_ids, train_mass, train_query, train_condition)
    references = [None if values is None else ray.put(values) for values in training]
    worker_class = ray.remote(num_cpus=0.5)(LocalTestBlockWorker)
    actors = [worker_class.remote(*references, settings) for _ in range(num_actors)]
    pending: deque = deque()
    started, n_blocks, n_galaxies = time.perf_counter(), 0, 0
    logger.info("local tests of model %s: query %s, condition %s, B=%d, %d actors",
                model, query_name, condition_name, n_permutations, num_actors)
    try:
        for block_id, block in enumerate(blocks):
            galaxy_ids, neighbour_ids = _checked_block(block_id, block)
            actor = actors[block_id % num_actors]
            pending.append(actor.process.remote(block_id, galaxy_ids, neighbour_ids))
            if len(pending) >= max_in_flight:
                batch = ray.get(pending.popleft())
                n_blocks, n_galaxies = n_blocks + 1, n_galaxies + batch.num_rows
                yield batch
        while pending:
            batch = ray.get(pending.popleft())
            n_blocks, n_galaxies = n_blocks + 1, n_galaxies + batch.num_rows
            yield batch
    finally:
        for actor in actors:
            ray.kill(actor)
    elapsed = time.perf_counter() - started
    logger.info("local tests of model %s done: %d galaxies in %d blocks, %.1f s",
                model, n_galaxies, n_blocks, elapsed)
