"""FITS cutouts into cutouts batches: real SDSS fpC stamps, size policies, layouts, errors."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from astropy.io import fits

from galpipe.contracts import validate
from galpipe.ingest.fits_cutouts import (
    SDSS_FPC_SOFT_BIAS,
    fits_cutout_batches,
    fit_to_size,
    galaxy_ids_from_files,
)
from galpipe.ingest.tables import IngestError, cutout_images

FIXTURES = Path(__file__).parent / "fixtures" / "fits"
SMALL_ID = 587722953308766475  # 61 x 61
MEDIUM_IDS = [587722983900577997, 587725074990891239]  # 71 x 71


def _raw(galaxy_id: int) -> np.ndarray:
    """Pixel values straight from the file header's scaling (uint16 = int16 + BZERO)."""
    with fits.open(FIXTURES / f"{galaxy_id}.fits", do_not_scale_image_data=True) as hdus:
        stored = hdus[0].data.astype(np.float64)
        return stored * hdus[0].header.get("BSCALE", 1) + hdus[0].header.get("BZERO", 0)


def _table(batches) -> pa.Table:
    batches = list(batches)
    return pa.Table.from_batches(batches)


def test_real_fpc_cutout_round_trips_with_bias_removed():
    table = _table(fits_cutout_batches([SMALL_ID], FIXTURES, size=61, bias=SDSS_FPC_SOFT_BIAS))

    validate(table, "cutouts")
    metadata = table.schema.metadata
    assert metadata[b"galpipe.bands"] == b"r"
    assert metadata[b"galpipe.image_shape"] == b"1,61,61"
    assert metadata[b"galpipe.pixel_kind"] == b"flux"
    assert table.schema.field("image").type == pa.list_(pa.float32(), 61 * 61)
    image = cutout_images(table)
    assert image.shape == (1, 1, 61, 61)
    np.testing.assert_array_equal(image[0, 0], _raw(SMALL_ID) - 1000.0)
    # The sky of DR7 r-band fpC frames sits ~100-200 counts above the soft bias.
    assert 100 < np.median(image) < 200


def test_strict_policy_names_the_file_and_its_shape():
    with pytest.raises(IngestError, match=rf"{SMALL_ID}\.fits.*\(61, 61\).*\(64, 64\)"):
        list(fits_cutout_batches([SMALL_ID], FIXTURES, size=64, policy="strict"))


def test_crop_policy_centre_crops_and_pads_with_the_border_median():
    table = _table(fits_cutout_batches([MEDIUM_IDS[0], SMALL_ID], FIXTURES, size=64,
                                       policy="crop"))
    images = cutout_images(table)

    np.testing.assert_array_equal(images[0, 0], _raw(MEDIUM_IDS[0])[3:67, 3:67])
    raw = _raw(SMALL_ID)
    np.testing.assert_array_equal(images[1, 0, 1:62, 1:62], raw)
    border = np.concatenate([raw[0], raw[-1], raw[1:-1, 0], raw[1:-1, -1]])
    pad = images[1, 0].copy()
    pad[1:62, 1:62] = np.nan
    assert np.isnan(pad).sum() == 61 * 61
    assert np.all(pad[~np.isnan(pad)] == np.median(border))


def test_fit_to_size_crops_one_axis_and_pads_the_other():
    image = np.arange(2 * 5 * 9, dtype=np.float32).reshape(2, 5, 9)
    fitted = fit_to_size(image, (7, 7), "crop", "x")
    assert fitted.shape == (2, 7, 7)
    np.testing.assert_array_equal(fitted[:, 1:6, :], image[:, :, 1:8])


def test_ids_from_file_names_and_batching():
    ids = galaxy_ids_from_files(FIXTURES, "{id}.fits")
    assert ids.tolist() == sorted(int(p.stem) for p in FIXTURES.glob("*.fits"))

    batches = list(fits_cutout_batches(ids[:3], FIXTURES, size=32, policy="crop", batch_size=2))
    assert [b.num_rows for b in batches] == [2, 1]
    assert pa.Table.from_batches(batches).column("galaxy_id").to_pylist() == ids[:3].tolist()


def test_one_file_per_band_and_cubes(tmp_path):
    rng = np.random.default_rng(0)
    planes = {band: rng.normal(size=(16, 16)).astype(np.float32) for band in "gri"}
    for band, plane in planes.items():
        fits.PrimaryHDU(plane).writeto(tmp_path / f"7_{band}.fits")
    cube = np.stack([planes[b] for b in "gri"])
    # Image in the first extension, not the primary HDU.
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(cube)]).writeto(tmp_path / "8.fits")

    per_band = cutout_images(_table(fits_cutout_batches(
        [7], tmp_path, pattern="{id}_{band}.fits", bands=["i", "g", "r"], size=16)))
    np.testing.assert_array_equal(per_band[0], np.stack([planes[b] for b in "igr"]))

    from_cube = _table(fits_cutout_batches([8], tmp_path, bands=["g", "r", "i"], size=16))
    assert from_cube.schema.metadata[b"galpipe.bands"] == b"g,r,i"
    np.testing.assert_array_equal(cutout_images(from_cube)[0], cube)

    with pytest.raises(IngestError, match=r"8\.fits has 3 plane\(s\).*2 band\(s\)"):
        list(fits_cutout_batches([8], tmp_path, bands=["g", "r"], size=16))


def test_bad_files_are_named(tmp_path):
    fits.PrimaryHDU(np.zeros(10, dtype=np.float32)).writeto(tmp_path / "1.fits")
    fits.PrimaryHDU(np.zeros((2, 2, 4, 4), dtype=np.float32)).writeto(tmp_path / "2.fits")
    (tmp_path / "3.fits").write_bytes(b"SIMPLE  = garbage" + b"\x00" * 100)
    fits.PrimaryHDU().writeto(tmp_path / "4.fits")
    shutil.copy(FIXTURES / f"{SMALL_ID}.fits", tmp_path / "5.fits")

    with pytest.raises(IngestError, match=r"1\.fits has a 1-D image"):
        list(fits_cutout_batches([1], tmp_path, size=10))
    with pytest.raises(IngestError, match=r"2\.fits has a 4-D image"):
        list(fits_cutout_batches([2], tmp_path, size=4))
    with pytest.raises(IngestError, match=r"cannot read FITS cutout .*3\.fits"):
        list(fits_cutout_batches([3], tmp_path, size=4))
    with pytest.raises(IngestError, match=r"4\.fits has no image HDU"):
        list(fits_cutout_batches([4], tmp_path, size=4))
    with pytest.raises(IngestError, match=r"2 cutout file\(s\) missing.*98\.fits, 99\.fits"):
        list(fits_cutout_batches([5, 98, 99], tmp_path, size=61))
    with pytest.raises(IngestError, match=r"missing.*5_g\.fits"):
        list(fits_cutout_batches([5], tmp_path, pattern="{id}_{band}.fits", bands=["g"]))
