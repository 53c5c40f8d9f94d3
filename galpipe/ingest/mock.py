"""A mock SDSS + WISE survey with known relations, generated in bounded memory.

Every galaxy is drawn from plain, documented relations, so tests and scaling runs have inputs
whose answers are known. Per galaxy (dex = log10, magnitudes AB for SDSS, Vega for WISE):

* stellar mass ``M`` ~ Normal(10.4, 0.55) dex clipped to [8, 12];
* class ``passive`` with probability 1 / (1 + exp(-(M - 10.6) / 0.3)), else ``star-forming``;
* redshift ``log10 z = -1.1 + 0.3 (M - 10.5) + N(0, 0.15)`` clipped to [0.005, 0.35]
  (a flux-limited survey sees massive galaxies further away);
* r-band mass-to-light ratio ``log M/L_r`` = 0.45 (passive) or 0.05 (star-forming) + N(0, 0.1),
  giving the absolute magnitude ``M_r = 4.65 - 2.5 (M - log M/L_r)``;
* rest-frame colours relative to r by class (passive redder), steepening with mass by
  0.1 mag/dex, scatter 0.05 mag; no k-correction;
* E(B-V) ~ 0.005 + Exponential(0.03), Galactic extinction A = R E(B-V) with SDSS R_ugriz
  = (4.24, 3.30, 2.29, 1.70, 1.26) (Schlafly & Finkbeiner 2011) included in the observed mags;
* apparent magnitude = absolute + distance modulus (Planck18, interpolated) + extinction;
  errors grow with magnitude, ``0.01 + 0.02 * 10^(0.4 (m - m_ref))``, and perturb the
  catalogue magnitudes; ``petro_flux`` is the catalogue magnitude in nanomaggies;
* half-light semi-major axis ``log R_e[kpc]`` = 0.65 + 0.2 (M - 10.5) (star-forming) or
  0.45 + 0.55 (M - 10.5) (passive), scatter 0.15 / 0.12 dex (Shen et al. 2003 slopes), bluer
  bands larger by a class-dependent colour gradient; angular size from the Planck18 angular
  diameter distance;
* Sersic n: lognormal around 1.2 (star-forming, clipped [0.5, 3]) or 4 (passive, [2, 6]);
* axis ratio: discs ``q = sqrt(cos^2 i (1 - 0.15^2) + 0.15^2)`` with cos i uniform; passive
  N(0.75, 0.15) clipped [0.3, 1]; catalogue b/a per band = q + N(0, 0.02);
* catalogue R50 = circularised half-light radius ``R_e sqrt(q)`` (arcsec, 3% scatter) and R90
  from the Sersic profile, ``R50 (x90 / x50)^n`` with ``x_f = P^-1(2n, f)``;
* WISE: ``W1 = 3.24 - 2.5 (M + 0.3) + DM`` (M/L_W1 = 0.5, Vega), W1 - W2 ~ N(0, 0.05) plus
  0.1 for star-forming, W2 - W3 = 3.0 (star-forming) or 1.0 (passive) +- 0.3.

Images (5 x 64 x 64, 0.396"/px, nanomaggies per pixel): an elliptical Sersic profile per band,
``I(r) ~ exp(-b_n ((r / R_e)^(1/n) - 1))`` with the Ciotti & Bertin (1999) approximation of
b_n, evaluated at pixel centres with the radius softened by 0.4 px (the cusp of n = 4 profiles
would otherwise put most of the flux in one sampled point), scaled so that the stamp holds the
galaxy's true flux times the fraction of the Sersic light inside the stamp's inscribed ellipse;
then convolved with a Gaussian PSF (seeing FWHM ~ N(1.3", 0.2") per galaxy, wider in bluer
bands) by FFT, and Gaussian sky noise (sigma_ugriz = 0.07, 0.025, 0.027, 0.04, 0.13 nMgy/px,
SDSS-like) added.

Randomness: chunk k draws from ``SeedSequence([seed, k])``, so output is a function of
(seed, chunk_size); galaxy ids are running integers from ``id_offset``, independent of the seed;
splits are a seeded hash of the id (:func:`galpipe.ingest.splits.assign_split_streaming`).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import scipy.fft
from scipy.special import gammainc, gammaincinv

from galpipe.ingest.splits import DEFAULT_FRACTIONS, assign_split_streaming
from galpipe.ingest.tables import cutouts_batch, cutouts_schema, galaxies_table

log = logging.getLogger(__name__)

BANDS = ("u", "g", "r", "i", "z")
WISE_BANDS = ("w1", "w2", "w3")
PIXEL_SCALE_ARCSEC = 0.396
EXTINCTION_R = np.array([4.24, 3.30, 2.29, 1.70, 1.26])
SKY_SIGMA_NMGY = np.array([0.07, 0.025, 0.027, 0.04, 0.13], dtype=np.float32)
MAG_ERROR_REFERENCE = np.array([18.0, 19.5, 19.5, 19.0, 18.0])
SOFTENING_PX = 0.4
RENDER_BLOCK = 256
"""Galaxies rendered together: bounds the temporaries to about 100 MB at 64 x 64."""
CLASSES = ("star-forming", "passive")

# Rest-frame colours (band - r) for (star-forming, passive), mag.
_COLOURS = np.array([[1.5, 0.45, 0.0, -0.25, -0.4],
                     [2.5, 0.75, 0.0, -0.40, -0.7]])
# Half-light radius of each band relative to r (bluer bands larger in discs).
_SIZE_GRADIENT = np.array([[1.15, 1.07, 1.0, 0.96, 0.93],
                           [1.05, 1.02, 1.0, 0.99, 0.98]])
_SEEING_BAND = np.array([1.10, 1.05, 1.0, 0.97, 0.95])


def sersic_b(n: np.ndarray) -> np.ndarray:
    """b_n with P(2n, b_n) = 1/2 (half the light inside R_e), Ciotti & Bertin (1999) series."""
    n = np.asarray(n, dtype=np.float64)
    return 2.0 * n - 1.0 / 3.0 + 4.0 / (405.0 * n) + 46.0 / (25515.0 * n**2)


@functools.lru_cache(maxsize=1)
def _distance_grid() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Redshift grid with Planck18 distance modulus (mag) and angular diameter distance (Mpc)."""
    from astropy.cosmology import Planck18

    z = np.linspace(0.001, 0.5, 1000)
    return z, Planck18.distmod(z).value, Planck18.angular_diameter_distance(z).value


def distance_modulus(z: np.ndarray) -> np.ndarray:
    """Planck18 distance modulus (mag) of redshifts in [0.001, 0.5], linear interpolation."""
    grid, modulus, _ = _distance_grid()
    return np.interp(z, grid, modulus)


def kpc_per_arcsec(z: np.ndarray) -> np.ndarray:
    """Planck18 proper size of one arcsec (kpc) at redshift z."""
    grid, _, angular_mpc = _distance_grid()
    return np.interp(z, grid, angular_mpc) * 1e3 * np.pi / (180.0 * 3600.0)


def draw_galaxies(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    """Physical properties and catalogue columns of n mock galaxies (see the module docstring).

    Returns arrays of shape (n,) keyed by galaxies column (``stellar_mass``, ``redshift``,
    ``class``, ``mag_u`` ...), plus private rendering inputs starting with ``_``:
    ``_flux`` (n, 5) true flux in nanomaggies, ``_r_e_arcsec`` (n, 5) semi-major half-light
    radius, ``_sersic_n`` (n, 5), ``_q`` (n,), ``_seeing_arcsec`` (n,).
    """
    stellar_mass = np.clip(rng.normal(10.4, 0.55, n), 8.0, 12.0)
    passive = rng.random(n) < 1.0 / (1.0 + np.exp(-(stellar_mass - 10.6) / 0.3))
    kind = passive.astype(np.int64)
    redshift = np.clip(10 ** (-1.1 + 0.3 * (stellar_mass - 10.5) + rng.normal(0, 0.15, n)),
                       0.005, 0.35)
    ebv = 0.005 + rng.exponential(0.03, n)
    modulus = distance_modulus(redshift)

    log_ml_r = np.where(passive, 0.45, 0.05) + rng.normal(0, 0.1, n)
    abs_r = 4.65 - 2.5 * (stellar_mass - log_ml_r)
    direction = np.sign(_COLOURS[kind])
    colours = (_COLOURS[kind] + direction * 0.1 * (stellar_mass - 10.5)[:, None]
               + direction * rng.normal(0, 0.05, (n, 5)))
    true_mag = abs_r[:, None] + colours + modulus[:, None] + EXTINCTION_R * ebv[:, None]
    mag_err = 0.01 + 0.02 * 10 ** (0.4 * (true_mag - MAG_ERROR_REFERENCE))
    mag = true_mag + rng.normal(0, 1, (n, 5)) * mag_err

    r_e_kpc = 10 ** np.where(passive, 0.45 + 0.55 * (stellar_mass - 10.5),
                             0.65 + 0.2 * (stellar_mass - 10.5))
    r_e_kpc *= 10 ** rng.normal(0, np.where(passive, 0.12, 0.15))
    r_e_arcsec = (r_e_kpc / kpc_per_arcsec(redshift))[:, None] * _SIZE_GRADIENT[kind]
    n_sersic = np.where(passive, np.clip(4.0 * 10 ** rng.normal(0, 0.1, n), 2.0, 6.0),
                        np.clip(1.2 * 10 ** rng.normal(0, 0.15, n), 0.5, 3.0))
    n_band = np.clip(n_sersic[:, None] * (1 + 0.03 * (np.arange(5) - 2)), 0.5, 6.0)
    cos_i = rng.random(n)
    q = np.where(passive, np.clip(rng.normal(0.75, 0.15, n), 0.3, 1.0),
                 np.sqrt(cos_i**2 * (1 - 0.15**2) + 0.15**2))

    r50 = r_e_arcsec * np.sqrt(q)[:, None] * (1 + rng.normal(0, 0.03, (n, 5)))
    r90 = r50 * (gammaincinv(2 * n_band, 0.9) / gammaincinv(2 * n_band, 0.5)) ** n_band
    w1 = 3.24 - 2.5 * (stellar_mass + 0.3) + modulus + rng.normal(0, 0.1, n)
    w2 = w1 - rng.normal(0, 0.05, n) - np.where(passive, 0.0, 0.1)
    w3 = w2 - np.where(passive, 1.0, 3.0) + rng.normal(0, 0.3, n)
    w_err = [0.02 + 0.03 * 10 ** (0.4 * (w - ref)) for w, ref in ((w1, 15.0), (w2, 14.5))]

    columns: dict[str, np.ndarray] = {
        "stellar_mass": stellar_mass,
        "redshift": redshift,
        "class": np.array(CLASSES, dtype=object)[kind],
    }
    for j, band in enumerate(BANDS):
        columns[f"mag_{band}"] = mag[:, j]
    for j, band in enumerate(BANDS):
        columns[f"mag_err_{band}"] = mag_err[:, j]
    columns["mag_w1"] = w1 + rng.normal(0, 1, n) * w_err[0]
    columns["mag_w2"] = w2 + rng.normal(0, 1, n) * w_err[1]
    columns["mag_w3"] = w3
    columns["mag_err_w1"], columns["mag_err_w2"] = w_err
    for prefix, values in (("sersic_n", n_band * (1 + rng.normal(0, 0.05, (n, 5)))),
                           ("axis_ratio", np.clip(q[:, None] + rng.normal(0, 0.02, (n, 5)),
                                                  0.05, 1.0)),
                           ("r50", r50), ("r90", r90),
                           ("petro_flux", 10 ** (-0.4 * (mag - 22.5)))):
        for j, band in enumerate(BANDS):
            columns[f"{prefix}_{band}"] = values[:, j]
    columns["ebv"] = ebv

    columns["_flux"] = 10 ** (-0.4 * (true_mag - 22.5))
    columns["_r_e_arcsec"] = r_e_arcsec
    columns["_sersic_n"] = n_band
    columns["_q"] = q
    columns["_seeing_arcsec"] = np.clip(rng.normal(1.3, 0.2, n), 0.8, 2.2)
    return columns


def render_sersic(
    flux: np.ndarray,
    r_e_px: np.ndarray,
    sersic_n: np.ndarray,
    axis_ratio: np.ndarray,
    position_angle: np.ndarray,
    centre_offset: np.ndarray,
    psf_sigma_px: np.ndarray,
    size: int,
) -> np.ndarray:
    """Noise-free images of elliptical Sersic galaxies convolved with a Gaussian PSF.

    Parameters
    ----------
    flux:
        (B, C) total flux per band (any unit; the image is in that unit per pixel).
    r_e_px, sersic_n:
        (B, C) half-light semi-major axis (pixels, >= 0.3) and Sersic index per band.
    axis_ratio, position_angle:
        (B,) b/a in (0, 1] and major-axis angle (radians, from +x towards +y).
    centre_offset:
        (B, 2) (dx, dy) of the centre from the stamp centre ((size - 1) / 2), pixels.
    psf_sigma_px:
        (B, C) Gaussian PSF standard deviation, pixels.
    size:
        Stamp side H = W, pixels.

    Returns
    -------
    float32 (B, C, size, size). Each band sums to ``flux`` times the Sersic light fraction
    inside the stamp's inscribed ellipse (semi-major size / 2); the FFT convolution is
    circular, so it moves light across the stamp edges but conserves the sum.
    """
    n_gal, n_band = flux.shape
    coords = np.arange(size, dtype=np.float32) - (size - 1) / 2.0
    dx = coords[None, None, :] - centre_offset[:, 0, None, None].astype(np.float32)
    dy = coords[None, :, None] - centre_offset[:, 1, None, None].astype(np.float32)
    cos = np.cos(position_angle).astype(np.float32)[:, None, None]
    sin = np.sin(position_angle).astype(np.float32)[:, None, None]
    major = dx * cos + dy * sin
    minor = (dy * cos - dx * sin) / axis_ratio.astype(np.float32)[:, None, None]
    log_radius = 0.5 * np.log(major**2 + minor**2 + np.float32(SOFTENING_PX**2))

    b_n = sersic_b(sersic_n)
    inside = gammainc(2 * sersic_n, b_n * (0.5 * size / r_e_px) ** (1.0 / sersic_n))
    images = np.empty((n_gal, n_band, size, size), dtype=np.float32)
    for c in range(n_band):
        scaled = np.exp((log_radius - np.log(r_e_px[:, c]).astype(np.float32)[:, None, None])
                        / sersic_n[:, c].astype(np.float32)[:, None, None])
        profile = np.exp(-b_n[:, c].astype(np.float32)[:, None, None] * (scaled - 1))
        norm = flux[:, c] * inside[:, c] / profile.sum(axis=(1, 2), dtype=np.float64)
        images[:, c] = profile * norm.astype(np.float32)[:, None, None]

    ky = np.fft.fftfreq(size).astype(np.float32)
    kx = np.fft.rfftfreq(size).astype(np.float32)
    two_pi2_s2 = (2 * np.pi**2 * psf_sigma_px**2).astype(np.float32)[:, :, None, None]
    transfer = np.exp(-two_pi2_s2 * ky[:, None] ** 2) * np.exp(-two_pi2_s2 * kx[None, :] ** 2)
    spectrum = scipy.fft.rfft2(images, axes=(-2, -1))
    spectrum *= transfer
    return scipy.fft.irfft2(spectrum, s=(size, size), axes=(-2, -1)).astype(np.float32)


def render_mock_images(columns: dict[str, np.ndarray], rng: np.random.Generator,
                       size: int) -> np.ndarray:
    """Noisy (N, 5, size, size) float32 images in nanomaggies per pixel from
    :func:`draw_galaxies` output, rendered in blocks of ``RENDER_BLOCK`` galaxies."""
    n_gal = len(columns["stellar_mass"])
    images = np.empty((n_gal, len(BANDS), size, size), dtype=np.float32)
    position_angle = rng.uniform(0, np.pi, n_gal)
    centre_offset = rng.uniform(-0.5, 0.5, (n_gal, 2))
    r_e_px = np.maximum(columns["_r_e_arcsec"] / PIXEL_SCALE_ARCSEC, 0.3)
    psf_sigma_px = (columns["_seeing_arcsec"][:, None] * _SEEING_BAND
                    / (2 * np.sqrt(2 * np.log(2))) / PIXEL_SCALE_ARCSEC)
    for start in range(0, n_gal, RENDER_BLOCK):
        block = slice(start, start + RENDER_BLOCK)
        images[block] = render_sersic(
            columns["_flux"][block], r_e_px[block], columns["_sersic_n"][block],
            columns["_q"][block], position_angle[block], centre_offset[block],
            psf_sigma_px[block], size,
        )
        noise = rng.standard_normal(images[block].shape, dtype=np.float32)
        images[block] += noise * SKY_SIGMA_NMGY[:, None, None]
    return images


def mock_survey(
    n: int,
    *,
    seed: int,
    chunk_size: int = 10_000,
    image_size: int = 64,
    id_offset: int = 0,
    fractions: tuple[float, float, float] = DEFAULT_FRACTIONS,
) -> Iterator[tuple[pa.RecordBatch, pa.RecordBatch]]:
    """Stream a mock survey as (galaxies batch, cutouts batch) pairs of ``chunk_size`` rows.

    Parameters
    ----------
    n:
        Number of galaxies.
    seed:
        Seed of every random draw and of the split.
    chunk_size:
        Galaxies per yielded pair; memory holds one chunk (20 KB of pixels per galaxy at 64 x 64).
    image_size:
        Stamp side in pixels (0.396"/px).
    id_offset:
        First galaxy id; ids run ``id_offset, id_offset + 1, ...``.

    Yields
    ------
    A ``galaxies`` batch (contract columns, then the catalogue columns of the SDSS + WISE
    naming convention; metadata ``galpipe.mock = true``) and the matching ``cutouts`` batch
    (5 x image_size x image_size float32 nanomaggies, bands u, g, r, i, z).
    """
    if n < 0 or chunk_size < 1 or image_size < 8:
        raise ValueError(f"need n >= 0, chunk_size >= 1 and image_size >= 8; got n={n}, "
                         f"chunk_size={chunk_size}, image_size={image_size}")
    schema = cutouts_schema(BANDS, image_size, image_size, "flux", metadata={
        b"galpipe.mock": b"true",
        b"galpipe.survey": b"mock",
        b"galpipe.flux_unit": b"nanomaggies",
        b"galpipe.pixel_scale_arcsec": str(PIXEL_SCALE_ARCSEC).encode(),
    })
    for chunk, start in enumerate(range(0, n, chunk_size)):
        # A helper builds each pair so that no local of this generator keeps the previous
        # chunk alive while the next one renders: peak memory stays at one chunk.
        yield _mock_chunk(seed, chunk, id_offset + start, min(chunk_size, n - start),
                          image_size, fractions, schema)


def _mock_chunk(seed: int, chunk: int, first_id: int, count: int, image_size: int,
                fractions: tuple[float, float, float],
                schema: pa.Schema) -> tuple[pa.RecordBatch, pa.RecordBatch]:
    """One (galaxies, cutouts) pair of the mock, drawn from ``SeedSequence([seed, chunk])``."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, chunk]))
    galaxy_ids = np.arange(first_id, first_id + count, dtype=np.int64)
    columns = draw_galaxies(rng, count)
    images = render_mock_images(columns, rng, image_size)

    core = {
        "galaxy_id": galaxy_ids,
        "ra": rng.uniform(0.0, 360.0, count),
        "dec": np.degrees(np.arcsin(rng.uniform(-1.0, 1.0, count))),
        "redshift": columns["redshift"],
        "stellar_mass": columns["stellar_mass"],
        "stellar_mass_source": pa.repeat(pa.scalar("mock"), count),
        "class": columns["class"],
        "split": assign_split_streaming(galaxy_ids, np.ones(count, bool), seed=seed,
                                        fractions=fractions),
    }
    extra = {k: v for k, v in columns.items() if k not in core and not k.startswith("_")}
    galaxies = galaxies_table(core, extra, survey="mock", mock=True).combine_chunks()
    return galaxies.to_batches()[0], cutouts_batch(galaxy_ids, images, schema)
