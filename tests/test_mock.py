"""The mock survey: contract, determinism, bounded chunks and memory, and its relations."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pyarrow as pa
import pytest
from scipy.special import gammainc

from galpipe.contracts import validate
from galpipe.ingest.mock import (
    BANDS,
    distance_modulus,
    kpc_per_arcsec,
    mock_survey,
    render_sersic,
    sersic_b,
)
from galpipe.ingest.tables import cutout_images

CONVENTION = (
    [f"mag_{b}" for b in BANDS] + [f"mag_err_{b}" for b in BANDS]
    + ["mag_w1", "mag_w2", "mag_w3", "mag_err_w1", "mag_err_w2"]
    + [f"{p}_{b}" for p in ("sersic_n", "axis_ratio", "r50", "r90", "petro_flux") for b in BANDS]
    + ["ebv"]
)


@pytest.fixture(scope="module")
def survey():
    """600 galaxies with 64 x 64 images, as whole tables."""
    pairs = list(mock_survey(600, seed=7, chunk_size=300))
    galaxies = pa.Table.from_batches([g for g, _ in pairs])
    cutouts = pa.Table.from_batches([c for _, c in pairs])
    return galaxies, cutouts


def _col(table: pa.Table, name: str) -> np.ndarray:
    return table.column(name).to_numpy()


def test_batches_follow_the_contracts_and_naming_convention(survey):
    galaxies, cutouts = survey
    validate(galaxies, "galaxies")
    validate(cutouts, "cutouts")
    assert galaxies.schema.metadata[b"galpipe.mock"] == b"true"
    assert cutouts.schema.metadata[b"galpipe.mock"] == b"true"
    assert cutouts.schema.metadata[b"galpipe.image_shape"] == b"5,64,64"
    assert cutouts.schema.metadata[b"galpipe.bands"] == b"u,g,r,i,z"
    assert galaxies.column_names[9:] == CONVENTION
    assert all(galaxies.column(c).null_count == 0 for c in CONVENTION)
    assert (_col(galaxies, "ebv") > 0).all()
    assert set(galaxies.column("split").to_pylist()) == {"train", "validation", "test"}


def test_chunks_are_bounded_ids_run_and_output_is_deterministic():
    first = list(mock_survey(25, seed=3, chunk_size=10, image_size=16))
    assert [(g.num_rows, c.num_rows) for g, c in first] == [(10, 10), (10, 10), (5, 5)]
    ids = np.concatenate([g.column("galaxy_id").to_numpy() for g, _ in first])
    assert ids.tolist() == list(range(25))

    again = list(mock_survey(25, seed=3, chunk_size=10, image_size=16))
    other = list(mock_survey(25, seed=4, chunk_size=10, image_size=16))
    for (g1, c1), (g2, c2), (g3, c3) in zip(first, again, other):
        assert g1.equals(g2) and c1.equals(c2)
        assert g3.column("galaxy_id").equals(g1.column("galaxy_id"))
        assert not g3.column("stellar_mass").equals(g1.column("stellar_mass"))
        assert not c3.column("image").equals(c1.column("image"))


def test_photometry_follows_mass_distance_and_class(survey):
    galaxies, _ = survey
    mass = _col(galaxies, "stellar_mass")
    redshift = _col(galaxies, "redshift")
    passive = np.array(galaxies.column("class").to_pylist()) == "passive"
    modulus = distance_modulus(redshift)

    absolute_r = _col(galaxies, "mag_r") - modulus
    absolute_w1 = _col(galaxies, "mag_w1") - modulus
    assert np.corrcoef(mass, absolute_r)[0, 1] < -0.9
    assert np.corrcoef(mass, absolute_w1)[0, 1] < -0.95
    assert np.corrcoef(mass, np.log10(redshift))[0, 1] > 0.5
    # Apparent r of star-forming galaxies: -2.5 mag/dex in mass (fixed mean M/L) and
    # 5 mag/dex in distance (distance modulus, D_L ~ z at these redshifts).
    design = np.column_stack([np.ones(len(mass)), mass, np.log10(redshift)])[~passive]
    _, per_dex_mass, per_dex_z = np.linalg.lstsq(design, _col(galaxies, "mag_r")[~passive],
                                                 rcond=None)[0]
    assert -2.8 < per_dex_mass < -2.2
    assert 4.6 < per_dex_z < 5.8

    high, low = mass > 11.0, mass < 10.0
    assert passive[high].mean() > 0.7 > 0.3 > passive[low].mean()
    g_r = _col(galaxies, "mag_g") - _col(galaxies, "mag_r")
    assert np.median(g_r[passive]) - np.median(g_r[~passive]) > 0.2
    assert np.median(_col(galaxies, "sersic_n_r")[passive]) > 3
    assert np.median(_col(galaxies, "sersic_n_r")[~passive]) < 1.6
    w2_w3 = _col(galaxies, "mag_w2") - _col(galaxies, "mag_w3")
    assert np.median(w2_w3[~passive]) - np.median(w2_w3[passive]) > 1.5

    order = np.argsort(_col(galaxies, "mag_r"))
    errors = _col(galaxies, "mag_err_r")[order]
    assert errors[-60:].mean() > errors[:60].mean()
    r90_over_r50 = _col(galaxies, "r90_r") / _col(galaxies, "r50_r")
    assert np.median(r90_over_r50[passive]) > np.median(r90_over_r50[~passive])

    size_kpc = _col(galaxies, "r50_r") * kpc_per_arcsec(redshift)
    assert np.corrcoef(mass[passive], np.log10(size_kpc[passive]))[0, 1] > 0.5


def test_image_flux_follows_catalogue_flux(survey):
    galaxies, cutouts = survey
    images = cutout_images(cutouts).astype(np.float64)
    for band in ("g", "r", "i"):
        image_flux = images[:, BANDS.index(band)].sum(axis=(1, 2))
        catalogue_flux = _col(galaxies, f"petro_flux_{band}")
        assert np.corrcoef(np.log10(np.clip(image_flux, 1e-3, None)),
                           np.log10(catalogue_flux))[0, 1] > 0.95
        # Compact galaxies keep all their light inside the stamp: sums agree to a few percent
        # (catalogue magnitude errors and sky noise, 0.03 nMgy/px x 64 px rms).
        compact = _col(galaxies, f"r90_{band}") < 6.0
        ratio = image_flux[compact] / catalogue_flux[compact]
        assert compact.sum() > 50
        assert abs(np.median(ratio) - 1) < 0.03


def test_sersic_b_gives_half_the_light_inside_r_e():
    n = np.array([0.5, 1.0, 2.0, 4.0, 6.0, 8.0])
    np.testing.assert_allclose(gammainc(2 * n, sersic_b(n)), 0.5, atol=1e-3)


@pytest.mark.parametrize("n_sersic", [1.0, 4.0])
def test_rendered_profile_holds_half_its_light_inside_r_e(n_sersic):
    size, r_e, q = 128, 8.0, 0.6
    image = render_sersic(
        flux=np.array([[1000.0]]), r_e_px=np.array([[r_e]]), sersic_n=np.array([[n_sersic]]),
        axis_ratio=np.array([q]), position_angle=np.array([0.5]),
        centre_offset=np.zeros((1, 2)), psf_sigma_px=np.array([[0.05]]), size=size,
    )[0, 0].astype(np.float64)

    inside_stamp = gammainc(2 * n_sersic, sersic_b(n_sersic) * (size / 2 / r_e) ** (1 / n_sersic))
    assert image.sum() == pytest.approx(1000.0 * inside_stamp, rel=1e-4)
    y, x = np.mgrid[:size, :size] - (size - 1) / 2
    major = x * np.cos(0.5) + y * np.sin(0.5)
    minor = (y * np.cos(0.5) - x * np.sin(0.5)) / q
    within = np.hypot(major, minor) <= r_e
    assert image[within].sum() / 1000.0 == pytest.approx(0.5, abs=0.03)


def test_psf_spreads_a_point_source_to_its_gaussian_width():
    sigma = 2.0
    image = render_sersic(
        flux=np.array([[1.0]]), r_e_px=np.array([[0.3]]), sersic_n=np.array([[0.5]]),
        axis_ratio=np.array([1.0]), position_angle=np.array([0.0]),
        centre_offset=np.zeros((1, 2)), psf_sigma_px=np.array([[sigma]]), size=48,
    )[0, 0].astype(np.float64)
    y, x = np.mgrid[:48, :48] - 23.5
    variance = (image * x**2).sum() / image.sum()
    # Point source of r_e = 0.3 px plus the softened core adds ~0.2 px^2 to sigma^2.
    assert variance == pytest.approx(sigma**2, abs=0.4)
    assert image.sum() == pytest.approx(1.0, rel=1e-4)


def test_memory_is_flat_in_the_number_of_galaxies():
    def peak(n: int) -> int:
        tracemalloc.start()
        for galaxies, cutouts in mock_survey(n, seed=1, chunk_size=100, image_size=32):
            assert galaxies.num_rows <= 100 and cutouts.num_rows <= 100
        _, top = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        return top

    peak(100)  # warm caches (distance grid, imports) outside the measurement
    small, large = peak(200), peak(1000)
    assert large / small < 1.3
