"""Streaming input pipeline: galaxies (and cutouts) Parquet tables to preprocessed model batches.

The pipeline reads the committed ``galaxies`` and ``cutouts`` outputs of a :class:`Storage` with
Ray Data, keeps the columns a :class:`FeatureSet` needs, selects splits, attaches each cutout to
its galaxy's catalogue row, and preprocesses blocks in ``map_batches`` with the kernels of
:mod:`galpipe.data.preprocess`. Every output batch holds:

* ``galaxy_id`` int64 (N,)
* ``image`` float32 (N, C, H, W), image feature sets only (bands in the feature set's order)
* ``features`` float32 (N, F): the standardised catalogue inputs (columns, errors, extra) in the
  feature set's order, then missing-value indicators when enabled
* ``bin`` int64 (N,): stellar-mass bin (:meth:`MassBins.index`), -1 where the mass is null
* ``stellar_mass`` float64 (N,): log10(M*/Msun) in dex, NaN where null
* ``split`` string (N,): the galaxy's split, passed through for inference tables (the trainer
  drops it: only numeric columns become tensors)

Statistics (catalogue means and standard deviations, flux clip floors) come from the training
split in one streamed pass of Ray Data aggregations (:func:`fit_preprocessor`); they travel with
the model as :meth:`Preprocessor.to_dict`.

Attaching cutouts to galaxies. ``join="broadcast"`` (default) streams the cutouts and looks each
batch up in an index of the selected catalogue rows held by a few Ray actors: the catalogue
columns a model reads are tiny next to the images (tens of bytes against kilobytes per galaxy).
``join="shuffle"`` uses :meth:`ray.data.Dataset.join`, which hash-shuffles both tables through
aggregator actors. Both give the same rows (tested). Measured on 2 busy cores with 3,000 64x64
cutouts, the shuffle join cost about 10 s per execution whatever the row count (actor start-up
and shuffle), and training re-executes the pipeline every epoch; the broadcast lookup costs a
plain read. Limitation: the broadcast index holds every selected galaxy's catalogue inputs in
each lookup actor (about 8 bytes per value, 0.2 GB for 10^7 galaxies and 3 columns); beyond
that use ``join="shuffle"``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from galpipe.bins import MassBins
from galpipe.contracts import load_contract
from galpipe.data.preprocess import (
    CatalogueScaling,
    augment_batch,
    flux_clip_percentiles,
    normalise_flux,
    scale_colour_uint8,
    sign_log_stretch,
)
from galpipe.features import FeatureSet
from galpipe.storage import Storage

log = logging.getLogger(__name__)

PIXEL_KINDS = ("flux", "colour_uint8")
JOIN_STRATEGIES = ("broadcast", "shuffle")
# Cutouts metadata keys as declared in schemas/cutouts.yaml (galpipe.ingest writes them; not
# imported from there because galpipe.ingest pulls astropy into every Ray worker).
_BANDS_KEY, _SHAPE_KEY, _PIXEL_KIND_KEY = b"galpipe.bands", b"galpipe.image_shape", \
    b"galpipe.pixel_kind"
if not {k.decode() for k in (_BANDS_KEY, _SHAPE_KEY, _PIXEL_KIND_KEY)} <= set(
        load_contract("cutouts").metadata_keys):
    raise RuntimeError("schemas/cutouts.yaml no longer declares the metadata keys "
                       "galpipe.data.pipeline reads")
_ID, _MASS, _SPLIT, _IMAGE = "galaxy_id", "stellar_mass", "split", "image"


# Image source ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class ImageSource:
    """What a cutouts table holds: band names, image shape (C, H, W) and pixel kind."""

    bands: tuple[str, ...]
    shape: tuple[int, int, int]
    pixel_kind: str

    def to_dict(self) -> dict[str, Any]:
        return {"bands": list(self.bands), "shape": list(self.shape),
                "pixel_kind": self.pixel_kind}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ImageSource":
        return cls(tuple(data["bands"]), tuple(int(v) for v in data["shape"]),
                   str(data["pixel_kind"]))


def image_source(storage: Storage, cutouts_key: str) -> ImageSource:
    """Read the band names, shape and pixel kind of a committed cutouts output."""
    ref = storage.table("cutouts", cutouts_key)
    metadata = pq.read_schema(ref.files[0], filesystem=storage.fs).metadata or {}
    missing = [k.decode() for k in (_BANDS_KEY, _SHAPE_KEY, _PIXEL_KIND_KEY) if k not in metadata]
    if missing:
        raise ValueError(f"cutouts output '{cutouts_key}' under {storage.uri} lacks schema "
                         f"metadata {missing}")
    bands = tuple(metadata[_BANDS_KEY].decode().split(","))
    shape = tuple(int(v) for v in metadata[_SHAPE_KEY].decode().split(","))
    pixel_kind = metadata[_PIXEL_KIND_KEY].decode()
    if pixel_kind not in PIXEL_KINDS:
        raise ValueError(f"cutouts output '{cutouts_key}': unknown pixel kind '{pixel_kind}' "
                         f"(expected one of {PIXEL_KINDS})")
    if len(shape) != 3 or shape[0] != len(bands):
        raise ValueError(f"cutouts output '{cutouts_key}': image shape {shape} does not match "
                         f"bands {bands}")
    return ImageSource(bands, shape, pixel_kind)


def _read(storage: Storage, files: Sequence[str], columns: Sequence[str],
          num_cpus: float) -> "ray.data.Dataset":  # noqa: F821
    """A Ray dataset of some columns of Parquet files of ``storage`` (projection pushed down)."""
    import ray

    dataset = ray.data.read_parquet(list(files), filesystem=storage.fs, num_cpus=num_cpus)
    return dataset.select_columns(list(dict.fromkeys(columns)))


def _galaxies_columns(storage: Storage, galaxies_key: str) -> list[str]:
    ref = storage.table("galaxies", galaxies_key)
    return pq.read_schema(ref.files[0], filesystem=storage.fs).names


def check_inputs(storage: Storage, galaxies_key: str, cutouts_key: str | None,
                 feature_set: FeatureSet) -> ImageSource | None:
    """Raise ValueError when the tables lack a column or band the feature set needs.

    Returns the cutouts' :class:`ImageSource` for image feature sets, None otherwise. Reads only
    schemas, so a wrong feature set fails before any data is read.
    """
    source = None
    if feature_set.bands:
        if cutouts_key is None:
            raise ValueError(f"feature set '{feature_set.name}' uses image bands "
                             f"{list(feature_set.bands)} but no cutouts output was given")
        source = image_source(storage, cutouts_key)
    columns = _galaxies_columns(storage, galaxies_key)
    feature_set.check_available(columns, source.bands if source else None)
    for needed in (_ID, _MASS, _SPLIT):
        if needed not in columns:
            raise ValueError(f"galaxies output '{galaxies_key}' has no '{needed}' column")
    if source and feature_set.flux_normalise and source.pixel_kind != "flux":
        raise ValueError(f"feature set '{feature_set.name}' asks for flux normalisation, which "
                         f"needs calibrated flux cutouts; cutouts '{cutouts_key}' hold "
                         f"'{source.pixel_kind}' pixels")
    return source


# Preprocessor ----------------------------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class Preprocessor:
    """Fitted preprocessing of one feature set: image conversion and catalogue scaling.

    Parameters
    ----------
    feature_set:
        The model input this preprocessor serves.
    catalogue:
        Null handling and standardisation of ``feature_set.catalogue_inputs`` (None when the set
        has no catalogue inputs).
    image:
        The cutouts' bands, shape and pixel kind (None for catalogue feature sets).
    flux_floor:
        (C,) lower clip of each band's flux column, in the flux columns' units (flux-normalised
        sets only), from ``flux_percentiles`` of the training split.
    flux_percentiles:
        (C,) clip percentile per band (paper: 2 for u, 0.1 for g..z).
    n_train:
        Training galaxies the statistics were computed from.
    """

    feature_set: FeatureSet
    catalogue: CatalogueScaling | None
    image: ImageSource | None = None
    flux_floor: np.ndarray | None = None
    flux_percentiles: np.ndarray | None = None
    n_train: int = 0

    @property
    def n_features(self) -> int:
        """Width F of the ``features`` output."""
        return self.catalogue.n_outputs if self.catalogue is not None else 0

    @property
    def n_main_features(self) -> int:
        """Leading features that are a catalogue model's main input (columns and errors); the
        rest (extra inputs, missing indicators) are additional inputs. 0 for image sets."""
        if self.feature_set.bands:
            return 0
        main = len(self.feature_set.columns) + len(self.feature_set.errors)
        return main if main else self.n_features

    @property
    def image_shape(self) -> tuple[int, int, int] | None:
        """(C, H, W) of the output images (the feature set's bands only)."""
        if self.image is None:
            return None
        return (len(self.feature_set.bands),) + tuple(self.image.shape[1:])

    @property
    def input_columns(self) -> tuple[str, ...]:
        """galaxies columns :meth:`transform` reads besides galaxy_id and stellar_mass."""
        return self.feature_set.required_columns

    def band_index(self) -> np.ndarray:
        """Positions of the feature set's bands among the cutouts' bands."""
        return np.array([self.image.bands.index(b) for b in self.feature_set.bands])

    def transform(self, batch: Mapping[str, np.ndarray], training: bool,
                  rng: np.random.Generator | None = None) -> dict[str, np.ndarray]:
        """Preprocess one batch of galaxies.

        Parameters
        ----------
        batch:
            ``galaxy_id`` (N,), ``stellar_mass`` (N,) dex with NaN for null, every column of
            :attr:`input_columns` as (N,) floats with NaN for null, and for image sets ``image``
            (N, C_all, H, W) raw pixels in the cutouts' band order (uint8 or float32).
        training:
            Apply a random rotation by a multiple of 90 degrees and a random flip to each image
            (drawn from ``rng``). Never at validation or inference.
        rng:
            Generator for the augmentation; required when ``training`` and the set has images.

        Returns
        -------
        ``galaxy_id`` int64 (N,), ``image`` float32 (N, C, H, W) for image sets, ``features``
        float32 (N, F), ``stellar_mass`` float64 (N,).
        """
        fs = self.feature_set
        n = len(batch[_ID])
        out: dict[str, np.ndarray] = {_ID: np.asarray(batch[_ID], dtype=np.int64)}
        if self.image is not None:
            raw = np.asarray(batch[_IMAGE])
            if raw.ndim != 4 or raw.shape[1:] != tuple(self.image.shape):
                raise ValueError(f"images must have shape (N, {self.image.shape}) as "
                                 f"(N, C, H, W), got {raw.shape}")
            selected = raw[:, self.band_index()]
            if self.image.pixel_kind == "colour_uint8":
                images = scale_colour_uint8(selected)
            else:
                if fs.flux_normalise:
                    flux = np.stack([_as_float(batch[c]) for c in fs.flux_columns], axis=1)
                    selected = normalise_flux(selected, flux, self.flux_floor)
                images = sign_log_stretch(selected)
            if training:
                if rng is None:
                    raise ValueError("training augmentation needs a random generator (rng)")
                images = augment_batch(images, rng)
            out[_IMAGE] = np.ascontiguousarray(images, dtype=np.float32)
        if self.catalogue is not None:
            values = np.stack([_as_float(batch[c]) for c in fs.catalogue_inputs], axis=1)
            out["features"] = self.catalogue.transform(values.reshape(n, -1))
        else:
            out["features"] = np.zeros((n, 0), dtype=np.float32)
        out[_MASS] = _as_float(batch[_MASS])
        if _SPLIT in batch:
            out[_SPLIT] = np.asarray(batch[_SPLIT], dtype=object)
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (stored with checkpoints and the model artifact)."""
        return {
            "feature_set": self.feature_set.to_dict(),
            "catalogue": self.catalogue.to_dict() if self.catalogue is not None else None,
            "image": self.image.to_dict() if self.image is not None else None,
            "flux_floor": None if self.flux_floor is None else [float(v) for v in
                                                                 self.flux_floor],
            "flux_percentiles": None if self.flux_percentiles is None else
            [float(v) for v in self.flux_percentiles],
            "n_train": int(self.n_train),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Preprocessor":
        """Inverse of :meth:`to_dict`."""
        def array(key: str) -> np.ndarray | None:
            return None if data.get(key) is None else np.asarray(data[key], dtype=np.float64)

        return cls(
            feature_set=FeatureSet.from_dict(data["feature_set"]),
            catalogue=None if data.get("catalogue") is None
            else CatalogueScaling.from_dict(data["catalogue"]),
            image=None if data.get("image") is None else ImageSource.from_dict(data["image"]),
            flux_floor=array("flux_floor"),
            flux_percentiles=array("flux_percentiles"),
            n_train=int(data.get("n_train", 0)),
        )


def _as_float(values: Any) -> np.ndarray:
    """A numeric column as float64 with NaN for nulls."""
    if isinstance(values, (pa.Array, pa.ChunkedArray)):
        values = pc.cast(values, pa.float64()).to_numpy(zero_copy_only=False)
    return np.asarray(values, dtype=np.float64)


# Row selection (pyarrow, shared by every path) --------------------------------------------------

def _select_rows(table: pa.Table, splits: Sequence[str] | None, require_mass: bool,
                 required_non_null: Sequence[str] = ()) -> pa.Table:
    """Rows in ``splits`` (all when None), with a finite mass when ``require_mass``, and with
    every column of ``required_non_null`` (flux columns of flux-normalised sets) present."""
    keep = pa.array(np.ones(table.num_rows, dtype=bool))
    if splits is not None:
        keep = pc.and_(keep, pc.fill_null(pc.is_in(table[_SPLIT],
                                                   value_set=pa.array(list(splits))), False))
    if require_mass:
        mass = _as_float(table[_MASS])
        keep = pc.and_(keep, pa.array(np.isfinite(mass)))
    for column in required_non_null:
        keep = pc.and_(keep, pa.array(np.isfinite(_as_float(table[column]))))
    return table.filter(keep)


def _catalogue_batch(table: pa.Table, columns: Iterable[str]) -> dict[str, np.ndarray]:
    """galaxy_id, stellar_mass and catalogue columns of an Arrow table as numpy (NaN = null)."""
    batch = {_ID: table[_ID].to_numpy(zero_copy_only=False).astype(np.int64),
             _MASS: _as_float(table[_MASS])}
    if _SPLIT in table.column_names:
        batch[_SPLIT] = np.asarray(table[_SPLIT].to_pylist(), dtype=object)
    for column in columns:
        batch[column] = _as_float(table[column])
    return batch


def _images(column: pa.ChunkedArray | pa.Array, shape: Sequence[int]) -> np.ndarray:
    """A fixed-size-list image column as an (N, C, H, W) array (no copy when possible)."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    values = column.flatten().to_numpy(zero_copy_only=False)
    return values.reshape((len(column),) + tuple(shape))


def _finish(out: dict[str, np.ndarray], bins: MassBins) -> dict[str, np.ndarray]:
    """Add the mass bin and order the output columns."""
    ordered = {_ID: out[_ID]}
    if _IMAGE in out:
        ordered[_IMAGE] = out[_IMAGE]
    ordered["features"] = out["features"]
    ordered["bin"] = bins.index(out[_MASS]).astype(np.int64)
    ordered[_MASS] = out[_MASS]
    if _SPLIT in out:
        # A numeric code: string columns cannot travel through iter_torch_batches.
        ordered["split_code"] = split_codes(out[_SPLIT])
    return ordered


SPLITS = ("train", "validation", "test", "inference")


def split_codes(splits: np.ndarray) -> np.ndarray:
    """int8 code of each split name (index into :data:`SPLITS`; -1 for anything else)."""
    codes = np.full(len(splits), -1, dtype=np.int8)
    for code, name in enumerate(SPLITS):
        codes[np.asarray(splits) == name] = code
    return codes


def _batch_rng(seed: int, nonce: int, call: int,
               galaxy_ids: np.ndarray) -> np.random.Generator:
    """The augmentation generator of one batch (see :func:`galaxy_dataset` on seeding)."""
    first = int(galaxy_ids[0]) & 0xFFFFFFFFFFFF if len(galaxy_ids) else 0
    return np.random.default_rng([int(seed), nonce, call, first, len(galaxy_ids)])


# Ray Data UDFs ---------------------------------------------------------------------------------

def _transform_catalogue_block(table: pa.Table, *, preprocessor: dict[str, Any],
                               bins: dict[str, Any], splits: Sequence[str] | None,
                               require_mass: bool) -> dict[str, np.ndarray]:
    """map_batches UDF of catalogue feature sets: select rows, preprocess."""
    pre = Preprocessor.from_dict(preprocessor)
    table = _select_rows(table, splits, require_mass)
    out = pre.transform(_catalogue_batch(table, pre.input_columns), training=False)
    return _finish(out, MassBins(**bins))


class _CatalogueIndex:
    """Selected galaxies rows sorted by galaxy_id, to attach catalogue values to cutouts."""

    def __init__(self, filesystem: pafs.FileSystem, files: Sequence[str], columns: Sequence[str],
                 splits: Sequence[str] | None, require_mass: bool,
                 required_non_null: Sequence[str]) -> None:
        dataset = pads.dataset(list(files), filesystem=filesystem, format="parquet")
        wanted = list(dict.fromkeys([_ID, _MASS, _SPLIT, *columns]))
        row_filter = pads.field(_SPLIT).isin(list(splits)) if splits is not None else None
        table = dataset.to_table(columns=wanted, filter=row_filter)
        table = _select_rows(table, splits, require_mass, required_non_null)
        table = table.sort_by(_ID)
        self.columns = tuple(columns)
        self.galaxy_ids = table[_ID].to_numpy().astype(np.int64)
        self.values = _catalogue_batch(table, self.columns)
        self.splits = table[_SPLIT].to_numpy(zero_copy_only=False)
        if len(np.unique(self.galaxy_ids)) != len(self.galaxy_ids):
            raise ValueError("galaxies table repeats galaxy_id values; ids must be unique")

    def match(self, galaxy_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(mask over the given ids of those in the index, their rows in the index)."""
        if len(self.galaxy_ids) == 0:
            return np.zeros(len(galaxy_ids), dtype=bool), np.zeros(0, dtype=np.int64)
        position = np.searchsorted(self.galaxy_ids, galaxy_ids)
        position = np.minimum(position, len(self.galaxy_ids) - 1)
        found = self.galaxy_ids[position] == galaxy_ids
        return found, position[found]

    def rows(self, positions: np.ndarray) -> dict[str, np.ndarray]:
        return {name: values[positions] for name, values in self.values.items()}


class _ImageBlocks:
    """map_batches actor of image feature sets: look cutouts up in the catalogue, preprocess."""

    def __init__(self, *, filesystem: pafs.FileSystem, galaxies_files: Sequence[str],
                 preprocessor: dict[str, Any], bins: dict[str, Any],
                 splits: Sequence[str] | None, require_mass: bool) -> None:
        self.pre = Preprocessor.from_dict(preprocessor)
        fs = self.pre.feature_set
        self.index = _CatalogueIndex(filesystem, galaxies_files, self.pre.input_columns, splits,
                                     require_mass, fs.flux_columns if fs.flux_normalise else ())
        self.bins = MassBins(**bins)

    def __call__(self, table: pa.Table) -> dict[str, np.ndarray]:
        galaxy_ids = table[_ID].to_numpy().astype(np.int64)
        found, positions = self.index.match(galaxy_ids)
        batch = self.index.rows(positions)
        batch[_IMAGE] = _images(table[_IMAGE], self.pre.image.shape)[found]
        return _finish(self.pre.transform(batch, training=False), self.bins)


def _transform_joined_block(table: pa.Table, *, preprocessor: dict[str, Any],
                            bins: dict[str, Any]) -> dict[str, np.ndarray]:
    """map_batches UDF after a shuffle join: rows are already selected and matched."""
    pre = Preprocessor.from_dict(preprocessor)
    batch = _catalogue_batch(table, pre.input_columns)
    batch[_IMAGE] = _images(table[_IMAGE], pre.image.shape)
    return _finish(pre.transform(batch, training=False), MassBins(**bins))


def _augment_block(batch: dict[str, np.ndarray], *, seed: int) -> dict[str, np.ndarray]:
    """map_batches UDF: an independent random rotation/flip of every image of the block."""
    # Fresh entropy per call: Ray Data re-executes this stage every epoch (or once per
    # repetition of a cached dataset) without telling the UDF which one it is.
    nonce = int(np.random.SeedSequence().entropy % (2**63))
    batch[_IMAGE] = augment_batch(batch[_IMAGE], _batch_rng(seed, nonce, 0, batch[_ID]))
    return batch


def _select_block(table: pa.Table, *, columns: Sequence[str], splits: Sequence[str] | None,
                  require_mass: bool, required_non_null: Sequence[str]) -> pa.Table:
    """map_batches UDF: selected galaxies rows with the catalogue columns, before a join."""
    table = _select_rows(table, splits, require_mass, required_non_null)
    return table.select(list(dict.fromkeys([_ID, _MASS, _SPLIT, *columns])))


# Public entry points ---------------------------------------------------------------------------

def fit_preprocessor(storage: Storage, galaxies_key: str, feature_set: FeatureSet,
                     cutouts_key: str | None = None, *, null_strategy: str = "mean",
                     fill_value: float = 0.0, missing_indicator: bool = False,
                     flux_percentiles: Sequence[float] | None = None,
                     num_cpus: float = 0.25) -> Preprocessor:
    """Fit the preprocessing statistics of a feature set on the training split.

    One streamed pass of Ray Data aggregations over the galaxies with ``split == "train"``
    computes, per catalogue input, the count, mean and population standard deviation of the
    non-null values, and for flux-normalised sets the clip percentile of each flux column. Only
    the aggregates reach the driver.

    Parameters
    ----------
    storage, galaxies_key, cutouts_key:
        Where the committed ``galaxies`` (and, for image sets, ``cutouts``) outputs live.
    feature_set:
        The model input; unknown columns or bands raise ``ValueError`` before any data is read.
    null_strategy, fill_value, missing_indicator:
        Null handling of catalogue inputs (see :class:`CatalogueScaling`): ``"mean"`` imputes the
        training mean, ``"fill"`` imputes ``fill_value``; indicators append one 0/1 column each.
    flux_percentiles:
        (C,) clip percentile per band; default :func:`flux_clip_percentiles`.
    num_cpus:
        CPUs per Ray Data task (fractional so the pass fits next to running trainers).
    """
    from ray.data.aggregate import Count, Mean, Quantile, Std

    source = check_inputs(storage, galaxies_key, cutouts_key, feature_set)
    fs = feature_set
    ref = storage.table("galaxies", galaxies_key)
    columns = list(dict.fromkeys(fs.required_columns))
    percentiles = None
    if fs.flux_normalise:
        percentiles = np.asarray(flux_percentiles if flux_percentiles is not None
                                 else flux_clip_percentiles(fs.bands), dtype=np.float64)
        if percentiles.shape != (len(fs.bands),):
            raise ValueError(f"flux_percentiles needs one value per band {list(fs.bands)}, got "
                             f"{percentiles.tolist()}")

    aggregations = [Count(alias_name="rows")]
    for column in fs.catalogue_inputs:
        aggregations += [Count(on=column, ignore_nulls=True, alias_name=f"count:{column}"),
                         Mean(on=column, alias_name=f"mean:{column}"),
                         Std(on=column, ddof=0, alias_name=f"std:{column}")]
    for column, percentile in zip(fs.flux_columns if fs.flux_normalise else (),
                                  percentiles if percentiles is not None else ()):
        aggregations.append(Quantile(on=column, q=float(percentile) / 100.0,
                                     alias_name=f"floor:{column}"))

    dataset = _read(storage, ref.files, [_ID, _MASS, _SPLIT, *columns], num_cpus)
    dataset = dataset.map_batches(_training_values, batch_format="pyarrow", num_cpus=num_cpus,
                                  fn_kwargs={"columns": columns})
    stats = dataset.aggregate(*aggregations)
    n_train = int(stats["rows"] or 0)
    if n_train == 0:
        raise ValueError(f"galaxies output '{galaxies_key}' has no galaxy with split 'train': "
                         "cannot fit preprocessing statistics")

    catalogue = None
    if fs.catalogue_inputs:
        mean, std = [], []
        for column in fs.catalogue_inputs:
            if not stats[f"count:{column}"]:
                raise ValueError(f"catalogue column '{column}' has no non-null training value; "
                                 f"drop it from feature set '{fs.name}'")
            mean.append(float(stats[f"mean:{column}"]))
            std.append(float(stats[f"std:{column}"]))
        mean, std = np.asarray(mean), np.asarray(std)
        # Same rule as CatalogueScaling.fit: a constant column is centred only.
        constant = std <= 1e-12 * np.maximum(1.0, np.abs(mean))
        if constant.any():
            log.warning("feature set %s: constant training columns %s are centred only", fs.name,
                        [c for c, k in zip(fs.catalogue_inputs, constant) if k])
            std = np.where(constant, 1.0, std)
        catalogue = CatalogueScaling(tuple(fs.catalogue_inputs), mean, std,
                                     null_strategy=null_strategy, fill_value=float(fill_value),
                                     missing_indicator=bool(missing_indicator))

    flux_floor = None
    if fs.flux_normalise:
        flux_floor = np.array([stats[f"floor:{c}"] for c in fs.flux_columns], dtype=np.float64)
        if not np.all(np.isfinite(flux_floor)) or np.any(flux_floor <= 0):
            raise ValueError(f"feature set '{fs.name}': flux clip floors {flux_floor.tolist()} "
                             f"of {list(fs.flux_columns)} must be positive fluxes")

    log.info("fitted preprocessing of %s on %d training galaxies", fs.name, n_train)
    return Preprocessor(fs, catalogue, source, flux_floor, percentiles, n_train)


def _training_values(table: pa.Table, *, columns: Sequence[str]) -> pa.Table:
    """Training rows with float64 catalogue columns; NaN and infinities become nulls so that
    Ray's aggregations skip them as they skip nulls."""
    table = _select_rows(table, ("train",), require_mass=False)
    arrays = []
    for column in columns:
        values = _as_float(table[column])
        arrays.append(pa.array(values, type=pa.float64(), mask=~np.isfinite(values)))
    if not columns:
        return pa.table({_ID: table[_ID]})
    return pa.Table.from_arrays(arrays, names=list(columns))


def galaxy_dataset(storage: Storage, galaxies_key: str, cutouts_key: str | None,
                   feature_set: FeatureSet, bins: MassBins, preprocessor: Preprocessor, *,
                   splits: tuple[str, ...] | None, training: bool, seed: int,
                   require_mass: bool = False, join: str = "broadcast",
                   batch_size: int = 256, num_cpus: float = 0.25,
                   max_actors: int = 2) -> "ray.data.Dataset":  # noqa: F821
    """A lazy, streaming Ray dataset of preprocessed galaxies (columns in the module docstring).

    Parameters
    ----------
    storage, galaxies_key, cutouts_key:
        Committed ``galaxies`` and (image sets) ``cutouts`` outputs.
    feature_set, bins, preprocessor:
        Model input, mass bins and fitted statistics (:func:`fit_preprocessor`).
    splits:
        Splits to keep (e.g. ``("train",)``); None keeps every galaxy.
    training:
        Randomly rotate (by multiples of 90 degrees) and flip each image, in a last stage
        (:func:`augment_dataset`). Seeding: each block draws from a generator seeded by
        (``seed``, fresh entropy, the block's first galaxy id and size). The entropy is needed
        because Ray Data re-executes a stage every epoch without telling it which epoch it is;
        augmentations therefore differ between epochs and are not bit-reproducible between
        runs. Non-training datasets are deterministic.
    require_mass:
        Drop galaxies whose stellar mass is null (training and validation need a bin).
    join:
        ``"broadcast"`` or ``"shuffle"``, see the module docstring.
    batch_size, num_cpus, max_actors:
        Rows per ``map_batches`` call, CPUs per Ray task/actor, lookup actors at most.

    Galaxies of flux-normalised sets whose flux is null, and (for image sets) galaxies without
    a cutout, are left out.
    """
    if join not in JOIN_STRATEGIES:
        raise ValueError(f"join must be one of {JOIN_STRATEGIES}, got '{join}'")
    source = check_inputs(storage, galaxies_key, cutouts_key, feature_set)
    if preprocessor.feature_set.to_dict() != feature_set.to_dict():
        raise ValueError(f"preprocessor was fitted for feature set "
                         f"'{preprocessor.feature_set.name}', not '{feature_set.name}'")
    if source is not None and preprocessor.image != source:
        raise ValueError(f"preprocessor was fitted on cutouts {preprocessor.image}, but cutouts "
                         f"'{cutouts_key}' hold {source}")
    splits = tuple(splits) if splits is not None else None
    galaxies = storage.table("galaxies", galaxies_key)
    columns = list(dict.fromkeys(preprocessor.input_columns))
    non_null = list(feature_set.flux_columns) if feature_set.flux_normalise else []
    pre, bin_args = preprocessor.to_dict(), {"low": bins.low, "high": bins.high,
                                             "n_bins": bins.n_bins}

    if source is None:
        dataset = _read(storage, galaxies.files, [_ID, _MASS, _SPLIT, *columns], num_cpus)
        # Catalogue sets have nothing to augment: training and evaluation batches are alike.
        return dataset.map_batches(
            _transform_catalogue_block, batch_format="pyarrow", batch_size=batch_size,
            num_cpus=num_cpus, fn_kwargs={"preprocessor": pre, "bins": bin_args,
                                          "splits": splits, "require_mass": require_mass})

    cutouts = storage.table("cutouts", cutouts_key)
    images = _read(storage, cutouts.files, [_ID, _IMAGE], num_cpus)
    if join == "broadcast":
        dataset = images.map_batches(
            _ImageBlocks, batch_format="pyarrow", batch_size=batch_size, num_cpus=num_cpus,
            concurrency=(1, max(1, max_actors)),
            fn_constructor_kwargs={
                "filesystem": storage.fs, "galaxies_files": list(galaxies.files),
                "preprocessor": pre, "bins": bin_args, "splits": splits,
                "require_mass": require_mass,
            })
        return augment_dataset(dataset, seed, num_cpus=num_cpus) if training else dataset

    rows = _read(storage, galaxies.files, [_ID, _MASS, _SPLIT, *columns], num_cpus)
    rows = rows.map_batches(_select_block, batch_format="pyarrow", num_cpus=num_cpus,
                            fn_kwargs={"columns": columns, "splits": splits,
                                       "require_mass": require_mass,
                                       "required_non_null": non_null})
    joined = rows.join(images, "inner", num_partitions=max(1, max_actors), on=(_ID,),
                       aggregator_ray_remote_args={"num_cpus": num_cpus})
    dataset = joined.map_batches(
        _transform_joined_block, batch_format="pyarrow", batch_size=batch_size,
        num_cpus=num_cpus, fn_kwargs={"preprocessor": pre, "bins": bin_args})
    return augment_dataset(dataset, seed, num_cpus=num_cpus) if training else dataset


def augment_dataset(dataset: "ray.data.Dataset", seed: int, *,  # noqa: F821
                    num_cpus: float = 0.25) -> "ray.data.Dataset":  # noqa: F821
    """Add the training augmentation stage to a dataset of preprocessed image batches.

    Each image gets an independent random rotation by a multiple of 90 degrees and a random
    flip, drawn anew every time the stage runs (every epoch, or every repetition of a cached
    dataset); see :func:`galaxy_dataset` on seeding.
    """
    return dataset.map_batches(_augment_block, batch_format="numpy", num_cpus=num_cpus,
                               fn_kwargs={"seed": int(seed)})


# Mass histograms -------------------------------------------------------------------------------

def _histogram_rows(split: np.ndarray, bin_index: np.ndarray, n_bins: int) -> dict[str, Any]:
    """One row per split present: its name and the counts per mass bin (null masses skipped)."""
    names = sorted({str(s) for s in split})
    counts = [np.bincount(bin_index[(split == name) & (bin_index >= 0)], minlength=n_bins)
              for name in names]
    return {_SPLIT: np.array(names, dtype=object),
            "counts": np.stack(counts).astype(np.int64) if counts
            else np.zeros((0, n_bins), dtype=np.int64)}


def _histogram_catalogue_block(table: pa.Table, *, bins: dict[str, Any],
                               splits: Sequence[str] | None,
                               required_non_null: Sequence[str]) -> dict[str, Any]:
    table = _select_rows(table, splits, True, required_non_null)
    mass_bins = MassBins(**bins)
    split = table[_SPLIT].to_numpy(zero_copy_only=False)
    return _histogram_rows(split, mass_bins.index(_as_float(table[_MASS])), mass_bins.n_bins)


class _HistogramImageBlocks:
    """map_batches actor: mass histograms of the galaxies that have a cutout."""

    def __init__(self, *, filesystem: pafs.FileSystem, galaxies_files: Sequence[str],
                 bins: dict[str, Any], splits: Sequence[str] | None,
                 required_non_null: Sequence[str]) -> None:
        self.index = _CatalogueIndex(filesystem, galaxies_files, list(required_non_null),
                                     splits, True, required_non_null)
        self.bins = MassBins(**bins)

    def __call__(self, table: pa.Table) -> dict[str, Any]:
        found, positions = self.index.match(table[_ID].to_numpy().astype(np.int64))
        mass = self.index.values[_MASS][positions]
        return _histogram_rows(self.index.splits[positions], self.bins.index(mass),
                               self.bins.n_bins)


def mass_histograms(storage: Storage, galaxies_key: str, cutouts_key: str | None,
                    feature_set: FeatureSet, bins: MassBins, *,
                    splits: tuple[str, ...] | None = ("train", "validation"),
                    num_cpus: float = 0.25) -> dict[str, np.ndarray]:
    """Counts per mass bin of the galaxies a model of ``feature_set`` trains and validates on.

    Counts the same galaxies :func:`galaxy_dataset` with ``require_mass=True`` yields (null
    masses, null fluxes of flux-normalised sets and, for image sets, galaxies without a cutout
    left out) by streaming only ids and masses; each block sends one (n_bins,) histogram per
    split to the driver. Returns ``{split: int64 (n_bins,)}`` with a zero array for each
    requested split that has no galaxy.
    """
    source = check_inputs(storage, galaxies_key, cutouts_key, feature_set)
    galaxies = storage.table("galaxies", galaxies_key)
    non_null = list(feature_set.flux_columns) if feature_set.flux_normalise else []
    bin_args = {"low": bins.low, "high": bins.high, "n_bins": bins.n_bins}
    splits = tuple(splits) if splits is not None else None
    if source is None:
        dataset = _read(storage, galaxies.files, [_ID, _MASS, _SPLIT, *non_null], num_cpus)
        dataset = dataset.map_batches(_histogram_catalogue_block, batch_format="pyarrow",
                                      num_cpus=num_cpus,
                                      fn_kwargs={"bins": bin_args, "splits": splits,
                                                 "required_non_null": non_null})
    else:
        cutouts = storage.table("cutouts", cutouts_key)
        dataset = _read(storage, cutouts.files, [_ID], num_cpus)
        dataset = dataset.map_batches(
            _HistogramImageBlocks, batch_format="pyarrow", num_cpus=num_cpus, concurrency=1,
            fn_constructor_kwargs={"filesystem": storage.fs,
                                   "galaxies_files": list(galaxies.files), "bins": bin_args,
                                   "splits": splits, "required_non_null": non_null})

    totals: dict[str, np.ndarray] = {s: np.zeros(bins.n_bins, np.int64) for s in splits or ()}
    for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
        for name, counts in zip(batch[_SPLIT], batch["counts"]):
            totals[str(name)] = totals.get(str(name), np.zeros(bins.n_bins, np.int64)) + counts
    return totals


def prior_entropy(counts: np.ndarray) -> float:
    """Entropy in nats of the mass-bin histogram ``counts`` (n_bins,): -sum p ln p."""
    counts = np.asarray(counts, dtype=np.float64)
    total = counts.sum()
    if total <= 0:
        return float("nan")
    p = counts[counts > 0] / total
    return float(-(p * np.log(p)).sum())


__all__ = [
    "ImageSource",
    "Preprocessor",
    "augment_dataset",
    "check_inputs",
    "fit_preprocessor",
    "galaxy_dataset",
    "image_source",
    "mass_histograms",
    "prior_entropy",
]
