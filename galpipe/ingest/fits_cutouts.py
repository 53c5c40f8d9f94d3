"""FITS image cutouts into streaming ``cutouts`` record batches (flux, float32).

Two layouts are read, chosen by the file-name pattern:

* one file per galaxy (pattern without ``{band}``, e.g. ``"{id}.fits"``): the first HDU with an
  image holds a 2-D (H, W) single-band image or a 3-D (C, H, W) cube whose C planes are the
  requested bands in order;
* one file per galaxy and band (pattern with ``{band}``, e.g. ``"{id}_{band}.fits"``), each a
  2-D image.

Every image is brought to the requested size by a policy:

* ``"strict"``: the image must already have that size, else an error names the file and shape;
* ``"crop"``: a larger axis is cropped about its centre (start ``(n - size) // 2``); a smaller
  axis is padded on both sides (``(size - n) // 2`` before) with the median of the image's
  outer border pixels, per band. The border median estimates the sky, so the padding adds no
  step that a network could mistake for structure.

An optional constant ``bias`` is subtracted first: SDSS DR7 ``fpC`` corrected frames carry a
soft bias of 1000 counts. Pixels stay in the file's units (e.g. counts): no calibration is
applied, and the unit is recorded in the ``galpipe.flux_unit`` metadata.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa

from galpipe.ingest.tables import IngestError, cutouts_batch, cutouts_schema

log = logging.getLogger(__name__)

SDSS_FPC_SOFT_BIAS = 1000.0
"""Counts added to every pixel of SDSS DR7 fpC frames (subtract to get sky-included counts)."""
POLICIES = ("strict", "crop")
FLUX_UNIT_KEY = b"galpipe.flux_unit"


def read_fits_image(path: str | Path) -> np.ndarray:
    """The first image of a FITS file as float32 (H, W) or (C, H, W), scaling (BZERO) applied.

    Raises
    ------
    IngestError
        The file is missing, cannot be parsed, or has no image HDU with data.
    """
    from astropy.io import fits

    path = Path(path)
    if not path.exists():
        raise IngestError(f"FITS cutout {path} does not exist")
    try:
        with fits.open(path, memmap=False) as hdus:
            for hdu in hdus:
                if hdu.is_image and hdu.data is not None:
                    return np.asarray(hdu.data, dtype=np.float32)
    except Exception as exc:  # astropy raises OSError, ValueError, TypeError... for bad files
        raise IngestError(f"cannot read FITS cutout {path}: {exc}") from exc
    raise IngestError(f"FITS cutout {path} has no image HDU with data")


def fit_to_size(image: np.ndarray, size: tuple[int, int], policy: str, source: str) -> np.ndarray:
    """Bring a (C, H, W) image to (C, *size) by ``policy`` (see the module docstring).

    ``source`` names the file in error messages.
    """
    if policy not in POLICIES:
        raise ValueError(f"size policy must be one of {POLICIES}, got '{policy}'")
    height, width = size
    if 0 in image.shape:
        raise IngestError(f"{source}: image of shape {image.shape} has no pixels")
    if image.shape[1:] == (height, width):
        return image
    if policy == "strict":
        raise IngestError(f"{source}: image shape {image.shape[1:]} differs from the requested "
                          f"{(height, width)} (policy 'strict'; policy 'crop' centre-crops or "
                          f"pads)")

    border = np.concatenate([image[:, 0, :], image[:, -1, :], image[:, :, 0], image[:, :, -1]],
                            axis=1)
    fill = np.median(border, axis=1).astype(image.dtype)
    result = np.broadcast_to(fill[:, None, None], (image.shape[0], height, width)).copy()
    src, dst = [], []
    for n, target in zip(image.shape[1:], (height, width)):
        if n >= target:
            start = (n - target) // 2
            src.append(slice(start, start + target))
            dst.append(slice(0, target))
        else:
            start = (target - n) // 2
            src.append(slice(0, n))
            dst.append(slice(start, start + n))
    result[:, dst[0], dst[1]] = image[:, src[0], src[1]]
    return result


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    """A regex that recovers the integer id from file names made by ``pattern``."""
    parts = re.split(r"(\{id\}|\{band\})", pattern)
    regex = "".join(
        "(?P<id>-?\\d+)" if p == "{id}" else "(?P<band>[^/]+?)" if p == "{band}" else re.escape(p)
        for p in parts
    )
    return re.compile(f"^{regex}$")


def galaxy_ids_from_files(directory: str | Path, pattern: str = "{id}.fits") -> np.ndarray:
    """Sorted unique integer ids of the files in ``directory`` whose names match ``pattern``.

    E.g. ``galaxy_ids_from_files(d, "{id}.fits")`` for SDSS cutouts named by objID.
    """
    if "{id}" not in pattern:
        raise ValueError(f"file pattern must contain '{{id}}', got '{pattern}'")
    directory = Path(directory)
    if not directory.is_dir():
        raise IngestError(f"cutout directory {directory} does not exist")
    regex = _pattern_regex(pattern)
    ids = {int(m["id"]) for p in directory.iterdir() if (m := regex.match(p.name))}
    return np.array(sorted(ids), dtype=np.int64)


def _galaxy_image(directory: Path, pattern: str, galaxy_id: int, bands: Sequence[str],
                  size: tuple[int, int], policy: str, bias: float) -> np.ndarray:
    """The (C, H, W) float32 image of one galaxy from its file(s)."""
    if "{band}" in pattern:
        planes = []
        for band in bands:
            path = directory / pattern.format(id=galaxy_id, band=band)
            plane = read_fits_image(path)
            if plane.ndim != 2:
                raise IngestError(f"FITS cutout {path} has a {plane.ndim}-D image of shape "
                                  f"{plane.shape}; one file per band needs 2-D (H, W) images")
            planes.append(fit_to_size(plane[None], size, policy, str(path))[0])
        image = np.stack(planes)
    else:
        path = directory / pattern.format(id=galaxy_id)
        image = read_fits_image(path)
        if image.ndim == 2:
            image = image[None]
        if image.ndim != 3:
            raise IngestError(f"FITS cutout {path} has a {image.ndim}-D image of shape "
                              f"{image.shape}; expected 2-D (H, W) or 3-D (C, H, W)")
        if image.shape[0] != len(bands):
            raise IngestError(f"FITS cutout {path} has {image.shape[0]} plane(s) of shape "
                              f"{image.shape[1:]}, but {len(bands)} band(s) {list(bands)} were "
                              f"requested")
        image = fit_to_size(image, size, policy, str(path))
    image = image - np.float32(bias) if bias else image
    finite = np.isfinite(image)
    if not finite.all():
        source = directory / (pattern.format(id=galaxy_id, band="*"))
        bad_bands = [b for b, ok in zip(bands, finite.reshape(len(bands), -1).all(axis=1))
                     if not ok]
        raise IngestError(f"FITS cutout {source}: {int((~finite).sum())} NaN or infinite "
                          f"pixel(s) in band(s) {bad_bands} (galaxy_id {galaxy_id}); fill or "
                          f"mask them before ingesting, or leave the galaxy out")
    return image


def _check_pattern(pattern: str) -> None:
    """Refuse file patterns with placeholders other than ``{id}`` and ``{band}``."""
    import string

    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(pattern) if f is not None]
    except ValueError as exc:
        raise ValueError(f"file pattern '{pattern}' is malformed: {exc}") from exc
    unknown = sorted(set(fields) - {"id", "band"})
    if unknown or "id" not in fields:
        raise ValueError(f"file pattern '{pattern}' may only use {{id}} (required) and {{band}}, "
                         f"found {unknown or 'no {id}'}")


def fits_cutout_batches(
    galaxy_ids: Sequence[int] | np.ndarray,
    directory: str | Path,
    *,
    pattern: str = "{id}.fits",
    bands: Sequence[str] = ("r",),
    size: int | tuple[int, int] = 64,
    policy: str = "strict",
    bias: float = 0.0,
    flux_unit: str = "counts",
    batch_size: int = 256,
) -> Iterator[pa.RecordBatch]:
    """Stream ``cutouts`` record batches (pixel kind ``flux``, float32) from FITS files.

    Parameters
    ----------
    galaxy_ids:
        Ids to read, in output order; every one needs its file(s), checked before reading.
    directory:
        Folder of the files.
    pattern:
        File name with ``{id}`` and optionally ``{band}`` (one file per band).
    bands:
        Band names, in the order of the output planes (C = len(bands)).
    size:
        Output H = W (int) or (H, W), pixels.
    policy:
        ``strict`` or ``crop`` (see the module docstring).
    bias:
        Constant subtracted from every pixel (``SDSS_FPC_SOFT_BIAS`` for fpC frames).
    flux_unit:
        Unit of the pixels after bias subtraction, stored in the ``galpipe.flux_unit`` metadata.
    batch_size:
        Galaxies per record batch; memory holds one batch.

    Yields
    ------
    Record batches with ``galaxy_id`` (int64) and ``image`` (fixed-size list of C*H*W float32).

    Raises
    ------
    IngestError
        Ids without files (listed), unreadable files, wrong dimensionality or shape (named).
    """
    _check_pattern(pattern)
    if policy not in POLICIES:
        raise ValueError(f"size policy must be one of {POLICIES}, got '{policy}'")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    height, width = (size, size) if isinstance(size, int) else tuple(size)
    if height < 1 or width < 1:
        raise ValueError(f"cutout size must be >= 1 pixel, got {(height, width)}")
    directory = Path(directory)
    bands = list(bands)
    if not bands or len(set(bands)) != len(bands):
        raise ValueError(f"bands must be distinct names, at least one, got {bands}")
    galaxy_ids = np.asarray(galaxy_ids, dtype=np.int64)
    unique, counts = np.unique(galaxy_ids, return_counts=True)
    if (counts > 1).any():
        raise IngestError(f"galaxy ids repeat: {unique[counts > 1][:5].tolist()}; each galaxy "
                          f"gets one cutout")

    band_names = bands if "{band}" in pattern else [bands[0]]
    missing = [
        directory / pattern.format(id=galaxy_id, band=band)
        for galaxy_id in galaxy_ids.tolist() for band in band_names
        if not (directory / pattern.format(id=galaxy_id, band=band)).exists()
    ]
    if missing:
        shown = ", ".join(p.name for p in missing[:10])
        more = f" and {len(missing) - 10} more" if len(missing) > 10 else ""
        raise IngestError(f"{len(missing)} cutout file(s) missing in {directory} "
                          f"(pattern '{pattern}'): {shown}{more}")

    schema = cutouts_schema(bands, height, width, "flux",
                            metadata={FLUX_UNIT_KEY: flux_unit.encode()})
    for start in range(0, len(galaxy_ids), batch_size):
        chunk = galaxy_ids[start:start + batch_size]
        images = np.stack([
            _galaxy_image(directory, pattern, int(g), bands, (height, width), policy, bias)
            for g in chunk.tolist()
        ])
        yield cutouts_batch(chunk, images, schema)
    log.info("read %d FITS cutouts from %s", len(galaxy_ids), directory)
