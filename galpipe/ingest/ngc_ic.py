"""Build the bundled NGC/IC sample from the SDSS colour JPEGs and the derived NGC/IC catalogue.

Inputs (``/work/shared/data/sdss_ngc_ic_colour_jpegs``): ``image_labels.csv`` (3,901 JPEGs and
their coarse Hubble class), ``ngc_ic_catalog.csv`` (OpenNGC values per image plus sky matches to
ALFALFA-SDSS, MaNGA FIREFLY and NIBLES) and ``imagery/<class>/<name>.jpg`` (256 x 256 gri
colour composites). See ``data/ngc_ic/PROVENANCE.md`` for what comes out and why.

Choices made here, each with its reason:

* Galaxy ids: ``NGC n -> n``, ``IC n -> 100000 + n``; a component suffix (``NGC2537A``,
  ``IC0732N``) adds ``1000000 * k`` with k = 1 for A ... 26 for Z. Stable across rebuilds and
  readable back into the name.
* Stellar mass, first available of: GSWLC-2 SED (ALFALFA-SDSS), NIBLES, MaNGA FIREFLY
  photometric, Taylor g-i colour (ALFALFA-SDSS). An ALFALFA match is dropped when its HI
  velocity disagrees with the optical redshift (c z) by more than 300 km/s: such matches are
  chance coincidences. The optical velocity is ``c * Redshift``, not OpenNGC's ``RadVel``, which
  uses the relativistic convention (lower than c z by about 360 km/s at z = 0.05) while ALFALFA
  quotes c z; comparing with ``RadVel`` would reject good matches at z > 0.04.
* ALFALFA's g-i colour and i-band absolute magnitude are not kept at all: the Taylor mass is a
  function of exactly those two numbers, so a model given them would learn the recipe, not the
  galaxy (label leakage). The other mass estimates are not kept either, for the same reason.
* Pixels: each 256-pixel JPEG is reduced 4x to 64 x 64 by a box (area-average) filter. SDSS
  colour composites map i -> red, r -> green, g -> blue, so the planes are stored as g, r, i =
  (blue, green, red). The per-image pixel scale (the cutouts were scaled to each galaxy's size)
  is kept as ``pixel_scale`` in arcsec per 64-pixel-image pixel (4 x the JPEG's).
* Two JPEGs are blank (outside the DR7 footprint): ``image_blank`` is true and they are never
  put in train/validation/test.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
import pyarrow as pa

from galpipe.ingest.splits import DEFAULT_FRACTIONS, DEFAULT_SEED, assign_split
from galpipe.ingest.tables import IngestError, cutouts_batch, cutouts_schema, galaxies_table

log = logging.getLogger(__name__)

SURVEY = "ngc_ic"
BANDS = ("g", "r", "i")
JPEG_SIZE = 256
SPEED_OF_LIGHT_KMS = 299_792.458
VELOCITY_TOLERANCE_KMS = 300.0
MASS_SOURCES = (
    ("gswlc", "alfalfa_logMstarGSWLC"),
    ("nibles", "nibles_logMstar"),
    ("manga", "manga_photometric_logmass"),
    ("taylor_gi", "alfalfa_logMstarTaylor"),
)
"""(label, catalogue column) of the stellar-mass sources, in order of preference."""
ALFALFA_MASS_COLUMNS = ("alfalfa_logMstarGSWLC", "alfalfa_logMstarTaylor")
CATALOGUE_COLUMNS = {
    "mag_b": "B-Mag", "mag_v": "V-Mag", "mag_j": "J-Mag", "mag_h": "H-Mag", "mag_k": "K-Mag",
    "major_axis_arcmin": "MajAx", "minor_axis_arcmin": "MinAx", "position_angle_deg": "PosAng",
    "surface_brightness": "SurfBr",
}
"""Kept OpenNGC columns: ``{galaxies column: catalogue column}``."""

_NAME = re.compile(r"^(?P<catalogue>NGC|IC)(?P<number>\d{1,4})(?P<suffix>[A-Z]?)$")


def ngc_ic_galaxy_id(name: str) -> int:
    """The stable int64 id of an NGC/IC name such as ``NGC0224``, ``IC0732N`` (see module)."""
    match = _NAME.match(name)
    if match is None:
        raise IngestError(f"'{name}' is not an NGC/IC name like NGC0224, IC0732 or NGC2537A")
    number = int(match["number"]) + (100_000 if match["catalogue"] == "IC" else 0)
    suffix = match["suffix"]
    return number + (1_000_000 * (ord(suffix) - ord("A") + 1) if suffix else 0)


def ngc_ic_name(galaxy_id: int) -> str:
    """The NGC/IC name of an id made by :func:`ngc_ic_galaxy_id` (four-digit numbers)."""
    suffix_index, rest = divmod(int(galaxy_id), 1_000_000)
    catalogue, number = ("IC", rest - 100_000) if rest >= 100_000 else ("NGC", rest)
    suffix = chr(ord("A") + suffix_index - 1) if suffix_index else ""
    return f"{catalogue}{number:04d}{suffix}"


def _read_inputs(source_dir: Path):
    """The derived catalogue, checked row by row against ``image_labels.csv``."""
    import pandas as pd

    catalogue = pd.read_csv(source_dir / "ngc_ic_catalog.csv")
    labels = pd.read_csv(source_dir / "image_labels.csv")
    if len(labels) != len(catalogue) or not (
        (labels["image_filepath"].to_numpy() == catalogue["image"].to_numpy()).all()
        and (labels["Hubble_coarse"].to_numpy() == catalogue["class"].to_numpy()).all()
    ):
        raise IngestError(f"{source_dir}: ngc_ic_catalog.csv rows do not follow "
                          f"image_labels.csv (image path and class per row)")
    return catalogue


def select_stellar_mass(catalogue) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Stellar mass (dex), its source label and the ALFALFA-velocity flag per catalogue row.

    Returns ``(stellar_mass, source, alfalfa_rejected)``: NaN/None where no source has a mass;
    ``alfalfa_rejected`` marks rows whose ALFALFA match fails the velocity check.
    """
    optical_kms = SPEED_OF_LIGHT_KMS * catalogue["Redshift"].to_numpy(dtype=float)
    velocity_gap = np.abs(catalogue["alfalfa_Vhelio"].to_numpy(dtype=float) - optical_kms)
    with np.errstate(invalid="ignore"):
        alfalfa_rejected = velocity_gap > VELOCITY_TOLERANCE_KMS

    stellar_mass = np.full(len(catalogue), np.nan)
    source = np.full(len(catalogue), None, dtype=object)
    for label, column in reversed(MASS_SOURCES):
        values = catalogue[column].to_numpy(dtype=float)
        usable = np.isfinite(values)
        if column in ALFALFA_MASS_COLUMNS:
            usable &= ~alfalfa_rejected
        stellar_mass[usable] = values[usable]
        source[usable] = label
    return stellar_mass, source, alfalfa_rejected


def _redshift(catalogue, alfalfa_rejected: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """OpenNGC redshift, else MaNGA, NIBLES, then accepted ALFALFA HI (c z / c)."""
    candidates = (
        ("openngc", catalogue["Redshift"].to_numpy(dtype=float)),
        ("manga", catalogue["manga_redshift"].to_numpy(dtype=float)),
        ("nibles", catalogue["nibles_z"].to_numpy(dtype=float)),
        ("alfalfa_hi", np.where(alfalfa_rejected, np.nan,
                                catalogue["alfalfa_Vhelio"].to_numpy(dtype=float)
                                / SPEED_OF_LIGHT_KMS)),
    )
    redshift = np.full(len(catalogue), np.nan)
    source = np.full(len(catalogue), None, dtype=object)
    for label, values in reversed(candidates):
        usable = np.isfinite(values)
        redshift[usable] = values[usable]
        source[usable] = label
    return redshift, source


def load_ngc_ic_images(source_dir: Path, image_paths: list[str],
                       size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Colour JPEGs as uint8 (N, 3, size, size) g, r, i planes, and a blank flag per image.

    Each JPEG (256 x 256 RGB) is reduced by a box filter; a JPEG whose pixels are all equal
    (outside the survey footprint) is flagged blank.
    """
    from PIL import Image

    images = np.empty((len(image_paths), len(BANDS), size, size), dtype=np.uint8)
    blank = np.zeros(len(image_paths), dtype=bool)
    for row, relative in enumerate(image_paths):
        path = source_dir / relative
        try:
            with Image.open(path) as jpeg:
                rgb = jpeg.convert("RGB")
                full = np.asarray(rgb)
                small = np.asarray(rgb.resize((size, size), Image.Resampling.BOX))
        except OSError as exc:
            raise IngestError(f"cannot read image {path}: {exc}") from exc
        if full.shape != (JPEG_SIZE, JPEG_SIZE, 3):
            raise IngestError(f"image {path} has shape {full.shape}, expected "
                              f"({JPEG_SIZE}, {JPEG_SIZE}, 3)")
        blank[row] = full.min() == full.max()
        images[row] = small[:, :, ::-1].transpose(2, 0, 1)
    return images, blank


def build_ngc_ic(source_dir: str | Path, *, seed: int = DEFAULT_SEED, size: int = 64,
                 fractions=DEFAULT_FRACTIONS) -> tuple[pa.Table, pa.Table]:
    """The sample's ``galaxies`` and ``cutouts`` tables, both sorted by ``galaxy_id``.

    Parameters
    ----------
    source_dir:
        The ``sdss_ngc_ic_colour_jpegs`` folder.
    seed, fractions:
        Split of the galaxies with a mass and a non-blank image, stratified by class.
    size:
        Output image side in pixels (the JPEGs are 256; 64 reduces 4x).
    """
    source_dir = Path(source_dir)
    catalogue = _read_inputs(source_dir)
    names = catalogue["Name"].tolist()
    galaxy_ids = np.array([ngc_ic_galaxy_id(n) for n in names], dtype=np.int64)
    if len(np.unique(galaxy_ids)) != len(galaxy_ids):
        raise IngestError(f"{source_dir}: NGC/IC names repeat in ngc_ic_catalog.csv")

    images, blank = load_ngc_ic_images(source_dir, catalogue["image"].tolist(), size)
    stellar_mass, mass_source, alfalfa_rejected = select_stellar_mass(catalogue)
    redshift, redshift_source = _redshift(catalogue, alfalfa_rejected)
    classes = catalogue["class"].to_numpy(dtype=object)
    split = assign_split(galaxy_ids, np.isfinite(stellar_mass) & ~blank, seed=seed,
                         fractions=fractions, strata=classes)

    order = np.argsort(galaxy_ids, kind="stable")
    core = {
        "galaxy_id": galaxy_ids,
        "name": np.array(names, dtype=object),
        "ra": catalogue["ra_deg"].to_numpy(dtype=float),
        "dec": catalogue["dec_deg"].to_numpy(dtype=float),
        "redshift": pa.array(redshift, mask=~np.isfinite(redshift)),
        "stellar_mass": pa.array(stellar_mass, mask=~np.isfinite(stellar_mass)),
        "stellar_mass_source": pa.array(mass_source.tolist(), pa.string()),
        "class": classes,
        "split": split,
    }
    major = catalogue["MajAx"].to_numpy(dtype=float)
    minor = catalogue["MinAx"].to_numpy(dtype=float)
    extra = {
        "hubble_type": pa.array(catalogue["Hubble"].tolist(), pa.string()),
        **{target: catalogue[source].to_numpy(dtype=float)
           for target, source in CATALOGUE_COLUMNS.items()},
        "axis_ratio": minor / major,
        "pixel_scale": catalogue["pixscale_arcsec_assumed"].to_numpy(dtype=float)
        * (JPEG_SIZE / size),
        "redshift_source": pa.array(redshift_source.tolist(), pa.string()),
        "image_blank": blank,
    }
    extra = {k: pa.array(v, from_pandas=True) if isinstance(v, np.ndarray) else v
             for k, v in extra.items()}
    take = pa.array(order)
    galaxies = galaxies_table(
        {k: (v if isinstance(v, pa.Array) else pa.array(v)).take(take) for k, v in core.items()},
        {k: v.take(take) for k, v in extra.items()},
        survey=SURVEY,
    )
    schema = cutouts_schema(BANDS, size, size, "colour_uint8",
                            metadata={b"galpipe.survey": SURVEY.encode()})
    cutouts = pa.Table.from_batches([cutouts_batch(galaxy_ids[order], images[order], schema)])
    log.info("NGC/IC sample: %d galaxies, %d with a stellar mass, %d blank images",
             len(galaxy_ids), int(np.isfinite(stellar_mass).sum()), int(blank.sum()))
    return galaxies, cutouts
