"""Sky cross-match: add the columns of a second catalogue (e.g. WISE) by nearest position.

Each galaxy of the first table takes the nearest source of the second table on the sky; the
match is kept when the separation is at most ``max_separation_arcsec``. The second table's
columns are added with a prefix, plus ``<prefix>sep_arcsec``; galaxies without a match get nulls.

The nearest neighbour is found per galaxy, so two galaxies may take the same source (close
pairs, shredded photometry). That is usually what a photometry join wants; callers who need a
one-to-one match can drop the rows whose matched source repeats.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from galpipe.ingest.tables import IngestError

log = logging.getLogger(__name__)


def _coordinates(table: pa.Table, ra_column: str, dec_column: str, which: str):
    """Positions of a table as numpy float64 degrees and a mask of usable rows."""
    missing = [c for c in (ra_column, dec_column) if c not in table.column_names]
    if missing:
        raise IngestError(f"{which} table lacks position column(s) {missing}; "
                          f"available: {table.column_names}")
    ra = pc.cast(table.column(ra_column), pa.float64()).to_numpy(zero_copy_only=False)
    dec = pc.cast(table.column(dec_column), pa.float64()).to_numpy(zero_copy_only=False)
    ra = np.asarray(ra, dtype=np.float64)
    dec = np.asarray(dec, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        usable = np.isfinite(ra) & np.isfinite(dec) & (np.abs(dec) <= 90.0)
    return ra, dec, usable


def crossmatch(
    table: pa.Table,
    other: pa.Table,
    *,
    max_separation_arcsec: float,
    prefix: str,
    ra_column: str = "ra",
    dec_column: str = "dec",
    other_ra_column: str = "ra",
    other_dec_column: str = "dec",
    columns: Sequence[str] | None = None,
) -> pa.Table:
    """Add the nearest ``other`` source within ``max_separation_arcsec`` to every row of ``table``.

    Parameters
    ----------
    table:
        The galaxies (any table with ICRS ``ra_column``/``dec_column`` in degrees).
    other:
        The catalogue to match (ICRS positions in ``other_ra_column``/``other_dec_column``).
        Rows with missing positions are never matched.
    max_separation_arcsec:
        Largest accepted separation (arcsec, > 0).
    prefix:
        Prepended to the names of the added columns (e.g. ``wise_``).
    columns:
        Columns of ``other`` to add; default every column except its positions.

    Returns
    -------
    ``table`` with the added columns (``<prefix><column>`` ..., ``<prefix>sep_arcsec`` float64),
    null where no source lies within the radius. Row order and count are unchanged.
    """
    if not max_separation_arcsec > 0:
        raise ValueError(f"max_separation_arcsec must be > 0, got {max_separation_arcsec}")
    if columns is None:
        columns = [c for c in other.column_names if c not in (other_ra_column, other_dec_column)]
    missing = [c for c in columns if c not in other.column_names]
    if missing:
        raise IngestError(f"catalogue to match lacks column(s) {missing}; "
                          f"available: {other.column_names}")
    added = [f"{prefix}{c}" for c in columns] + [f"{prefix}sep_arcsec"]
    clashes = [c for c in added if c in table.column_names]
    if clashes:
        raise IngestError(f"cross-match would overwrite existing column(s) {clashes}; "
                          f"choose another prefix than '{prefix}'")

    ra, dec, usable = _coordinates(table, ra_column, dec_column, "galaxies")
    other_ra, other_dec, other_usable = _coordinates(other, other_ra_column, other_dec_column,
                                                     "matched")
    candidates = np.flatnonzero(other_usable)
    matched_row = np.full(table.num_rows, -1, dtype=np.int64)
    separation = np.full(table.num_rows, np.nan)
    queries = np.flatnonzero(usable)
    if len(candidates) and len(queries):
        from astropy import units as u
        from astropy.coordinates import SkyCoord
        from astropy.utils import iers

        # Sky coordinates never need Earth-orientation tables, and nothing may be downloaded.
        iers.conf.auto_download = False
        left = SkyCoord(ra[queries] * u.deg, dec[queries] * u.deg, frame="icrs")
        right = SkyCoord(other_ra[candidates] * u.deg, other_dec[candidates] * u.deg,
                         frame="icrs")
        nearest, sep2d, _ = left.match_to_catalog_sky(right)
        sep_arcsec = sep2d.to_value(u.arcsec)
        accepted = sep_arcsec <= max_separation_arcsec
        matched_row[queries[accepted]] = candidates[np.asarray(nearest)[accepted]]
        separation[queries[accepted]] = sep_arcsec[accepted]

    has_match = matched_row >= 0
    take = pa.array(matched_row, mask=~has_match)
    result = table
    for column, name in zip(columns, added[:-1]):
        result = result.append_column(name, other.column(column).take(take))
    result = result.append_column(added[-1], pa.array(separation, mask=~has_match))
    log.info("cross-match '%s': %d of %d galaxies matched within %.2f arcsec",
             prefix, int(has_match.sum()), table.num_rows, max_separation_arcsec)
    return result
