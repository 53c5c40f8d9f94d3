"""Preprocessing kernels against straightforward numpy."""

from __future__ import annotations

import json

import numpy as np
import pytest

from galpipe.data.preprocess import (
    CatalogueScaling,
    apply_dihedral,
    augment_batch,
    augment_pair,
    clip_flux,
    compute_flux_floor,
    flux_clip_percentiles,
    magnitudes_to_nanomaggies,
    normalise_flux,
    preprocess_flux_images,
    scale_colour_uint8,
    sign_log_stretch,
)


def _asymmetric_images(n: int, channels: int = 2, size: int = 5) -> np.ndarray:
    """Images with distinct pixel values, so all eight symmetries give different arrays."""
    return np.arange(n * channels * size * size, dtype=np.float32).reshape(n, channels, size, size)


def test_sign_log_stretch_is_log1p_of_magnitude_with_the_sign_kept():
    values = np.array([-100.0, -1.0, -1e-3, 0.0, 1e-3, 0.5, 2000.0])

    expected = np.array([-np.log1p(100.0), -np.log1p(1.0), -np.log1p(1e-3), 0.0, np.log1p(1e-3),
                         np.log1p(0.5), np.log1p(2000.0)])
    np.testing.assert_allclose(sign_log_stretch(values), expected, rtol=1e-6)
    assert sign_log_stretch(values).dtype == np.float32


def test_default_flux_clip_percentiles_are_two_for_u_and_a_tenth_otherwise():
    np.testing.assert_array_equal(flux_clip_percentiles(["u", "g", "r", "i", "z"]),
                                  [2.0, 0.1, 0.1, 0.1, 0.1])


def test_flux_floor_is_the_per_band_percentile_skipping_nulls():
    rng = np.random.default_rng(0)
    flux = rng.lognormal(mean=3.0, sigma=1.0, size=(500, 3))
    flux[::7, 1] = np.nan

    floor = compute_flux_floor(flux, [2.0, 0.1, 50.0])

    expected = [np.percentile(flux[:, 0], 2.0), np.percentile(flux[~np.isnan(flux[:, 1]), 1], 0.1),
                np.median(flux[:, 2])]
    np.testing.assert_allclose(floor, expected)
    clipped = clip_flux(flux[:3], floor)
    np.testing.assert_allclose(clipped, np.maximum(flux[:3], floor))


def test_flux_floor_rejects_non_positive_floors_and_empty_bands():
    with pytest.raises(ValueError, match="bands \\['g'\\]"):
        compute_flux_floor(np.array([[1.0, -1.0], [2.0, 3.0]]), [0.0, 0.0], bands=["u", "g"])
    with pytest.raises(ValueError, match="band 'u'"):
        compute_flux_floor(np.array([[np.nan], [np.nan]]), [2.0], bands=["u"])


def test_normalise_flux_divides_each_band_by_its_clipped_flux():
    rng = np.random.default_rng(1)
    images = rng.normal(size=(2, 3, 4, 4))
    flux = np.array([[10.0, 0.5, 2.0], [4.0, 8.0, 0.01]])
    floor = np.array([1.0, 1.0, 1.0])

    out = normalise_flux(images, flux, floor)

    for i in range(2):
        for c in range(3):
            np.testing.assert_allclose(out[i, c], images[i, c] / max(flux[i, c], 1.0), rtol=1e-6)
    np.testing.assert_allclose(preprocess_flux_images(images, flux, floor),
                               np.sign(out) * np.log1p(np.abs(out)), rtol=1e-5)


def test_normalise_flux_rejects_null_fluxes():
    with pytest.raises(ValueError, match="null Petrosian flux"):
        normalise_flux(np.ones((2, 1, 2, 2)), np.array([[1.0], [np.nan]]), np.array([0.1]))


def test_magnitudes_to_nanomaggies_uses_zero_point_22_5():
    np.testing.assert_allclose(magnitudes_to_nanomaggies(np.array([22.5, 20.0, 17.5])),
                               [1.0, 10.0, 100.0])


def test_colour_scaling_maps_uint8_to_unit_interval():
    pixels = np.array([0, 51, 255], dtype=np.uint8)

    np.testing.assert_allclose(scale_colour_uint8(pixels), [0.0, 0.2, 1.0], rtol=1e-7)
    with pytest.raises(ValueError, match="uint8"):
        scale_colour_uint8(pixels.astype(np.float32))


def test_apply_dihedral_matches_rot90_and_flip_for_all_eight_symmetries():
    images = np.repeat(_asymmetric_images(1), 8, axis=0)
    k_rot = np.array([0, 1, 2, 3, 0, 1, 2, 3])
    flip = np.array([False] * 4 + [True] * 4)

    out = apply_dihedral(images, k_rot + 4, flip)  # rotation counts are taken modulo 4

    for i in range(8):
        expected = np.rot90(images[i], k_rot[i], axes=(1, 2))
        if flip[i]:
            expected = np.flip(expected, axis=2)
        np.testing.assert_array_equal(out[i], expected)
    assert len({out[i].tobytes() for i in range(8)}) == 8  # eight distinct symmetries


def _all_symmetries(image: np.ndarray) -> list[np.ndarray]:
    """The eight rotations/flips of one (C, H, W) image, built with np.rot90 and np.flip."""
    rotations = [np.rot90(image, k, axes=(1, 2)) for k in range(4)]
    return rotations + [np.flip(r, axis=2) for r in rotations]


def test_augment_batch_applies_one_symmetry_per_galaxy_and_keeps_pixel_values():
    images = _asymmetric_images(200, channels=3, size=6)

    out = augment_batch(images, np.random.default_rng(7))

    used = set()
    for i in range(200):
        matches = [j for j, sym in enumerate(_all_symmetries(images[i]))
                   if np.array_equal(out[i], sym)]
        assert len(matches) == 1
        used.add(matches[0])
        for c in range(3):
            np.testing.assert_array_equal(np.sort(out[i, c].ravel()),
                                          np.sort(images[i, c].ravel()))
    assert used == set(range(8))
    np.testing.assert_array_equal(out, augment_batch(images, np.random.default_rng(7)))


def test_augment_pair_gives_two_different_views_of_each_galaxy():
    images = _asymmetric_images(100, size=4)

    first, second = augment_pair(images, np.random.default_rng(3))

    for i in range(100):
        symmetries = _all_symmetries(images[i])
        assert any(np.array_equal(first[i], s) for s in symmetries)
        assert any(np.array_equal(second[i], s) for s in symmetries)
        assert not np.array_equal(first[i], second[i])


def test_apply_dihedral_rejects_non_square_images():
    with pytest.raises(ValueError, match="square"):
        apply_dihedral(np.zeros((1, 1, 4, 5)), np.array([1]), np.array([False]))


def test_catalogue_scaling_imputes_the_training_mean_and_standardises():
    train = np.array([[1.0, 10.0], [3.0, np.nan], [5.0, 30.0], [np.nan, 20.0]])
    scaling = CatalogueScaling.fit(train, ["mag_r", "redshift"], missing_indicator=True)

    np.testing.assert_allclose(scaling.mean, [3.0, 20.0])
    np.testing.assert_allclose(scaling.std, [np.nanstd(train[:, 0]), np.nanstd(train[:, 1])])

    out = scaling.transform(np.array([[np.nan, 25.0], [4.0, np.nan]]))

    expected = np.array([
        [0.0, 5.0 / np.nanstd(train[:, 1]), 1.0, 0.0],
        [1.0 / np.nanstd(train[:, 0]), 0.0, 0.0, 1.0],
    ])
    np.testing.assert_allclose(out, expected, rtol=1e-6)
    assert scaling.output_columns == ("mag_r", "redshift", "mag_r_missing", "redshift_missing")


def test_catalogue_scaling_fill_value_is_in_raw_units_and_round_trips():
    train = np.array([[0.0], [2.0]])
    scaling = CatalogueScaling.fit(train, ["ebv"], null_strategy="fill", fill_value=-1.0)

    out = scaling.transform(np.array([[np.nan], [2.0]]))

    np.testing.assert_allclose(out[:, 0], [(-1.0 - 1.0) / 1.0, (2.0 - 1.0) / 1.0])
    rebuilt = CatalogueScaling.from_dict(json.loads(json.dumps(scaling.to_dict())))
    np.testing.assert_array_equal(rebuilt.transform(np.array([[np.nan]])),
                                  scaling.transform(np.array([[np.nan]])))


def test_catalogue_scaling_rejects_all_null_columns_and_centres_constant_ones():
    with pytest.raises(ValueError, match=r"\['w3'\]"):
        CatalogueScaling.fit(np.array([[1.0, np.nan], [2.0, np.nan]]), ["w1", "w3"])

    scaling = CatalogueScaling.fit(np.array([[4.0], [4.0]]), ["flag"])
    np.testing.assert_allclose(scaling.transform(np.array([[5.0]])), [[1.0]])
