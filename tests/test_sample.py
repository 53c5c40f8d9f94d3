"""The bundled NGC/IC sample: loads from the repository, is valid, and matches its sources."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from galpipe.contracts import validate
from galpipe.ingest.ngc_ic import ngc_ic_galaxy_id, ngc_ic_name
from galpipe.ingest.sample import load_sample, sample_dir
from galpipe.ingest.tables import cutout_images

SOURCE = Path("/work/shared/data/sdss_ngc_ic_colour_jpegs")
C_KMS = 299_792.458


@pytest.fixture(scope="module")
def sample():
    return load_sample()


@pytest.fixture(scope="module")
def source_catalogue():
    if not (SOURCE / "ngc_ic_catalog.csv").exists():
        pytest.skip(f"{SOURCE} is not present (fresh clone): source cross-checks skipped")
    import pandas as pd

    catalogue = pd.read_csv(SOURCE / "ngc_ic_catalog.csv")
    labels = pd.read_csv(SOURCE / "image_labels.csv")
    assert (labels["image_filepath"] == catalogue["image"]).all()
    return catalogue


def test_sample_loads_valid_tables_with_matching_rows(sample):
    galaxies, cutouts = sample
    validate(galaxies, "galaxies")
    validate(cutouts, "cutouts")
    assert galaxies.num_rows == cutouts.num_rows == 3901
    ids = galaxies.column("galaxy_id").to_numpy()
    assert len(np.unique(ids)) == len(ids)
    assert (np.diff(ids) > 0).all()
    assert cutouts.column("galaxy_id").to_numpy().tolist() == ids.tolist()
    assert cutouts.schema.metadata[b"galpipe.bands"] == b"g,r,i"
    assert cutouts.schema.metadata[b"galpipe.image_shape"] == b"3,64,64"
    assert cutouts.schema.metadata[b"galpipe.pixel_kind"] == b"colour_uint8"
    assert galaxies.schema.metadata[b"galpipe.mock"] == b"false"
    assert sum(p.stat().st_size for p in sample_dir().rglob("*") if p.is_file()) < 40e6


def test_ids_encode_the_names(sample):
    galaxies, _ = sample
    names = galaxies.column("name").to_pylist()
    ids = galaxies.column("galaxy_id").to_pylist()
    assert [ngc_ic_name(i) for i in ids] == names
    assert ngc_ic_galaxy_id("NGC0224") == 224
    assert ngc_ic_galaxy_id("IC0732") == 100_732
    assert ngc_ic_galaxy_id("IC0732N") == 14 * 1_000_000 + 100_732


def test_split_follows_mass_and_class(sample):
    galaxies, _ = sample
    table = galaxies.to_pydict()
    has_mass = np.array([m is not None for m in table["stellar_mass"]])
    blank = np.array(table["image_blank"])
    split = np.array(table["split"])
    classes = np.array(table["class"])
    assert blank.sum() == 2
    assert ((split == "inference") == (~has_mass | blank)).all()
    for name in np.unique(classes):
        labelled = (classes == name) & has_mass & ~blank
        n_train, n_validation = round(0.7 * labelled.sum()), round(0.15 * labelled.sum())
        counts = Counter(split[labelled])
        assert (counts["train"], counts["validation"], counts["test"]) == (
            n_train, n_validation, labelled.sum() - n_train - n_validation)


def test_no_column_leaks_the_mass_recipe(sample):
    galaxies, _ = sample
    leaky = [c for c in galaxies.column_names
             if any(k in c.lower() for k in ("gmi", "abs_mag", "absmag", "mstar", "taylor",
                                             "mcgaugh", "gswlc", "logmass"))]
    assert leaky == []


def test_masses_and_sources_match_an_independent_selection(sample, source_catalogue):
    galaxies, _ = sample
    cat = source_catalogue
    velocity_gap = (cat["alfalfa_Vhelio"] - C_KMS * cat["Redshift"]).abs()
    alfalfa_ok = ~(velocity_gap > 300)
    expected_mass, expected_source = [], []
    for i in range(len(cat)):
        row = cat.iloc[i]
        for source, column, needs_check in (
            ("gswlc", "alfalfa_logMstarGSWLC", True), ("nibles", "nibles_logMstar", False),
            ("manga", "manga_photometric_logmass", False),
            ("taylor_gi", "alfalfa_logMstarTaylor", True),
        ):
            if np.isfinite(row[column]) and (alfalfa_ok.iloc[i] or not needs_check):
                expected_mass.append(row[column])
                expected_source.append(source)
                break
        else:
            expected_mass.append(np.nan)
            expected_source.append(None)

    by_name = {n: k for k, n in enumerate(galaxies.column("name").to_pylist())}
    order = np.array([by_name[n] for n in cat["Name"]])
    mass = galaxies.column("stellar_mass").to_numpy(zero_copy_only=False)[order]
    np.testing.assert_allclose(mass, np.array(expected_mass), equal_nan=True)
    source = np.array(galaxies.column("stellar_mass_source").to_pylist(), dtype=object)[order]
    assert source.tolist() == expected_source
    assert np.isfinite(expected_mass).sum() == 1726
    counts = Counter(s for s in expected_source if s)
    assert counts == {"gswlc": 698, "taylor_gi": 576, "nibles": 287, "manga": 165}

    np.testing.assert_allclose(galaxies.column("pixel_scale").to_numpy()[order],
                               4 * cat["pixscale_arcsec_assumed"].to_numpy())
    np.testing.assert_allclose(
        galaxies.column("axis_ratio").to_numpy()[order], cat["MinAx"] / cat["MajAx"])
    assert np.array(galaxies.column("class").to_pylist())[order].tolist() == cat["class"].tolist()


def test_pixels_are_box_reduced_jpegs_in_g_r_i_order(sample, source_catalogue):
    from PIL import Image

    galaxies, cutouts = sample
    names = galaxies.column("name").to_pylist()
    images = cutout_images(cutouts)
    for name in ("NGC2513", "IC0484", "NGC2488"):
        relative = source_catalogue.loc[source_catalogue["Name"] == name, "image"].item()
        rgb = np.asarray(Image.open(SOURCE / relative).convert("RGB"), dtype=np.float64)
        # Independent 4 x 4 block mean; Pillow's box filter rounds, so allow 1 count.
        blocks = rgb.reshape(64, 4, 64, 4, 3).mean(axis=(1, 3))
        got = images[names.index(name)].astype(np.float64)
        for plane, channel in enumerate((2, 1, 0)):
            assert np.abs(got[plane] - blocks[:, :, channel]).max() <= 1.0
    blank = galaxies.column("image_blank").to_pylist()
    assert sorted(n for n, b in zip(names, blank) if b) == ["NGC2488", "NGC2497"]
