"""The streaming input pipeline equals the preprocessing applied directly with numpy."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest

from galpipe.bins import MassBins
from galpipe.contracts import load_contract
from galpipe.features import FeatureSet
from galpipe.storage import Provenance, Storage

pytestmark = pytest.mark.timeout(240)

BANDS = ("g", "r", "i")
BINS = MassBins(6.0, 12.5, 52)
SPLITS = np.array(["train", "validation", "test"])


def synthetic_survey(storage: Storage, n: int = 160, *, pixel_kind: str = "flux", size: int = 16,
                     seed: int = 0, key: str = "s1", missing_cutouts: int = 3) -> dict:
    """Write a small survey whose mass is predictable from magnitudes and image brightness.

    Galaxies: ids shuffled (not in file order), splits train/validation/test/inference, null
    masses for inference galaxies, nulls in mag_v, fluxes flux_g/r/i > 0. Cutouts: blobs whose
    amplitude grows with mass plus noise (negative pixels for ``flux``), one file per half, and
    ``missing_cutouts`` galaxies without an image. Returns the arrays used, for reference
    computations.
    """
    rng = np.random.default_rng(seed)
    galaxy_id = rng.permutation(np.arange(1000, 1000 + n)).astype(np.int64)
    split = SPLITS[rng.integers(0, 3, n)]
    split[rng.random(n) < 0.08] = "inference"
    split[:12] = "train"
    stellar_mass = rng.uniform(8.0, 11.5, n)
    stellar_mass[split == "inference"] = np.nan
    mag_b = 27.0 - 1.5 * stellar_mass + rng.normal(0, 0.1, n)
    mag_v = mag_b - 0.6 + rng.normal(0, 0.05, n)
    mag_v[rng.random(n) < 0.15] = np.nan
    pixel_scale = rng.uniform(0.5, 3.0, n)
    flux = 10 ** (0.3 * (stellar_mass[:, None] - 8.0)) * rng.uniform(0.5, 2.0, (n, 3))
    flux = np.where(np.isfinite(flux), flux, 1.0)
    flux[5, 0] = np.nan  # one training galaxy without a g-band flux

    def nullable(values):
        return pa.array(values, type=pa.float64(), mask=~np.isfinite(values))

    galaxies = pa.table({
        "galaxy_id": galaxy_id, "name": [f"G{i}" for i in galaxy_id],
        "ra": rng.uniform(0, 360, n), "dec": rng.uniform(-30, 60, n),
        "redshift": rng.uniform(0.001, 0.05, n), "stellar_mass": nullable(stellar_mass),
        "stellar_mass_source": ["mock"] * n, "class": ["spiral"] * n, "split": split,
        "mag_b": nullable(mag_b), "mag_v": nullable(mag_v), "pixel_scale": pixel_scale,
        "flux_g": nullable(flux[:, 0]), "flux_r": nullable(flux[:, 1]),
        "flux_i": nullable(flux[:, 2]),
    })
    provenance = Provenance(run_id="test", config_hash="synthetic")
    storage.write_table("galaxies", galaxies, key=key, provenance=provenance, row_group_size=64)

    yy, xx = np.mgrid[:size, :size] - (size - 1) / 2
    blob = np.exp(-(yy**2 + (xx / 1.5) ** 2) / 8.0)
    amplitude = np.nan_to_num(stellar_mass, nan=9.0) - 7.0
    images = amplitude[:, None, None, None] * blob * np.array([0.6, 1.0, 1.3])[:, None, None]
    images = images + rng.normal(0, 0.3, (n, 3, size, size))
    images[:, :, 0, :] += np.linspace(0, 1, size)  # breaks the square's symmetry
    if pixel_kind == "colour_uint8":
        images = np.clip(images * 40 + 20, 0, 255).astype(np.uint8)
    else:
        images = (images * 10).astype(np.float32)
    with_cutout = np.arange(n) >= missing_cutouts
    contract = load_contract("cutouts")
    pixel_type = pa.uint8() if pixel_kind == "colour_uint8" else pa.float32()
    metadata = dict(zip((k.encode() for k in contract.metadata_keys),
                        (",".join(BANDS).encode(), f"3,{size},{size}".encode(),
                         pixel_kind.encode())))
    schema = pa.schema([pa.field("galaxy_id", pa.int64(), nullable=False),
                        pa.field("image", pa.list_(pixel_type, 3 * size * size),
                                 nullable=False)], metadata=metadata)
    keep = np.flatnonzero(with_cutout)
    cutouts = pa.Table.from_arrays(
        [pa.array(galaxy_id[keep]),
         pa.FixedSizeListArray.from_arrays(pa.array(images[keep].reshape(-1), pixel_type),
                                           3 * size * size)], schema=schema)
    storage.write_table("cutouts", cutouts, key=key, provenance=provenance,
                        rows_per_file=len(keep) // 2 + 1, row_group_size=32)
    return {"galaxy_id": galaxy_id, "split": split, "stellar_mass": stellar_mass,
            "mag_b": mag_b, "mag_v": mag_v, "pixel_scale": pixel_scale, "flux": flux,
            "images": images, "with_cutout": with_cutout, "key": key}


@pytest.fixture(scope="module")
def flux_survey(tmp_path_factory):
    storage = Storage(tmp_path_factory.mktemp("flux_survey"))
    return storage, synthetic_survey(storage, pixel_kind="flux")


@pytest.fixture(scope="module")
def colour_survey(tmp_path_factory):
    storage = Storage(tmp_path_factory.mktemp("colour_survey"))
    return storage, synthetic_survey(storage, pixel_kind="colour_uint8", seed=1)


def collect(dataset) -> dict[str, np.ndarray]:
    """Every row of a dataset, sorted by galaxy_id."""
    batches = list(dataset.iter_batches(batch_size=None, batch_format="numpy"))
    merged = {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}
    order = np.argsort(merged["galaxy_id"])
    return {k: v[order] for k, v in merged.items()}


def dihedral_copies(image: np.ndarray) -> list[np.ndarray]:
    """The eight rotations/flips of one (C, H, W) image, by slow explicit loops."""
    copies = []
    for k in range(4):
        rotated = np.rot90(image, k, axes=(1, 2))
        copies += [rotated, rotated[:, :, ::-1]]
    return copies


OPTICAL = FeatureSet("optical", columns=("mag_b", "mag_v"), extra=("pixel_scale",))
NORMALISED = FeatureSet("norm_ig", bands=("i", "g"), extra=("pixel_scale",), flux_normalise=True,
                        flux_columns=("flux_i", "flux_g"))
COLOUR = FeatureSet("gri", bands=BANDS, extra=("pixel_scale",))


@pytest.fixture(scope="module")
def optical_pre(ray_local, flux_survey):
    from galpipe.data.pipeline import fit_preprocessor

    storage, s = flux_survey
    return fit_preprocessor(storage, s["key"], OPTICAL)


@pytest.fixture(scope="module")
def normalised_pre(ray_local, flux_survey):
    from galpipe.data.pipeline import fit_preprocessor

    storage, s = flux_survey
    return fit_preprocessor(storage, s["key"], NORMALISED, s["key"],
                            flux_percentiles=(10.0, 0.1))


@pytest.fixture(scope="module")
def normalised_rows(flux_survey, normalised_pre):
    """Validation, test and inference galaxies of the flux-normalised set, not augmented."""
    from galpipe.data.pipeline import galaxy_dataset

    storage, s = flux_survey
    return collect(galaxy_dataset(storage, s["key"], s["key"], NORMALISED, BINS, normalised_pre,
                                  splits=("validation", "test", "inference"), training=False,
                                  seed=0))


@pytest.fixture(scope="module")
def colour_pre(ray_local, colour_survey):
    from galpipe.data.pipeline import fit_preprocessor

    storage, s = colour_survey
    return fit_preprocessor(storage, s["key"], COLOUR, s["key"])


def test_statistics_equal_numpy_on_the_training_split(flux_survey, optical_pre, normalised_pre):
    _, s = flux_survey
    train = s["split"] == "train"
    for column, mean, std in zip(("mag_b", "mag_v", "pixel_scale"), optical_pre.catalogue.mean,
                                 optical_pre.catalogue.std):
        values = s[column][train]
        assert mean == pytest.approx(np.nanmean(values), rel=1e-12)
        assert std == pytest.approx(np.nanstd(values), rel=1e-12)
    assert optical_pre.n_train == train.sum()

    flux_i, flux_g = s["flux"][train, 2], s["flux"][train, 0]
    assert np.isnan(flux_g).any()
    np.testing.assert_allclose(normalised_pre.flux_floor, [np.percentile(flux_i, 10.0),
                                                           np.nanpercentile(flux_g, 0.1)],
                               rtol=1e-12)


def test_catalogue_batches_equal_numpy_standardisation(flux_survey, optical_pre):
    from galpipe.data.pipeline import galaxy_dataset

    storage, s = flux_survey
    rows = collect(galaxy_dataset(storage, s["key"], None, OPTICAL, BINS, optical_pre,
                                  splits=("train", "validation"), training=True, seed=0))

    chosen = np.isin(s["split"], ["train", "validation"])
    order = np.argsort(s["galaxy_id"][chosen])
    np.testing.assert_array_equal(rows["galaxy_id"], s["galaxy_id"][chosen][order])
    train = s["split"] == "train"
    expected = []
    for column in ("mag_b", "mag_v", "pixel_scale"):
        values = s[column][chosen][order]
        mean, std = np.nanmean(s[column][train]), np.nanstd(s[column][train])
        expected.append(np.where(np.isnan(values), 0.0, (values - mean) / std))
    assert np.isnan(s["mag_v"][chosen]).any()
    np.testing.assert_allclose(rows["features"], np.stack(expected, 1), rtol=1e-5, atol=1e-6)
    assert rows["features"].dtype == np.float32
    mass = s["stellar_mass"][chosen][order]
    np.testing.assert_array_equal(rows["stellar_mass"], mass)
    np.testing.assert_array_equal(rows["bin"], np.floor((mass - 6.0) / 0.125).astype(np.int64))


def test_flux_normalised_images_equal_numpy_log_stretch(flux_survey, normalised_pre,
                                                        normalised_rows):
    _, s = flux_survey
    rows = normalised_rows
    flux_ok = np.isfinite(s["flux"][:, [2, 0]]).all(axis=1)
    chosen = (np.isin(s["split"], ["validation", "test", "inference"]) & s["with_cutout"]
              & flux_ok)
    order = np.argsort(s["galaxy_id"][chosen])
    np.testing.assert_array_equal(rows["galaxy_id"], s["galaxy_id"][chosen][order])
    raw = s["images"][chosen][order][:, [2, 0]].astype(np.float64)
    flux = np.maximum(s["flux"][chosen][order][:, [2, 0]], normalised_pre.flux_floor)
    scaled = raw / flux[:, :, None, None]
    expected = np.where(scaled > 0, np.log1p(np.abs(scaled)), -np.log1p(np.abs(scaled)))
    assert rows["image"].shape == (chosen.sum(), 2, 16, 16)
    np.testing.assert_allclose(rows["image"], expected, rtol=1e-5, atol=1e-6)
    assert (rows["image"] < 0).any()
    assert np.all(rows["bin"][np.isnan(rows["stellar_mass"])] == -1)
    assert (rows["bin"] == -1).any()


def test_colour_images_are_only_scaled_and_augmented_only_in_training(colour_survey,
                                                                      colour_pre):
    from galpipe.data.pipeline import galaxy_dataset

    storage, s = colour_survey
    kwargs = {"splits": ("train",), "seed": 3}
    plain = collect(galaxy_dataset(storage, s["key"], s["key"], COLOUR, BINS, colour_pre,
                                   training=False, **kwargs))
    chosen = (s["split"] == "train") & s["with_cutout"]
    order = np.argsort(s["galaxy_id"][chosen])
    np.testing.assert_allclose(plain["image"], s["images"][chosen][order] / 255.0, rtol=1e-6)
    scale = s["pixel_scale"]
    np.testing.assert_allclose(plain["features"][:, 0],
                               (scale[chosen][order] - scale[s["split"] == "train"].mean())
                               / scale[s["split"] == "train"].std(), rtol=1e-5)

    augmented = collect(galaxy_dataset(storage, s["key"], s["key"], COLOUR, BINS, colour_pre,
                                       training=True, **kwargs))
    np.testing.assert_array_equal(plain["galaxy_id"], augmented["galaxy_id"])
    np.testing.assert_array_equal(plain["features"], augmented["features"])
    matched = []
    for original, seen in zip(plain["image"], augmented["image"]):
        hits = [i for i, copy in enumerate(dihedral_copies(original))
                if np.array_equal(copy, seen)]
        assert hits, "an augmented image is not a rotation/flip of its original"
        matched.append(hits[0])
    assert len(set(matched)) >= 4  # about 60 images over 8 symmetries: many distinct ones
    assert np.mean(np.array(matched) == 0) < 0.5


def test_transform_draws_rotations_from_the_given_generator(flux_survey):
    from galpipe.data.pipeline import ImageSource, Preprocessor
    from galpipe.data.preprocess import CatalogueScaling

    _, s = flux_survey
    fs = FeatureSet("r_only", bands=("r",))
    pre = Preprocessor(fs, None, ImageSource(BANDS, (3, 16, 16), "flux"))
    batch = {"galaxy_id": s["galaxy_id"][:20], "stellar_mass": s["stellar_mass"][:20],
             "image": s["images"][:20]}
    out = pre.transform(batch, training=True, rng=np.random.default_rng(7))
    codes = np.random.default_rng(7).integers(0, 8, size=20)
    stretched = np.sign(s["images"][:20, 1:2]) * np.log1p(np.abs(s["images"][:20, 1:2]))
    for image, code, seen in zip(stretched, codes, out["image"]):
        expected = np.rot90(image, code % 4, axes=(1, 2))
        expected = expected[:, :, ::-1] if code >= 4 else expected
        np.testing.assert_allclose(seen, expected, rtol=1e-6)
    assert out["features"].shape == (20, 0)
    with pytest.raises(ValueError, match="rng"):
        pre.transform(batch, training=True)

    scaling = CatalogueScaling(("mag_b",), np.array([20.0]), np.array([2.0]))
    restored = Preprocessor.from_dict(json.loads(json.dumps(
        Preprocessor(OPTICAL, scaling, None).to_dict())))
    assert restored.catalogue.mean.tolist() == [20.0] and restored.feature_set == OPTICAL


def test_broadcast_lookup_equals_ray_data_join(flux_survey, normalised_pre, normalised_rows):
    from galpipe.data.pipeline import galaxy_dataset

    storage, s = flux_survey
    joined = collect(galaxy_dataset(storage, s["key"], s["key"], NORMALISED, BINS,
                                    normalised_pre, splits=("validation", "test", "inference"),
                                    training=False, seed=0, join="shuffle", max_actors=1))
    assert list(joined) == list(normalised_rows)
    for name in joined:
        np.testing.assert_array_equal(joined[name], normalised_rows[name])
    assert len(joined["galaxy_id"]) > 40


def test_mass_histograms_count_the_trainable_galaxies(ray_local, flux_survey):
    from scipy.stats import entropy

    from galpipe.data.pipeline import mass_histograms, prior_entropy

    storage, s = flux_survey
    counts = mass_histograms(storage, s["key"], s["key"], NORMALISED, BINS)
    flux_ok = np.isfinite(s["flux"][:, [2, 0]]).all(axis=1)
    for split in ("train", "validation"):
        chosen = (s["split"] == split) & s["with_cutout"] & flux_ok
        expected = np.bincount(BINS.index(s["stellar_mass"][chosen]), minlength=BINS.n_bins)
        np.testing.assert_array_equal(counts[split], expected)
    assert prior_entropy(counts["train"]) == pytest.approx(entropy(counts["train"]), rel=1e-12)

    catalogue_counts = mass_histograms(storage, s["key"], None, OPTICAL, BINS, splits=("train",))
    train = s["split"] == "train"
    np.testing.assert_array_equal(catalogue_counts["train"],
                                  np.bincount(BINS.index(s["stellar_mass"][train]),
                                              minlength=BINS.n_bins))


def test_unknown_columns_and_bands_fail_before_reading(flux_survey):
    from galpipe.data.pipeline import Preprocessor, fit_preprocessor, galaxy_dataset

    storage, s = flux_survey
    with pytest.raises(ValueError, match="mag_x"):
        fit_preprocessor(storage, s["key"], FeatureSet("bad", columns=("mag_x",)))
    with pytest.raises(ValueError, match=r"\['z'\]"):
        fit_preprocessor(storage, s["key"], FeatureSet("bad", bands=("g", "z")), s["key"])
    with pytest.raises(ValueError, match="no cutouts"):
        galaxy_dataset(storage, s["key"], None, COLOUR, BINS, Preprocessor(COLOUR, None),
                       splits=None, training=False, seed=0)
