"""Preprocessing kernels for images and catalogue vectors (numpy, vectorised over a batch).

These are plain functions of arrays, used by the Ray Data pipeline and by inference alike:

* images: flux normalisation by the Petrosian flux (clipped below at a per-band percentile of the
  sample), sign-preserving log stretch, 8-bit colour scaling, and the eight rotations/flips of
  the square used as training augmentation;
* catalogue vectors: null imputation (with optional missing-value indicators) and
  standardisation with statistics computed on the training split.

Image batches are (N, C, H, W) arrays in (galaxy, band, y, x) order, as stored in the cutouts
table.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

logger = logging.getLogger(__name__)

# Clip percentiles of the Petrosian flux (paper): u is noisier and fainter, so its floor is set
# higher in the distribution.
DEFAULT_FLUX_PERCENTILE = 0.1
BAND_FLUX_PERCENTILES: dict[str, float] = {"u": 2.0}

# SDSS magnitudes are defined so that 22.5 mag is 1 nanomaggy.
NANOMAGGY_ZERO_POINT = 22.5


def _check_images(images: np.ndarray, name: str = "images") -> None:
    """Image batches must be 4-D (N, C, H, W)."""
    if images.ndim != 4:
        raise ValueError(f"{name} must have shape (N, C, H, W), got shape {images.shape}")


def sign_log_stretch(values: np.ndarray) -> np.ndarray:
    """Sign-preserving log stretch: log(1 + v) for v > 0, -log(1 - v) for v < 0.

    Compresses the dynamic range of galaxy light while keeping negative (noise) pixels
    distinguishable from zero. Any shape; returns float32 of the same shape.
    """
    values = np.asarray(values, dtype=np.float32)
    return (np.sign(values) * np.log1p(np.abs(values))).astype(np.float32, copy=False)


def flux_clip_percentiles(bands: Sequence[str]) -> np.ndarray:
    """Default clip percentile per band: 2 for u, 0.1 for every other band. Shape (C,)."""
    return np.array([BAND_FLUX_PERCENTILES.get(band, DEFAULT_FLUX_PERCENTILE) for band in bands])


def magnitudes_to_nanomaggies(magnitudes: np.ndarray) -> np.ndarray:
    """Pogson magnitudes (zero point 22.5, SDSS convention) to fluxes in nanomaggies.

    NaN (null) magnitudes stay NaN. Limitation: SDSS asinh magnitudes differ from Pogson ones
    for very faint objects; galaxies with spectra are bright enough for the difference to vanish.
    """
    magnitudes = np.asarray(magnitudes, dtype=np.float64)
    return 10.0 ** (-0.4 * (magnitudes - NANOMAGGY_ZERO_POINT))


def compute_flux_floor(petrosian_flux: np.ndarray, percentiles: Sequence[float] | np.ndarray,
                       bands: Sequence[str] | None = None) -> np.ndarray:
    """Per-band lower clip of the Petrosian flux, from a sample (normally the training split).

    Parameters
    ----------
    petrosian_flux:
        (N, C) fluxes (e.g. nanomaggies); NaN marks nulls and is skipped.
    percentiles:
        (C,) percentile in [0, 100] for each band, e.g. :func:`flux_clip_percentiles`.
    bands:
        Band names, only for error messages.

    Returns
    -------
    (C,) float64 floor per band, in the units of ``petrosian_flux``.
    """
    petrosian_flux = np.asarray(petrosian_flux, dtype=np.float64)
    percentiles = np.asarray(percentiles, dtype=np.float64)
    if petrosian_flux.ndim != 2 or percentiles.shape != (petrosian_flux.shape[1],):
        raise ValueError(f"need fluxes of shape (N, C) and one percentile per band, got fluxes "
                         f"{petrosian_flux.shape} and percentiles {percentiles.shape}")
    bands = list(bands) if bands is not None else [str(c) for c in range(percentiles.size)]

    floor = np.empty(percentiles.size)
    for c, percentile in enumerate(percentiles):
        column = petrosian_flux[:, c]
        column = column[np.isfinite(column)]
        if column.size == 0:
            raise ValueError(f"no finite Petrosian flux in band {bands[c]!r}: cannot compute its "
                             "clip floor")
        floor[c] = np.percentile(column, percentile)
    if np.any(floor <= 0):
        bad = [bands[c] for c in np.flatnonzero(floor <= 0)]
        raise ValueError(f"Petrosian flux floor is not positive in bands {bad} ({floor}); "
                         "fluxes must be positive (nanomaggies), raise the clip percentile")
    return floor


def clip_flux(petrosian_flux: np.ndarray, floor: np.ndarray) -> np.ndarray:
    """Raise each band's flux to at least its floor. (N, C) and (C,) -> (N, C) float64."""
    return np.maximum(np.asarray(petrosian_flux, dtype=np.float64), np.asarray(floor))


def normalise_flux(images: np.ndarray, petrosian_flux: np.ndarray,
                   floor: np.ndarray) -> np.ndarray:
    """Divide each band of each image by the galaxy's clipped Petrosian flux in that band.

    Keeps the light distribution and removes the integrated flux (the paper's flux-normalised
    images). Shapes: images (N, C, H, W), petrosian_flux (N, C), floor (C,); returns float32
    (N, C, H, W), dimensionless. Galaxies with a null (NaN) flux must be dropped beforehand.
    """
    images = np.asarray(images)
    _check_images(images)
    petrosian_flux = np.asarray(petrosian_flux, dtype=np.float64)
    if petrosian_flux.shape != images.shape[:2]:
        raise ValueError(f"petrosian_flux must have shape {images.shape[:2]} (galaxy, band), got "
                         f"{petrosian_flux.shape}")
    missing = ~np.isfinite(petrosian_flux)
    if missing.any():
        raise ValueError(f"{int(missing.any(axis=1).sum())} galaxies have a null Petrosian flux "
                         f"(bands {sorted(set(np.nonzero(missing)[1].tolist()))}); drop them "
                         "before flux normalisation")
    flux = clip_flux(petrosian_flux, floor)
    return (images / flux[:, :, None, None]).astype(np.float32)


def preprocess_flux_images(images: np.ndarray, petrosian_flux: np.ndarray | None = None,
                           floor: np.ndarray | None = None) -> np.ndarray:
    """Calibrated-flux cutouts to network inputs: optional flux normalisation, then log stretch.

    Shapes: images (N, C, H, W); petrosian_flux (N, C) and floor (C,) together or neither.
    Returns float32 (N, C, H, W).
    """
    if (petrosian_flux is None) != (floor is None):
        raise ValueError("flux normalisation needs both petrosian_flux and floor, or neither")
    if petrosian_flux is not None:
        images = normalise_flux(images, petrosian_flux, floor)
    return sign_log_stretch(images)


def scale_colour_uint8(images: np.ndarray) -> np.ndarray:
    """8-bit colour composites to float32 in [0, 1] (value / 255); any shape."""
    images = np.asarray(images)
    if images.dtype != np.uint8:
        raise ValueError(f"8-bit colour scaling expects uint8 pixels, got {images.dtype}")
    return images.astype(np.float32) / np.float32(255.0)


def apply_dihedral(images: np.ndarray, k_rot: np.ndarray, flip: np.ndarray) -> np.ndarray:
    """Rotate each image by k_rot[i] * 90 degrees, then mirror it left-right where flip[i].

    The rotation is counter-clockwise in the (y, x) plane as displayed with y increasing
    downwards, exactly ``np.rot90(image, k, axes=(-2, -1))``; the flip is ``np.flip(axis=-1)``.
    Together the (k_rot, flip) pairs give the eight symmetries of the square.

    Shapes: images (N, C, H, H), k_rot int (N,) (any integer, taken modulo 4), flip bool (N,).
    Returns a new array of the same shape and dtype.
    """
    images = np.asarray(images)
    _check_images(images)
    n = images.shape[0]
    k_rot = np.mod(np.asarray(k_rot, dtype=np.int64), 4)
    flip = np.asarray(flip, dtype=bool)
    if k_rot.shape != (n,) or flip.shape != (n,):
        raise ValueError(f"need one rotation and one flip per image ({n}), got k_rot "
                         f"{k_rot.shape} and flip {flip.shape}")
    if images.shape[2] != images.shape[3]:
        raise ValueError(f"rotations by 90 degrees need square images, got {images.shape[2:]}")

    out = np.empty_like(images)
    # Eight transforms at most: one vectorised rot90/flip per group of galaxies sharing one.
    for k in range(4):
        for mirrored in (False, True):
            members = np.flatnonzero((k_rot == k) & (flip == mirrored))
            if members.size == 0:
                continue
            moved = np.rot90(images[members], k, axes=(-2, -1))
            out[members] = np.flip(moved, axis=-1) if mirrored else moved
    return out


def draw_dihedral(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Uniform random (k_rot (n,) int64 in 0..3, flip (n,) bool) for :func:`apply_dihedral`."""
    codes = rng.integers(0, 8, size=n)
    return codes % 4, codes >= 4


def augment_batch(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Training augmentation: an independent random rotation/flip of each image.

    Shapes: (N, C, H, H) -> (N, C, H, H). Deterministic given the generator's state; never used
    at inference.
    """
    images = np.asarray(images)
    _check_images(images)
    k_rot, flip = draw_dihedral(images.shape[0], rng)
    return apply_dihedral(images, k_rot, flip)


def augment_pair(images: np.ndarray,
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Two differently rotated/flipped copies of each image, for contrastive training.

    The first copy gets a uniform random symmetry; the second a uniform random one among the
    seven others, so the two views of a galaxy always differ. Returns (x, x_aug), each
    (N, C, H, H).
    """
    images = np.asarray(images)
    _check_images(images)
    n = images.shape[0]
    first = rng.integers(0, 8, size=n)
    second = (first + rng.integers(1, 8, size=n)) % 8
    return (apply_dihedral(images, first % 4, first >= 4),
            apply_dihedral(images, second % 4, second >= 4))


NullStrategy = Literal["mean", "fill"]


@dataclass(frozen=True, eq=False)
class CatalogueScaling:
    """Null handling and standardisation of catalogue vectors, fitted on the training split.

    Nulls (NaN) are replaced by the column's training mean (``null_strategy="mean"``, which
    becomes exactly 0 after standardisation) or by ``fill_value`` in the column's raw units
    (``"fill"``). With ``missing_indicator`` one 0/1 column per feature is appended, so a network
    can tell an imputed value from a measured one. Each column is then standardised to
    (v - mean) / std with the training mean and standard deviation (nulls skipped).

    Build with :meth:`fit`; apply with :meth:`transform`; persist with :meth:`to_dict`.
    """

    columns: tuple[str, ...]
    mean: np.ndarray
    std: np.ndarray
    null_strategy: NullStrategy = "mean"
    fill_value: float = 0.0
    missing_indicator: bool = False

    def __post_init__(self) -> None:
        if self.null_strategy not in ("mean", "fill"):
            raise ValueError(f"null_strategy must be 'mean' or 'fill', got {self.null_strategy!r}")
        n = len(self.columns)
        if np.shape(self.mean) != (n,) or np.shape(self.std) != (n,):
            raise ValueError(f"mean and std need one value per column ({n}), got shapes "
                             f"{np.shape(self.mean)} and {np.shape(self.std)}")

    @property
    def n_outputs(self) -> int:
        """Width of the transformed vectors: features, plus indicators if enabled."""
        return len(self.columns) * (2 if self.missing_indicator else 1)

    @property
    def output_columns(self) -> tuple[str, ...]:
        """Names of the transformed columns (indicators are ``<column>_missing``)."""
        if not self.missing_indicator:
            return self.columns
        return self.columns + tuple(f"{c}_missing" for c in self.columns)

    @classmethod
    def fit(cls, values: np.ndarray, columns: Sequence[str], null_strategy: NullStrategy = "mean",
            fill_value: float = 0.0, missing_indicator: bool = False) -> CatalogueScaling:
        """Statistics from training values (N, F) with NaN for nulls.

        A column with no finite value raises ``ValueError`` naming it; a constant column gets
        std 1 (it is only centred) and a warning.
        """
        values = np.asarray(values, dtype=np.float64)
        columns = tuple(columns)
        if values.ndim != 2 or values.shape[1] != len(columns):
            raise ValueError(f"catalogue values must have shape (N, {len(columns)}) for columns "
                             f"{list(columns)}, got {values.shape}")
        finite = np.isfinite(values)
        empty = [c for c, ok in zip(columns, finite.any(axis=0)) if not ok]
        if empty:
            raise ValueError(f"catalogue columns {empty} have no non-null training value; drop "
                             "them from the feature set")

        counts = finite.sum(axis=0)
        filled = np.where(finite, values, 0.0)
        mean = filled.sum(axis=0) / counts
        variance = (np.where(finite, values - mean, 0.0) ** 2).sum(axis=0) / counts
        std = np.sqrt(variance)
        constant = std <= 1e-12 * np.maximum(1.0, np.abs(mean))
        if constant.any():
            logger.warning("constant catalogue columns %s: centred only (std set to 1)",
                           [c for c, k in zip(columns, constant) if k])
            std = np.where(constant, 1.0, std)
        return cls(columns, mean, std, null_strategy, float(fill_value), bool(missing_indicator))

    def transform(self, values: np.ndarray) -> np.ndarray:
        """Impute, standardise and optionally append indicators: (N, F) -> (N, n_outputs) f32."""
        values = np.asarray(values, dtype=np.float64)
        if values.ndim != 2 or values.shape[1] != len(self.columns):
            raise ValueError(f"catalogue values must have shape (N, {len(self.columns)}) for "
                             f"columns {list(self.columns)}, got {values.shape}")
        missing = ~np.isfinite(values)
        replacement = self.mean if self.null_strategy == "mean" else np.full_like(
            self.mean, self.fill_value)
        imputed = np.where(missing, replacement, values)
        standardised = (imputed - self.mean) / self.std
        if self.missing_indicator:
            standardised = np.concatenate([standardised, missing.astype(np.float64)], axis=1)
        return standardised.astype(np.float32)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (lists of floats)."""
        return {
            "columns": list(self.columns),
            "mean": [float(v) for v in self.mean],
            "std": [float(v) for v in self.std],
            "null_strategy": self.null_strategy,
            "fill_value": float(self.fill_value),
            "missing_indicator": bool(self.missing_indicator),
        }

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> CatalogueScaling:
        """Inverse of :meth:`to_dict`."""
        return cls(
            columns=tuple(values["columns"]),
            mean=np.asarray(values["mean"], dtype=np.float64),
            std=np.asarray(values["std"], dtype=np.float64),
            null_strategy=values.get("null_strategy", "mean"),
            fill_value=float(values.get("fill_value", 0.0)),
            missing_indicator=bool(values.get("missing_indicator", False)),
        )


__all__ = [
    "BAND_FLUX_PERCENTILES",
    "CatalogueScaling",
    "apply_dihedral",
    "augment_batch",
    "augment_pair",
    "clip_flux",
    "compute_flux_floor",
    "draw_dihedral",
    "flux_clip_percentiles",
    "magnitudes_to_nanomaggies",
    "normalise_flux",
    "preprocess_flux_images",
    "scale_colour_uint8",
    "sign_log_stretch",
]
