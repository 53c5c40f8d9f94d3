"""Per-galaxy partial information decomposition of a tuple of feature sets <X1, X2>.

Given the pointwise information (nats) of three models on X1, X2 and the union X1 u X2, the
information the union carries about the stellar mass, i12, splits into four parts:

* redundant R: what either source alone provides, given by a named redundancy measure;
* unique U1 = i1 - R and U2 = i2 - R: what only one source provides;
* synergistic S = i12 - (R + U1 + U2): what only the two together provide.

By construction R + U1 + U2 + S = i12 for every galaxy. With the paper's minimum-information
redundancy R = min(i1, i2) the synergy is S = i12 - max(i1, i2). Nothing is clipped: negative
parts (misinformation, or a union model worse than its better source) are kept, as in the paper.

Redundancy measures are pluggable: decorate a function ``(i1, i2, i12) -> R`` of arrays with
:func:`register_redundancy` and pass its name to :func:`decompose`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
import pyarrow as pa

logger = logging.getLogger(__name__)

RedundancyMeasure = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]

COMPONENTS: tuple[str, ...] = ("redundant", "unique_1", "unique_2", "synergistic")

_REDUNDANCY_MEASURES: dict[str, RedundancyMeasure] = {}

INFORMATION_SCHEMA = pa.schema([
    pa.field("run_id", pa.string(), nullable=False),
    pa.field("tuple", pa.string(), nullable=False),
    pa.field("source_1", pa.string(), nullable=False),
    pa.field("source_2", pa.string(), nullable=False),
    pa.field("union", pa.string(), nullable=False),
    pa.field("redundancy_measure", pa.string(), nullable=False),
    pa.field("galaxy_id", pa.int64(), nullable=False),
    pa.field("i_source_1", pa.float64(), nullable=True),
    pa.field("i_source_2", pa.float64(), nullable=True),
    pa.field("i_union", pa.float64(), nullable=True),
    pa.field("redundant", pa.float64(), nullable=True),
    pa.field("unique_1", pa.float64(), nullable=True),
    pa.field("unique_2", pa.float64(), nullable=True),
    pa.field("synergistic", pa.float64(), nullable=True),
    pa.field("gap", pa.float64(), nullable=True),
])


def register_redundancy(name: str) -> Callable[[RedundancyMeasure], RedundancyMeasure]:
    """Decorator registering a pointwise redundancy measure under ``name``.

    The measure takes three float64 arrays of equal shape, the pointwise information (nats) of
    source 1, source 2 and the union, all finite, and returns the redundant information R of
    the same shape. Registering a name twice raises, so a plugin cannot silently replace a
    measure that results were already computed with.
    """
    if not name or not isinstance(name, str):
        raise ValueError(f"a redundancy measure needs a non-empty string name, got {name!r}")

    def register(measure: RedundancyMeasure) -> RedundancyMeasure:
        if name in _REDUNDANCY_MEASURES:
            raise ValueError(f"redundancy measure {name!r} is already registered")
        _REDUNDANCY_MEASURES[name] = measure
        return measure

    return register


def redundancy_measures() -> list[str]:
    """Names of the registered redundancy measures, in registration order."""
    return list(_REDUNDANCY_MEASURES)


def get_redundancy(name: str) -> RedundancyMeasure:
    """The redundancy measure registered under ``name``."""
    try:
        return _REDUNDANCY_MEASURES[name]
    except KeyError:
        raise ValueError(
            f"unknown redundancy measure {name!r}; registered: {redundancy_measures()}"
        ) from None


@register_redundancy("mmi")
def minimum_information_redundancy(
    i1: np.ndarray, i2: np.ndarray, i12: np.ndarray
) -> np.ndarray:
    """The paper's minimum-information redundancy R = min(i1, i2), in nats.

    Known property: for independent sources with additive information (i12 = i1 + i2) it still
    reports R = S = min(i1, i2) rather than two unique parts.
    """
    return np.minimum(i1, i2)


@register_redundancy("ccs")
def common_change_in_surprisal(i1: np.ndarray, i2: np.ndarray, i12: np.ndarray) -> np.ndarray:
    """Sign-aware pointwise redundancy: the common change in surprisal, in nats.

    The pointwise co-information c = i1 + i2 - i12 is the change in surprisal about the mass
    that the two sources share. It is read as redundancy only where it is unambiguous, i.e.
    where i1, i2, i12 and c all have the same sign (all informative or all misinformative);
    elsewhere R = 0 (Ince 2017, Entropy 19, 318). Unlike "mmi", independent sources with
    additive information get R = S = 0 and two unique parts.

    Difference from Ince's estimator: his i12 comes from a maximum-entropy joint distribution
    that keeps only the pairwise marginals; here i12 is the union model's own pointwise
    information, the quantity the rest of the decomposition uses.
    """
    co_information = i1 + i2 - i12
    sign = np.sign(co_information)
    unambiguous = (np.sign(i1) == sign) & (np.sign(i2) == sign) & (np.sign(i12) == sign)
    return np.where(unambiguous, co_information, 0.0)


def _as_information(name: str, values: np.ndarray, shape: tuple[int, ...] | None) -> np.ndarray:
    """Return values as float64 after checking the shape and that none is infinite."""
    values = np.asarray(values, dtype=np.float64)
    if shape is not None and values.shape != shape:
        raise ValueError(f"{name} has shape {values.shape}, expected {shape} (one per galaxy)")
    if np.isinf(values).any():
        raise ValueError(f"{name} holds infinite pointwise information; expected finite nats "
                         "or NaN for galaxies without a true mass")
    return values


def decompose(
    i1: np.ndarray, i2: np.ndarray, i12: np.ndarray, redundancy: str = "mmi"
) -> dict[str, np.ndarray]:
    """Split each galaxy's union information into redundant, unique and synergistic parts.

    Parameters
    ----------
    i1, i2, i12:
        Shape (n,), pointwise information in nats of the models on source 1, source 2 and the
        union; NaN where a galaxy has no true mass.
    redundancy:
        Name of a registered redundancy measure ("mmi", the paper's; "ccs", sign-aware).

    Returns
    -------
    Dict with keys "redundant", "unique_1", "unique_2", "synergistic", each shape (n,)
    float64 in nats, summing to i12 per galaxy; all NaN where any input is NaN.
    """
    i1 = _as_information("i1", i1, None)
    i2 = _as_information("i2", i2, i1.shape)
    i12 = _as_information("i12", i12, i1.shape)
    measure = get_redundancy(redundancy)

    missing = np.isnan(i1) | np.isnan(i2) | np.isnan(i12)
    redundant = np.asarray(measure(i1, i2, i12), dtype=np.float64)
    if redundant.shape != i1.shape:
        raise ValueError(f"redundancy measure {redundancy!r} returned shape {redundant.shape}, "
                         f"expected {i1.shape}")
    redundant = np.where(missing, np.nan, redundant)

    unique_1 = i1 - redundant
    unique_2 = i2 - redundant
    synergistic = i12 - (redundant + unique_1 + unique_2)
    return {
        "redundant": redundant,
        "unique_1": unique_1,
        "unique_2": unique_2,
        "synergistic": synergistic,
    }


def _float_column(values: np.ndarray) -> pa.Array:
    """float64 Arrow array with nulls where the values are NaN (no information)."""
    values = np.asarray(values, dtype=np.float64)
    return pa.array(values, type=pa.float64(), mask=np.isnan(values))


def information_table(
    galaxy_ids: np.ndarray,
    *,
    run_id: str,
    tuple_name: str,
    source_1: str,
    source_2: str,
    union: str,
    i1: np.ndarray,
    i2: np.ndarray,
    i12: np.ndarray,
    gap_reference: np.ndarray | None = None,
    redundancy: str = "mmi",
) -> pa.Table:
    """The ``information`` table of one tuple: pointwise information and its decomposition.

    Parameters
    ----------
    galaxy_ids:
        Shape (n,) int64 galaxy identifiers.
    run_id, tuple_name, source_1, source_2, union:
        Pipeline run, tuple name (e.g. "Mugriz+Iugriz") and the names of the feature sets of
        the three models.
    i1, i2, i12:
        Shape (n,), pointwise information in nats (NaN: no true mass).
    gap_reference:
        Shape (n,), pointwise information in nats of the tuple's reference model (the paper
        uses the Iugriz image model), or None. The gap is i(reference) - i12; null when None.
    redundancy:
        Registered redundancy measure name.

    Returns
    -------
    pyarrow Table with :data:`INFORMATION_SCHEMA` (schemas/information.yaml), one row per
    galaxy; information columns are null where a galaxy has no pointwise information.
    """
    galaxy_ids = np.asarray(galaxy_ids)
    if galaxy_ids.ndim != 1 or not np.issubdtype(galaxy_ids.dtype, np.integer):
        raise ValueError(f"galaxy_ids must be a 1-d integer array, got dtype {galaxy_ids.dtype} "
                         f"shape {galaxy_ids.shape}")
    shape = galaxy_ids.shape
    i1 = _as_information("i1", i1, shape)
    i2 = _as_information("i2", i2, shape)
    i12 = _as_information("i12", i12, shape)
    for name, value in (("run_id", run_id), ("tuple_name", tuple_name), ("source_1", source_1),
                        ("source_2", source_2), ("union", union)):
        if not isinstance(value, str) or not value:
            raise ValueError(f"{name} must be a non-empty string, got {value!r}")

    parts = decompose(i1, i2, i12, redundancy=redundancy)
    if gap_reference is None:
        gap = pa.nulls(len(galaxy_ids), type=pa.float64())
    else:
        gap = _float_column(_as_information("gap_reference", gap_reference, shape) - i12)

    n = len(galaxy_ids)
    labels = {"run_id": run_id, "tuple": tuple_name, "source_1": source_1,
              "source_2": source_2, "union": union, "redundancy_measure": redundancy}
    columns = [pa.repeat(pa.scalar(value, type=pa.string()), n) for value in labels.values()]
    columns += [pa.array(galaxy_ids, type=pa.int64())]
    columns += [_float_column(values) for values in (i1, i2, i12)]
    columns += [_float_column(parts[name]) for name in COMPONENTS]
    columns += [gap]
    logger.debug("information table for %s (%s): %d galaxies", tuple_name, redundancy, n)
    return pa.Table.from_arrays(columns, schema=INFORMATION_SCHEMA)
