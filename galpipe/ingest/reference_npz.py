"""The paper's reference implementation's ``.npz`` pair into ``galaxies`` and ``cutouts``.

The reference code keeps a survey in two NumPy archives:

* a catalogue archive of per-galaxy arrays of equal length N (stellar mass, position, redshift,
  E(B-V), magnitudes and errors, morphology...), plus integer arrays of row indices into them
  naming the training, validation and test galaxies;
* an image archive with one N x H x W array per band (``img_u`` ... ``img_z``, H = W = 64).

Array names differ between versions of those files, so every name is configurable. Galaxy ids
are the row indices (plus ``id_offset``) unless an id array is named. Rows in none of the split
arrays become ``inference``.

Images are streamed: each band's ``.npy`` member is read from the archive a block of rows at a
time, so memory holds one batch, not the N x 5 x 64 x 64 array (33 GB at N = 400,000).
Limitation: Fortran-ordered image arrays cannot be read by rows and are loaded whole.
"""

from __future__ import annotations

import logging
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO

import numpy as np
import pyarrow as pa
from numpy.lib import format as npy_format

from galpipe.ingest.catalogues import to_galaxies
from galpipe.ingest.splits import INFERENCE
from galpipe.ingest.tables import (
    IngestError,
    check_positions,
    cutouts_batch,
    cutouts_schema,
    null_sentinels,
    parse_element,
    snake_case,
)

log = logging.getLogger(__name__)

DEFAULT_ARRAYS: dict[str, str] = {
    "ra": "ra", "dec": "dec", "redshift": "z", "stellar_mass": "mass", "ebv": "ebv",
}
"""Default ``{column: array}`` names of the catalogue archive (only those present are used)."""
DEFAULT_SPLIT_ARRAYS: dict[str, str] = {
    "train": "id_train", "validation": "id_validation", "test": "id_test",
}
DEFAULT_BANDS = ("u", "g", "r", "i", "z")


def _open_npz(path: Path) -> np.lib.npyio.NpzFile:
    if not path.exists():
        raise IngestError(f"npz file {path} does not exist")
    try:
        return np.load(path, allow_pickle=False)
    except Exception as exc:  # zipfile.BadZipFile, ValueError, OSError...
        raise IngestError(f"cannot read npz file {path}: {exc}") from exc


def _array(archive: np.lib.npyio.NpzFile, key: str, path: Path) -> np.ndarray:
    """One array of the archive, ``NAME[i]`` selecting column i of a 2-D array."""
    element = parse_element(key)
    if key in archive.files:
        name, index = key, None
    elif element and element[0] in archive.files:
        name, index = element
    else:
        name = element[0] if element else key
        raise IngestError(f"npz file {path} has no array '{name}'; available: "
                          f"{sorted(archive.files)}")
    try:
        values = archive[name]
    except Exception as exc:
        raise IngestError(f"npz file {path}: cannot read array '{name}': {exc}") from exc
    if values.ndim == 0:
        raise IngestError(f"npz file {path}: array '{name}' is a single value (0-D); expected "
                          f"one value per galaxy")
    if index is None:
        return values
    if values.ndim != 2 or index >= values.shape[1]:
        raise IngestError(f"npz file {path}: '{key}' needs a 2-D array with more than {index} "
                          f"columns; '{name}' has shape {values.shape}")
    return values[:, index]


def _default_mapping(archive: np.lib.npyio.NpzFile, skip: set[str],
                     bands: Sequence[str]) -> dict[str, str]:
    """Default names plus every other array: 1-D as is, (N, k) expanded per band or index."""
    mapping = {target: key for target, key in DEFAULT_ARRAYS.items() if key in archive.files}
    used = set(mapping.values()) | skip
    for key in archive.files:
        if key in used:
            continue
        shape = archive[key].shape
        if len(shape) == 1:
            mapping[snake_case(key)] = key
        elif len(shape) == 2:
            suffixes = list(bands) if shape[1] == len(bands) else [str(j) for j in range(shape[1])]
            for j, suffix in enumerate(suffixes):
                mapping[f"{snake_case(key)}_{suffix}"] = f"{key}[{j}]"
    return mapping


def _split_column(archive: np.lib.npyio.NpzFile, split_arrays: Mapping[str, str],
                  n_rows: int, path: Path) -> np.ndarray:
    """Split labels from the index arrays, checked for type, range and overlaps."""
    split = np.full(n_rows, INFERENCE, dtype=object)
    owner = np.full(n_rows, "", dtype=object)
    for label, key in split_arrays.items():
        rows = _array(archive, key, path)
        if rows.ndim != 1 or not np.issubdtype(rows.dtype, np.integer):
            raise IngestError(f"npz file {path}: split array '{key}' must be 1-D integers (row "
                              f"indices), got dtype {rows.dtype} shape {rows.shape}")
        outside = (rows < 0) | (rows >= n_rows)
        if outside.any():
            raise IngestError(f"npz file {path}: split array '{key}' has row indices "
                              f"{rows[outside][:5].tolist()} outside [0, {n_rows - 1}]")
        unique, counts = np.unique(rows, return_counts=True)
        if (counts > 1).any():
            raise IngestError(f"npz file {path}: split array '{key}' repeats row indices "
                              f"{unique[counts > 1][:5].tolist()}")
        taken = owner[rows] != ""
        if taken.any():
            other = owner[rows[taken][0]]
            raise IngestError(f"npz file {path}: split arrays '{other}' and '{key}' share row "
                              f"indices {rows[taken][:5].tolist()}")
        owner[rows] = key
        split[rows] = label
    return split


def read_reference_catalogue(
    path: str | Path,
    *,
    arrays: Mapping[str, str] | None = None,
    split_arrays: Mapping[str, str] = DEFAULT_SPLIT_ARRAYS,
    id_array: str | None = None,
    id_offset: int = 0,
    bands: Sequence[str] = DEFAULT_BANDS,
    survey: str = "reference",
) -> pa.Table:
    """The ``galaxies`` table of a reference catalogue archive.

    Parameters
    ----------
    path:
        The catalogue ``.npz``.
    arrays:
        ``{column: array}``; must include ``ra`` and ``dec``; ``stellar_mass`` (dex),
        ``redshift``, ``class`` are used as the contract's columns, the rest follow them.
        ``NAME[i]`` takes column i of a 2-D array. None: :data:`DEFAULT_ARRAYS` (those present)
        plus every other array, 2-D ones expanded to ``<name>_<band>`` when they have one
        column per band.
    split_arrays:
        ``{split: array of row indices}`` for train, validation and test.
    id_array, id_offset:
        Galaxy ids from this integer array, else row index + ``id_offset``.

    Raises
    ------
    IngestError
        Unreadable file, missing arrays (available ones listed), arrays of other lengths
        (named with their lengths), split indices out of range, repeated or shared between
        splits, a galaxy in a split without a mass, bad positions.
    """
    path = Path(path)
    archive = _open_npz(path)
    with archive:
        skip = set(split_arrays.values()) | ({id_array} if id_array else set())
        mapping = dict(arrays) if arrays is not None else _default_mapping(archive, skip, bands)
        missing = [c for c in ("ra", "dec") if c not in mapping]
        if missing:
            raise IngestError(f"npz file {path}: the array mapping needs {missing} "
                              f"(available arrays: {sorted(archive.files)})")
        values = {target: _array(archive, key, path) for target, key in mapping.items()}
        n_rows = len(values["ra"])
        lengths = {mapping[t]: len(v) for t, v in values.items()}
        for target in ("ra", "dec"):
            if values[target].dtype.kind not in "iuf":
                raise IngestError(f"npz file {path}: array '{mapping[target]}' ({target}) has "
                                  f"dtype {values[target].dtype}, expected numbers in degrees")
        if id_array is not None:
            galaxy_ids = _array(archive, id_array, path)
            if galaxy_ids.dtype.kind not in "iu":
                raise IngestError(f"npz file {path}: id array '{id_array}' has dtype "
                                  f"{galaxy_ids.dtype}, expected integers")
            lengths[id_array] = len(galaxy_ids)
        else:
            galaxy_ids = np.arange(n_rows, dtype=np.int64) + id_offset
        if len(set(lengths.values())) > 1:
            raise IngestError(f"npz file {path}: arrays have different lengths: {lengths}")
        split = _split_column(archive, split_arrays, n_rows, path)

    check_positions(values["ra"], values["dec"], f"npz file {path}")
    columns: dict[str, pa.Array] = {"galaxy_id": pa.array(np.asarray(galaxy_ids, np.int64))}
    for target, value in values.items():
        if value.ndim != 1:
            raise IngestError(f"npz file {path}: array '{mapping[target]}' has shape "
                              f"{value.shape}; map '{target}' to one column, e.g. "
                              f"'{mapping[target]}[0]'")
        if value.dtype.kind in "iuf" and target not in ("class", "name"):
            columns[target] = null_sentinels(value)
        else:
            columns[target] = pa.array(value.astype(str))
    columns["split"] = pa.array(split.tolist(), pa.string())
    try:
        return to_galaxies(pa.table(columns), survey=survey, stellar_mass_source="reference")
    except IngestError as exc:
        raise IngestError(f"npz file {path}: {exc}") from exc


class _RowReader:
    """Reads a 3-D ``.npy`` member of a zip archive a block of rows at a time."""

    def __init__(self, archive: zipfile.ZipFile, member: str, source: str):
        self.source = source
        self.handle: IO[bytes] = archive.open(member)
        version = npy_format.read_magic(self.handle)
        reader = (npy_format.read_array_header_1_0 if version == (1, 0)
                  else npy_format.read_array_header_2_0)
        self.shape, fortran_order, self.dtype = reader(self.handle)
        if self.dtype.hasobject:
            raise IngestError(f"{source} holds Python objects, expected numbers")
        self.whole = None
        if fortran_order:
            log.warning("%s is Fortran-ordered: loading it whole", source)
            self.whole = np.load(archive.open(member))
        self.row_bytes = int(np.prod(self.shape[1:])) * self.dtype.itemsize
        self.position = 0

    def read(self, n_rows: int) -> np.ndarray:
        if self.whole is not None:
            block = self.whole[self.position:self.position + n_rows]
        else:
            data = self.handle.read(n_rows * self.row_bytes)
            if len(data) != n_rows * self.row_bytes:
                raise IngestError(f"{self.source} ends early at row {self.position}")
            block = np.frombuffer(data, dtype=self.dtype).reshape((n_rows,) + self.shape[1:])
        self.position += n_rows
        return block


def reference_cutout_batches(
    path: str | Path,
    n_rows: int,
    *,
    galaxy_ids: np.ndarray | None = None,
    bands: Sequence[str] = DEFAULT_BANDS,
    image_key: str = "img_{band}",
    batch_size: int = 1024,
) -> Iterator[pa.RecordBatch]:
    """Stream ``cutouts`` batches (flux, float32, bands in order) from a reference image archive.

    Parameters
    ----------
    path:
        The image ``.npz`` with one (n_rows, H, W) array per band named ``image_key``.
    n_rows:
        Number of galaxies of the catalogue archive; every band array must have as many rows.
    galaxy_ids:
        Ids of the rows (default 0..n_rows-1), e.g. ``galaxies["galaxy_id"]``.

    The archive is checked (members, shapes) before this returns, so errors surface at once.
    """
    path = Path(path)
    if not path.exists():
        raise IngestError(f"npz file {path} does not exist")
    galaxy_ids = (np.arange(n_rows, dtype=np.int64) if galaxy_ids is None
                  else np.asarray(galaxy_ids, dtype=np.int64))
    if len(galaxy_ids) != n_rows:
        raise ValueError(f"{len(galaxy_ids)} galaxy ids for {n_rows} rows")
    try:
        archive = zipfile.ZipFile(path)
        available = sorted(m.removesuffix(".npy") for m in archive.namelist())
    except Exception as exc:
        raise IngestError(f"cannot read npz file {path}: {exc}") from exc
    keys = [image_key.format(band=band) for band in bands]
    missing = [k for k in keys if k not in available]
    if missing:
        archive.close()
        raise IngestError(f"npz file {path} lacks image array(s) {missing}; "
                          f"available: {available}")
    try:
        readers = [_RowReader(archive, f"{k}.npy", f"npz file {path}, array '{k}'") for k in keys]
    except IngestError:
        archive.close()
        raise
    except Exception as exc:
        archive.close()
        raise IngestError(f"cannot read image arrays of npz file {path}: {exc}") from exc
    shapes = {k: r.shape for k, r in zip(keys, readers)}
    bad = {k: s for k, s in shapes.items() if len(s) != 3 or s[0] != n_rows}
    if bad or len({s[1:] for s in shapes.values()}) != 1:
        archive.close()
        raise IngestError(f"npz file {path}: image arrays must all have shape ({n_rows}, H, W) "
                          f"for the {n_rows} catalogue rows; got {shapes}")
    _, height, width = shapes[keys[0]]
    schema = cutouts_schema(bands, height, width, "flux")
    return _reference_batches(archive, readers, galaxy_ids, schema, batch_size)


def _reference_batches(archive: zipfile.ZipFile, readers: list[_RowReader],
                       galaxy_ids: np.ndarray, schema: pa.Schema,
                       batch_size: int) -> Iterator[pa.RecordBatch]:
    with archive:
        for start in range(0, len(galaxy_ids), batch_size):
            ids = galaxy_ids[start:start + batch_size]
            images = np.stack([r.read(len(ids)) for r in readers], axis=1)
            try:
                batch = cutouts_batch(ids, images, schema)
            except IngestError as exc:
                raise IngestError(f"npz file {archive.filename}, rows from {start}: {exc}") \
                    from exc
            yield batch


def read_reference_npz(
    catalogue_path: str | Path,
    images_path: str | Path,
    *,
    arrays: Mapping[str, str] | None = None,
    split_arrays: Mapping[str, str] = DEFAULT_SPLIT_ARRAYS,
    id_array: str | None = None,
    id_offset: int = 0,
    bands: Sequence[str] = DEFAULT_BANDS,
    image_key: str = "img_{band}",
    survey: str = "reference",
    batch_size: int = 1024,
) -> tuple[pa.Table, Iterator[pa.RecordBatch]]:
    """Both tables of a reference ``.npz`` pair: (galaxies, stream of cutouts batches).

    See :func:`read_reference_catalogue` and :func:`reference_cutout_batches` for the
    parameters and the errors; both files are checked before this returns.
    """
    galaxies = read_reference_catalogue(
        catalogue_path, arrays=arrays, split_arrays=split_arrays, id_array=id_array,
        id_offset=id_offset, bands=bands, survey=survey,
    )
    batches = reference_cutout_batches(
        images_path, galaxies.num_rows, galaxy_ids=galaxies.column("galaxy_id").to_numpy(),
        bands=bands, image_key=image_key, batch_size=batch_size,
    )
    return galaxies, batches
