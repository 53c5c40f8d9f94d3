"""Building blocks shared by every reader: contract-shaped galaxies tables and cutout batches.

Every source (catalogue files, FITS cutouts, the reference ``.npz`` pair, the bundled sample and
the mock) ends in the same two tables, whose columns are declared in ``schemas/galaxies.yaml``
and ``schemas/cutouts.yaml``. The helpers here are the only place that turns numpy arrays into
those Arrow layouts, so the readers cannot drift apart.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from galpipe.contracts import load_contract, validate

PIXEL_TYPES: dict[str, pa.DataType] = {"flux": pa.float32(), "colour_uint8": pa.uint8()}
SENTINEL_ABS = 9000.0
"""Catalogue values with ``|v| >= SENTINEL_ABS`` are missing-value markers (-9999, 99999...)."""

BANDS_KEY = b"galpipe.bands"
SHAPE_KEY = b"galpipe.image_shape"
PIXEL_KIND_KEY = b"galpipe.pixel_kind"
SURVEY_KEY = b"galpipe.survey"
MOCK_KEY = b"galpipe.mock"


class IngestError(ValueError):
    """An input cannot be ingested; the message names the file, column, array or rows."""


def snake_case(name: str) -> str:
    """A catalogue column name as lower snake_case (``B-Mag`` -> ``b_mag``, ``petroR50`` ->
    ``petro_r50``)."""
    name = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", name.strip())
    name = re.sub(r"[^0-9a-zA-Z]+", "_", name).strip("_").lower()
    return name or "column"


_ELEMENT = re.compile(r"^(?P<base>.+)\[(?P<index>\d+)\]$")


def parse_element(source: str) -> tuple[str, int] | None:
    """``("PETROMAG", 2)`` for a source written ``PETROMAG[2]`` (one element of an array
    column), else None."""
    match = _ELEMENT.match(source)
    return (match["base"], int(match["index"])) if match else None


def rows_text(mask: np.ndarray, limit: int = 5) -> str:
    """The first rows where ``mask`` is true, for an error message (``row(s) 3, 7 and 2 more``)."""
    rows = np.flatnonzero(mask)
    more = f" and {len(rows) - limit} more" if len(rows) > limit else ""
    return f"row(s) {', '.join(str(r) for r in rows[:limit])}{more}"


def check_positions(ra: np.ndarray, dec: np.ndarray, source: str) -> None:
    """Raise ``IngestError`` naming ``source`` and the rows where RA/Dec (deg) are missing or
    outside [0, 360] x [-90, 90]."""
    for name, values, low, high in (("ra", ra, 0.0, 360.0), ("dec", dec, -90.0, 90.0)):
        values = np.asarray(values, dtype=np.float64)
        with np.errstate(invalid="ignore"):
            bad = ~np.isfinite(values) | (values < low) | (values > high)
        if bad.any():
            raise IngestError(f"{source}: {name} has missing or out-of-range values (expected "
                              f"[{low}, {high}] deg) at {rows_text(bad)}")


def null_sentinels(values: np.ndarray, sentinel_abs: float = SENTINEL_ABS) -> pa.Array:
    """A float64 Arrow array with NaN, +-inf and ``|v| >= sentinel_abs`` turned into nulls."""
    values = np.asarray(values, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        missing = ~np.isfinite(values) | (np.abs(values) >= sentinel_abs)
    return pa.array(values, type=pa.float64(), mask=missing)


def null_sentinels_arrow(array: pa.Array | pa.ChunkedArray,
                         sentinel_abs: float = SENTINEL_ABS) -> pa.ChunkedArray:
    """Like :func:`null_sentinels` for an Arrow numeric column (existing nulls stay null)."""
    values = pc.cast(array, pa.float64())
    bad = pc.or_(pc.is_nan(values), pc.greater_equal(pc.abs(values), sentinel_abs))
    bad = pc.fill_null(bad, False)
    result = pc.if_else(bad, pa.scalar(None, pa.float64()), values)
    return result if isinstance(result, pa.ChunkedArray) else pa.chunked_array([result])


def galaxies_table(
    core: Mapping[str, Any],
    extra: Mapping[str, Any] | None = None,
    *,
    survey: str,
    mock: bool = False,
    metadata: Mapping[bytes, bytes] | None = None,
) -> pa.Table:
    """Assemble and validate a ``galaxies`` table.

    Parameters
    ----------
    core:
        Values of the contract's columns (``galaxy_id``, ``ra``, ``dec``, ``split`` required;
        the nullable ones may be absent, then they are all null). Arrays or Arrow arrays.
    extra:
        Further catalogue columns, appended after the contract's columns in the given order.
    survey:
        Survey name stored under the ``galpipe.survey`` metadata key.
    mock:
        Stored under ``galpipe.mock`` (``b"true"``/``b"false"``).

    Returns
    -------
    A table that satisfies ``schemas/galaxies.yaml``.
    """
    contract = load_contract("galaxies")
    unknown = sorted(set(core) - set(contract.column_names))
    if unknown:
        raise ValueError(f"not columns of the galaxies contract: {unknown}")
    n_rows = len(core["galaxy_id"])
    arrays, fields = [], []
    for column in contract.columns:
        value = core.get(column.name)
        if value is None:
            if not column.nullable:
                raise ValueError(f"galaxies column '{column.name}' is required")
            array = pa.nulls(n_rows, type=column.arrow_type())
        else:
            array = _to_arrow(value, column.arrow_type())
        arrays.append(array)
        fields.append(pa.field(column.name, array.type, nullable=column.nullable))
    for name, value in (extra or {}).items():
        if name in contract.column_names:
            raise ValueError(f"extra column '{name}' clashes with a contract column")
        array = _to_arrow(value, None)
        arrays.append(array)
        fields.append(pa.field(name, array.type, nullable=True))

    schema_metadata = {SURVEY_KEY: survey.encode(), MOCK_KEY: b"true" if mock else b"false"}
    schema_metadata.update(metadata or {})
    table = pa.Table.from_arrays(arrays, schema=pa.schema(fields, metadata=schema_metadata))
    return validate(table, contract)


def _to_arrow(value: Any, arrow_type: pa.DataType | None) -> pa.Array | pa.ChunkedArray:
    """An Arrow array from numpy/Arrow/list input, cast to ``arrow_type`` when given."""
    if isinstance(value, (pa.Array, pa.ChunkedArray)):
        array = value
    else:
        array = pa.array(np.asarray(value) if not isinstance(value, list) else value)
    if arrow_type is not None and array.type != arrow_type:
        array = array.cast(arrow_type)
    return array


def cutouts_schema(
    bands: Sequence[str],
    height: int,
    width: int,
    pixel_kind: str,
    metadata: Mapping[bytes, bytes] | None = None,
) -> pa.Schema:
    """The Arrow schema of a cutouts table with its required metadata.

    ``image`` is a fixed-size list of C*H*W values in (band, y, x) order, float32 for
    ``pixel_kind="flux"`` and uint8 for ``"colour_uint8"``.
    """
    if pixel_kind not in PIXEL_TYPES:
        raise ValueError(f"pixel_kind must be one of {sorted(PIXEL_TYPES)}, got '{pixel_kind}'")
    bands = list(bands)
    if not bands or any("," in b or not b for b in bands):
        raise ValueError(f"bands must be non-empty names without commas, got {bands}")
    size = len(bands) * height * width
    schema_metadata = {
        BANDS_KEY: ",".join(bands).encode(),
        SHAPE_KEY: f"{len(bands)},{height},{width}".encode(),
        PIXEL_KIND_KEY: pixel_kind.encode(),
    }
    schema_metadata.update(metadata or {})
    return pa.schema(
        [
            pa.field("galaxy_id", pa.int64(), nullable=False),
            # "element" is the child name a Parquet round trip gives, so written and
            # re-read schemas compare equal.
            pa.field("image", pa.list_(pa.field("element", PIXEL_TYPES[pixel_kind]), size),
                     nullable=False),
        ],
        metadata=schema_metadata,
    )


def cutouts_batch(galaxy_ids: np.ndarray, images: np.ndarray, schema: pa.Schema) -> pa.RecordBatch:
    """A cutouts record batch from ids (N,) and images (N, C, H, W) matching ``schema``.

    The images are cast to the schema's pixel type (float32 or uint8) and flattened row-major,
    so each row holds its pixels in (band, y, x) order.
    """
    shape = image_shape(schema)
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[1:] != shape:
        raise ValueError(f"images must have shape (N, {', '.join(map(str, shape))}), "
                         f"got {images.shape}")
    galaxy_ids = np.asarray(galaxy_ids, dtype=np.int64)
    if galaxy_ids.shape != (images.shape[0],):
        raise ValueError(f"{len(galaxy_ids)} galaxy ids for {images.shape[0]} images")
    pixel_type = schema.field("image").type.value_type
    if pa.types.is_floating(pixel_type):
        with np.errstate(over="ignore", invalid="ignore"):
            finite = np.isfinite(images.astype(pixel_type.to_pandas_dtype(), copy=False))
        bad = ~finite.reshape(len(images), -1).all(axis=1)
        if bad.any():
            raise IngestError(f"NaN or infinite pixels (or values beyond float32) in the images "
                              f"of galaxy_id {galaxy_ids[bad][:5].tolist()} ({rows_text(bad)} of "
                              f"this batch); mask or fill them before ingesting")
    flat = np.ascontiguousarray(images, dtype=pixel_type.to_pandas_dtype()).reshape(-1)
    image = pa.FixedSizeListArray.from_arrays(pa.array(flat, type=pixel_type), int(np.prod(shape)))
    return pa.RecordBatch.from_arrays([pa.array(galaxy_ids, pa.int64()), image], schema=schema)


def image_shape(schema: pa.Schema) -> tuple[int, int, int]:
    """(C, H, W) read from a cutouts schema's ``galpipe.image_shape`` metadata."""
    raw = (schema.metadata or {}).get(SHAPE_KEY)
    if raw is None:
        raise ValueError("cutouts schema has no 'galpipe.image_shape' metadata")
    channels, height, width = (int(v) for v in raw.decode().split(","))
    return channels, height, width


def cutout_images(cutouts: pa.Table | pa.RecordBatch) -> np.ndarray:
    """Pixels of a cutouts table as an array of shape (N, C, H, W) (float32 or uint8)."""
    shape = image_shape(cutouts.schema)
    column = cutouts.column("image")
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    values = column.flatten().to_numpy(zero_copy_only=False)
    return values.reshape((len(cutouts),) + shape)
