"""Survey catalogue files (FITS, CSV, Parquet) into Arrow, and into the ``galaxies`` contract.

:func:`read_catalogue` reads one file, selects and renames columns, turns missing-value markers
(NaN and sentinels with ``|v| >= 9000``, such as -9999) into nulls, and checks the identity and
position columns. :func:`to_galaxies` turns such a table into the ``galaxies`` contract: the
contract's columns first, every other catalogue column after them, a seeded split when the
catalogue has none.

Column mappings are ``{target: source}``. A source may pick one element of an array column with
``NAME[i]`` (SDSS FITS tables store per-band values as arrays, e.g. ``PETROMAG[2]`` for r).
Source names are matched exactly first, then case-insensitively.

Limitation: a catalogue is read whole into memory (about 8 bytes per value); a survey larger
than memory should be split into files and ingested file by file.
"""

from __future__ import annotations

import fnmatch
import logging
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from galpipe.ingest.splits import DEFAULT_FRACTIONS, DEFAULT_SEED, INFERENCE, SPLITS, assign_split
from galpipe.ingest.tables import (
    SENTINEL_ABS,
    IngestError,
    check_positions,
    galaxies_table,
    null_sentinels_arrow,
    parse_element,
    rows_text,
    snake_case,
)

log = logging.getLogger(__name__)

FORMATS = {
    ".fits": "fits", ".fit": "fits", ".fts": "fits", ".fits.gz": "fits", ".fit.gz": "fits",
    ".csv": "csv", ".csv.gz": "csv", ".parquet": "parquet", ".pq": "parquet",
}
_CONTRACT_OPTIONAL = ("name", "redshift", "stellar_mass", "stellar_mass_source", "class", "split")
LOG_MASS_RANGE = (3.0, 14.0)
"""Plausible log10(M*/Msun) (dex) of a galaxy; values outside are markers (-1, -99, 99) or
mistakes, and are refused rather than trained on."""
LINEAR_MASS_MIN = 1e6
"""Stellar masses this large (and below the sentinel range's use) are linear M*/Msun."""
REDSHIFT_RANGE = (-0.01, 20.0)


def infer_format(path: str | Path) -> str:
    """``fits``, ``csv`` or ``parquet`` from a file name's suffix."""
    name = str(path).lower()
    for suffix in sorted(FORMATS, key=len, reverse=True):
        if name.endswith(suffix):
            return FORMATS[suffix]
    raise IngestError(f"cannot tell the format of catalogue {path} from its suffix; "
                      f"pass format= one of {sorted(set(FORMATS.values()))}")


def _fits_to_arrow(path: Path, hdu: int | str | None) -> pa.Table:
    """A FITS binary table as Arrow: masked values -> nulls, array columns -> fixed-size lists."""
    from astropy.table import Table
    from astropy.units import UnitsWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnitsWarning)
        table = Table.read(path, format="fits", hdu=hdu) if hdu is not None else \
            Table.read(path, format="fits")
    arrays, names = [], []
    for name in table.colnames:
        column = table[name]
        data = np.asarray(column)
        mask = np.asarray(getattr(column, "mask", np.zeros(data.shape, bool)), dtype=bool)
        if data.dtype.kind == "S":
            data = np.char.decode(data, "ascii", errors="replace")
        if data.dtype.kind == "U":
            data = np.char.strip(data)
        elif data.dtype.byteorder not in ("=", "|"):
            data = data.astype(data.dtype.newbyteorder("="))
        if data.ndim == 1:
            arrays.append(pa.array(data, mask=mask if mask.any() else None))
        else:
            width = int(np.prod(data.shape[1:]))
            flat_mask = np.broadcast_to(mask, data.shape).reshape(-1)
            values = pa.array(data.reshape(-1), mask=flat_mask if flat_mask.any() else None)
            arrays.append(pa.FixedSizeListArray.from_arrays(values, width))
        names.append(name)
    return pa.Table.from_arrays(arrays, names=names)


def _read_raw(path: Path, file_format: str, hdu: int | str | None) -> pa.Table:
    """The whole file as an Arrow table, any reader failure reported with the file named."""
    if not path.exists():
        raise IngestError(f"catalogue file {path} does not exist")
    if file_format not in FORMATS.values():
        raise IngestError(f"unknown catalogue format '{file_format}' for {path}; "
                          f"expected one of {sorted(set(FORMATS.values()))}")
    try:
        if file_format == "fits":
            return _fits_to_arrow(path, hdu)
        if file_format == "csv":
            import pyarrow.csv as pacsv

            table = pacsv.read_csv(path)
            return _trim_strings(table)
        import pyarrow.parquet as pq

        return pq.read_table(path)
    except Exception as exc:  # every reader has its own exception types
        raise IngestError(f"cannot read catalogue file {path} as {file_format}: {exc}") from exc


def _trim_strings(table: pa.Table) -> pa.Table:
    """Strip padding of CSV string columns; empty strings become nulls."""
    for i, field in enumerate(table.schema):
        if pa.types.is_string(field.type) or pa.types.is_large_string(field.type):
            trimmed = pc.utf8_trim_whitespace(table.column(i))
            trimmed = pc.if_else(pc.equal(trimmed, ""), pa.scalar(None, field.type), trimmed)
            table = table.set_column(i, field.name, trimmed)
    return table


def _resolve(raw: pa.Table, source: str) -> str | None:
    """The raw column a source name refers to (exact, then case-insensitive), or None."""
    if source in raw.column_names:
        return source
    folded = [n for n in raw.column_names if n.lower() == source.lower()]
    return folded[0] if len(folded) == 1 else None


def _select(raw: pa.Table, source: str, path: Path) -> pa.ChunkedArray:
    """The values of a source column, picking ``NAME[i]`` from an array column."""
    name = _resolve(raw, source)
    if name is not None:
        return raw.column(name)
    base, index = parse_element(source) or (source, None)
    name = _resolve(raw, base)
    column = raw.column(name)
    if not pa.types.is_fixed_size_list(column.type) and not pa.types.is_list(column.type):
        raise IngestError(f"catalogue {path}: column '{name}' is not an array column, "
                          f"so '{source}' cannot select an element of it")
    width = column.type.list_size if pa.types.is_fixed_size_list(column.type) else None
    if width is not None and index >= width:
        raise IngestError(f"catalogue {path}: '{source}' is out of range; column '{name}' "
                          f"holds {width} values per row")
    return pc.list_element(column, index)


def _missing_sources(raw: pa.Table, sources: Sequence[str]) -> list[str]:
    missing = []
    for source in sources:
        element = parse_element(source)
        if _resolve(raw, source) is None and (
            element is None or _resolve(raw, element[0]) is None
        ):
            missing.append(source)
    return missing


def _identity(values: pa.ChunkedArray, path: Path, column: str) -> np.ndarray:
    """Integer galaxy ids, checked for nulls, non-integers and duplicates."""
    if values.null_count:
        raise IngestError(f"catalogue {path}: id column '{column}' has nulls at "
                          f"{rows_text(pc.is_null(values).to_numpy(zero_copy_only=False))}")
    if not (pa.types.is_integer(values.type) or pa.types.is_floating(values.type)):
        raise IngestError(f"catalogue {path}: id column '{column}' has type {values.type}; "
                          f"galaxy ids must be integers (map a string name to 'name' instead)")
    numbers = values.to_numpy()
    limit = np.iinfo(np.int64).max
    with np.errstate(invalid="ignore"):
        too_large = (numbers > limit) | (numbers < -limit) if numbers.dtype.kind != "i" else \
            np.zeros(len(numbers), bool)
    if too_large.any():
        raise IngestError(f"catalogue {path}: id column '{column}' has values outside the "
                          f"int64 range at {rows_text(too_large)} (e.g. {numbers[too_large][0]})")
    ids = numbers.astype(np.int64)
    if pa.types.is_floating(values.type) and not np.array_equal(ids, numbers):
        raise IngestError(f"catalogue {path}: id column '{column}' has non-integer values at "
                          f"{rows_text(ids != numbers)}")
    unique, counts = np.unique(ids, return_counts=True)
    if (counts > 1).any():
        duplicated = np.isin(ids, unique[counts > 1])
        raise IngestError(f"catalogue {path}: id column '{column}' has duplicate ids "
                          f"{unique[counts > 1][:5].tolist()} at {rows_text(duplicated)}")
    return ids


def _position(values: pa.ChunkedArray, path: Path, column: str) -> np.ndarray:
    """A position column as float64 degrees (range checks by :func:`check_positions`)."""
    if not (pa.types.is_integer(values.type) or pa.types.is_floating(values.type)):
        raise IngestError(f"catalogue {path}: position column '{column}' has type {values.type}, "
                          f"expected numbers in degrees")
    return np.asarray(pc.cast(values, pa.float64()).to_numpy(zero_copy_only=False), np.float64)


def _catalogue_value(values: pa.ChunkedArray, sentinel_abs: float) -> pa.ChunkedArray:
    """Numbers (int, float) -> float64 with sentinels nulled; strings kept; others as read."""
    if pa.types.is_integer(values.type) or pa.types.is_floating(values.type):
        return null_sentinels_arrow(values, sentinel_abs)
    if pa.types.is_large_string(values.type):
        return pc.cast(values, pa.string())
    return values


def _check_log_mass(values: pa.ChunkedArray, path: Path, source: str) -> None:
    """Refuse linear masses (M*/Msun), which the sentinel rule would silently turn to nulls."""
    if not (pa.types.is_integer(values.type) or pa.types.is_floating(values.type)):
        return  # non-numbers are reported by to_galaxies with their rows
    numbers = pc.cast(values, pa.float64()).to_numpy(zero_copy_only=False)
    with np.errstate(invalid="ignore"):
        linear = np.isfinite(numbers) & (numbers >= LINEAR_MASS_MIN)
    if linear.any():
        raise IngestError(f"catalogue {path}: stellar mass column '{source}' has values like "
                          f"{numbers[linear][0]:.3g} at {rows_text(linear)}; stellar_mass must be "
                          f"log10(M*/Msun) in dex (take log10 of linear masses first)")


def read_catalogue(
    path: str | Path,
    *,
    columns: Mapping[str, str] | None = None,
    id_column: str,
    ra_column: str,
    dec_column: str,
    name_column: str | None = None,
    format: str | None = None,
    hdu: int | str | None = None,
    sentinel_abs: float = SENTINEL_ABS,
    sentinel_exempt: Sequence[str] = (),
) -> pa.Table:
    """Read a catalogue file into Arrow with sentinels and NaN as nulls.

    Parameters
    ----------
    path:
        FITS binary table, CSV or Parquet file.
    columns:
        ``{target: source}`` of the catalogue columns to keep, renamed to ``target`` (use the
        contract's names ``redshift``, ``stellar_mass``, ``class``, ``split`` where they apply,
        and the survey's naming convention, e.g. ``mag_r``, for the rest). None keeps every
        column, named in snake_case, array columns expanded to ``<name>_<i>``.
    id_column, ra_column, dec_column:
        Source columns of the integer galaxy id and the ICRS position (deg).
    name_column:
        Optional source column of a human-readable name.
    format:
        ``fits``, ``csv`` or ``parquet``; inferred from the suffix when None.
    hdu:
        FITS only: the table HDU (default: the first table).
    sentinel_abs:
        Numbers with ``|v| >= sentinel_abs`` become nulls.
    sentinel_exempt:
        Target names (``fnmatch`` patterns) whose large values are real and keep only the NaN
        rule: velocities in km/s, fluxes in nanomaggies (``petro_flux_*`` exceeds 9000 for
        galaxies brighter than magnitude 12.6), catalogue numbers.

    Returns
    -------
    Table with ``galaxy_id`` (int64), [``name``], ``ra``, ``dec`` (float64, deg), then the
    catalogue columns: numbers as float64 (nullable), strings as string.

    Raises
    ------
    IngestError
        Unreadable file, missing columns (named, with the available ones listed), null,
        duplicate or non-integer ids, missing or out-of-range positions (rows named).
    """
    path = Path(path)
    file_format = format or infer_format(path)
    raw = _read_raw(path, file_format, hdu)
    if raw.num_rows == 0:
        raise IngestError(f"catalogue {path} has no rows (columns: {raw.column_names})")

    identity = {"galaxy_id": id_column, "ra": ra_column, "dec": dec_column}
    if name_column is not None:
        identity["name"] = name_column
    mapping = dict(columns) if columns is not None else None
    wanted = list(identity.values()) + (list(mapping.values()) if mapping else [])
    missing = _missing_sources(raw, wanted)
    if missing:
        raise IngestError(f"catalogue {path} lacks column(s) {missing}; "
                          f"available: {raw.column_names}")
    if mapping:
        clashes = sorted(set(mapping) & set(identity))
        if clashes:
            raise IngestError(f"catalogue {path}: targets {clashes} are set by id/ra/dec/name "
                              f"arguments and cannot also be in the column mapping")

    out_names = ["galaxy_id"]
    out_arrays = [pa.chunked_array([pa.array(
        _identity(_select(raw, id_column, path), path, id_column), pa.int64())])]
    if name_column is not None:
        out_names.append("name")
        out_arrays.append(pc.cast(_select(raw, name_column, path), pa.string()))
    ra = _position(_select(raw, ra_column, path), path, ra_column)
    dec = _position(_select(raw, dec_column, path), path, dec_column)
    check_positions(ra, dec, f"catalogue {path} (columns '{ra_column}', '{dec_column}')")
    out_names += ["ra", "dec"]
    out_arrays += [pa.chunked_array([pa.array(ra)]), pa.chunked_array([pa.array(dec)])]

    if mapping is None:
        used = {_resolve(raw, s) for s in identity.values()}
        mapping = {}
        for name in raw.column_names:
            if name in used:
                continue
            column_type = raw.schema.field(name).type
            if pa.types.is_fixed_size_list(column_type):
                for i in range(column_type.list_size):
                    mapping[f"{snake_case(name)}_{i}"] = f"{name}[{i}]"
            else:
                mapping[snake_case(name)] = name
    for target, source in mapping.items():
        if target in out_names:
            raise IngestError(f"catalogue {path}: two columns would be named '{target}'; "
                              f"pass an explicit columns= mapping")
        exempt = any(fnmatch.fnmatchcase(target, p) for p in sentinel_exempt)
        values = _select(raw, source, path)
        if target == "stellar_mass":
            _check_log_mass(values, path, source)
        out_names.append(target)
        out_arrays.append(_catalogue_value(values, np.inf if exempt else sentinel_abs))

    table = pa.Table.from_arrays(out_arrays, names=out_names)
    log.info("read catalogue %s: %d rows, %d columns", path, table.num_rows, table.num_columns)
    return table


def _numeric(values: pa.ChunkedArray, name: str) -> pa.ChunkedArray:
    """A numeric column as float64; strings that are not numbers are reported with their rows."""
    if pa.types.is_integer(values.type) or pa.types.is_floating(values.type):
        return pc.cast(values, pa.float64())
    if pa.types.is_null(values.type):
        return pc.cast(values, pa.float64())
    if not (pa.types.is_string(values.type) or pa.types.is_large_string(values.type)):
        raise IngestError(f"column '{name}' has type {values.type}, expected numbers")
    text = values.to_numpy(zero_copy_only=False)
    numbers = np.full(len(text), np.nan)
    bad = np.zeros(len(text), bool)
    for i, item in enumerate(text):
        if item is None or str(item).strip() == "":
            continue
        try:
            numbers[i] = float(item)
        except ValueError:
            bad[i] = True
    if bad.any():
        raise IngestError(f"column '{name}' has values that are not numbers "
                          f"{[str(v) for v in text[bad][:5]]} at {rows_text(bad)}")
    return pa.chunked_array([pa.array(numbers, mask=np.isnan(numbers))])


def _check_unique_ids(galaxy_ids: pa.ChunkedArray | np.ndarray) -> None:
    ids = np.asarray(galaxy_ids.to_numpy() if hasattr(galaxy_ids, "to_numpy") else galaxy_ids)
    unique, counts = np.unique(ids, return_counts=True)
    if (counts > 1).any():
        raise IngestError(f"galaxy_id has duplicate values {unique[counts > 1][:5].tolist()} at "
                          f"{rows_text(np.isin(ids, unique[counts > 1]))}")


def to_galaxies(
    table: pa.Table,
    *,
    survey: str,
    seed: int = DEFAULT_SEED,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    stellar_mass_source: str = "catalogue",
    stratify_by: str | None = "class",
) -> pa.Table:
    """Fill the ``galaxies`` contract from a catalogue table (e.g. from :func:`read_catalogue`).

    Parameters
    ----------
    table:
        Needs ``galaxy_id``, ``ra``, ``dec``; uses ``name``, ``redshift``, ``stellar_mass``
        (log10 M*/Msun, dex), ``stellar_mass_source``, ``class`` and ``split`` when present.
        Every other column is kept after the contract's columns.
    survey:
        Name stored in the ``galpipe.survey`` metadata.
    seed, fractions:
        Used only when the table has no ``split`` column: galaxies with a mass are split
        train/validation/test exactly by ``fractions`` within each ``stratify_by`` group
        (see :mod:`galpipe.ingest.splits`); galaxies without a mass become ``inference``.
    stellar_mass_source:
        Source label for rows with a mass when the table has no ``stellar_mass_source`` column.

    Raises
    ------
    IngestError
        Missing id/position columns, unknown split values, or a galaxy without a mass in
        train/validation/test (rows named).
    """
    missing = [c for c in ("galaxy_id", "ra", "dec") if c not in table.column_names]
    if missing:
        raise IngestError(f"catalogue table lacks {missing}; available: {table.column_names}")
    n_rows = table.num_rows
    core: dict[str, pa.ChunkedArray | np.ndarray] = {
        "galaxy_id": table.column("galaxy_id"),
        "ra": table.column("ra"),
        "dec": table.column("dec"),
    }
    for name in ("name", "class"):
        if name in table.column_names:
            core[name] = pc.cast(table.column(name), pa.string())
    for name in ("redshift", "stellar_mass"):
        if name in table.column_names:
            core[name] = null_sentinels_arrow(_numeric(table.column(name), name))
    _check_unique_ids(core["galaxy_id"])
    for name, (low, high), unit in (("stellar_mass", LOG_MASS_RANGE, " dex (log10 M*/Msun)"),
                                    ("redshift", REDSHIFT_RANGE, "")):
        if name in core:
            values = core[name].to_numpy(zero_copy_only=False).astype(np.float64)
            with np.errstate(invalid="ignore"):
                bad = (values < low) | (values > high)
            if bad.any():
                raise IngestError(
                    f"column '{name}' has values {sorted(set(values[bad].tolist()))[:5]} outside "
                    f"the plausible range [{low}, {high}]{unit} at {rows_text(bad)}; if they "
                    f"mark missing values, replace them by NaN or null")

    has_mass = (core["stellar_mass"].is_valid().to_numpy(zero_copy_only=False)
                if "stellar_mass" in core else np.zeros(n_rows, dtype=bool))
    if "stellar_mass_source" in table.column_names:
        core["stellar_mass_source"] = pc.cast(table.column("stellar_mass_source"), pa.string())
    else:
        core["stellar_mass_source"] = pa.array(
            np.where(has_mass, stellar_mass_source, None).tolist(), pa.string())

    if "split" in table.column_names:
        split = pc.cast(table.column("split"), pa.string()).to_numpy(zero_copy_only=False)
        allowed = set(SPLITS) | {INFERENCE}
        unknown = np.array([s not in allowed for s in split])
        if unknown.any():
            raise IngestError(f"split column has values {sorted(set(split[unknown]), key=str)} "
                              f"outside {sorted(allowed)} at {rows_text(unknown)}")
        labelled_without_mass = (split != INFERENCE) & ~has_mass
        if labelled_without_mass.any():
            raise IngestError("galaxies in train/validation/test need a stellar mass; "
                              f"null mass at {rows_text(labelled_without_mass)}")
        core["split"] = split
    else:
        strata = None
        if stratify_by is not None and stratify_by in table.column_names:
            strata = table.column(stratify_by).to_numpy(zero_copy_only=False)
        core["split"] = assign_split(core["galaxy_id"].to_numpy(), has_mass, seed=seed,
                                     fractions=fractions, strata=strata)

    extra = {name: table.column(name) for name in table.column_names
             if name not in core and name not in _CONTRACT_OPTIONAL}
    return galaxies_table(core, extra, survey=survey)
