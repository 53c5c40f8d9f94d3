"""The reference implementation's .npz pair into galaxies and streamed cutouts."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from galpipe.contracts import validate
from galpipe.ingest.reference_npz import read_reference_npz, reference_cutout_batches
from galpipe.ingest.tables import IngestError, cutout_images

N = 12
BANDS = "ugriz"


def _catalogue(rng: np.random.Generator) -> dict[str, np.ndarray]:
    mass = rng.uniform(9, 11.5, N)
    mass[5] = -9999.0
    return {
        "ra": rng.uniform(0, 360, N), "dec": rng.uniform(-10, 10, N),
        "z": rng.uniform(0.01, 0.2, N), "mass": mass, "ebv": rng.uniform(0.01, 0.1, N),
        "mag": rng.uniform(14, 18, (N, 5)), "magerr": rng.uniform(0.01, 0.05, (N, 5)),
        "w1": rng.uniform(12, 15, N),
        "id_train": np.array([0, 1, 2, 3, 4, 6]), "id_validation": np.array([7, 8]),
        "id_test": np.array([9, 10]),
    }


def _images(rng: np.random.Generator, rows: int = N, side: int = 8) -> dict[str, np.ndarray]:
    return {f"img_{b}": rng.normal(size=(rows, side, side)).astype(np.float32) for b in BANDS}


@pytest.fixture
def pair(tmp_path):
    rng = np.random.default_rng(4)
    catalogue, images = _catalogue(rng), _images(rng)
    np.savez(tmp_path / "cat.npz", **catalogue)
    np.savez_compressed(tmp_path / "img.npz", **images)
    return tmp_path, catalogue, images


def test_pair_round_trips_into_valid_tables(pair):
    folder, catalogue, images = pair
    galaxies, batches = read_reference_npz(folder / "cat.npz", folder / "img.npz", batch_size=5)
    batches = list(batches)

    validate(galaxies, "galaxies")
    assert galaxies.column("galaxy_id").to_pylist() == list(range(N))
    np.testing.assert_array_equal(galaxies.column("ra").to_numpy(), catalogue["ra"])
    np.testing.assert_array_equal(galaxies.column("redshift").to_numpy(), catalogue["z"])
    assert galaxies.column("stellar_mass").to_pylist()[5] is None
    for j, band in enumerate(BANDS):
        np.testing.assert_array_equal(galaxies.column(f"mag_{band}").to_numpy(),
                                      catalogue["mag"][:, j])
        np.testing.assert_array_equal(galaxies.column(f"magerr_{band}").to_numpy(),
                                      catalogue["magerr"][:, j])
    assert "ebv" in galaxies.column_names and "w1" in galaxies.column_names
    expected_split = ["train"] * 5 + ["inference", "train", "validation", "validation", "test",
                                      "test", "inference"]
    assert galaxies.column("split").to_pylist() == expected_split

    assert [b.num_rows for b in batches] == [5, 5, 2]
    cutouts = pa.Table.from_batches(batches)
    validate(cutouts, "cutouts")
    assert cutouts.schema.metadata[b"galpipe.bands"] == b"u,g,r,i,z"
    assert cutouts.schema.metadata[b"galpipe.image_shape"] == b"5,8,8"
    np.testing.assert_array_equal(cutout_images(cutouts),
                                  np.stack([images[f"img_{b}"] for b in BANDS], axis=1))


def test_custom_array_names_and_ids(tmp_path):
    rng = np.random.default_rng(1)
    catalogue = _catalogue(rng)
    renamed = {"RA_deg": catalogue["ra"], "DEC_deg": catalogue["dec"], "lgm": catalogue["mass"],
               "objid": np.arange(N) * 10 + 7, "tr": catalogue["id_train"],
               "va": catalogue["id_validation"], "te": catalogue["id_test"],
               "petro": catalogue["mag"]}
    np.savez(tmp_path / "cat.npz", **renamed)
    np.savez(tmp_path / "img.npz", **{f"cut_{b}": v for b, v in _images(rng).items()})

    galaxies, batches = read_reference_npz(
        tmp_path / "cat.npz", tmp_path / "img.npz",
        arrays={"ra": "RA_deg", "dec": "DEC_deg", "stellar_mass": "lgm", "mag_r": "petro[2]"},
        split_arrays={"train": "tr", "validation": "va", "test": "te"}, id_array="objid",
        bands=["g", "r"], image_key="cut_img_{band}",
    )
    assert galaxies.column_names[-1] == "mag_r"
    np.testing.assert_array_equal(galaxies.column("mag_r").to_numpy(), catalogue["mag"][:, 2])
    cutouts = pa.Table.from_batches(list(batches))
    assert cutouts.column("galaxy_id").to_pylist() == (np.arange(N) * 10 + 7).tolist()
    assert cutout_images(cutouts).shape == (N, 2, 8, 8)


def _write(tmp_path, catalogue, images):
    np.savez(tmp_path / "cat.npz", **catalogue)
    np.savez(tmp_path / "img.npz", **images)
    return tmp_path / "cat.npz", tmp_path / "img.npz"


def test_catalogue_errors_name_the_arrays(tmp_path):
    rng = np.random.default_rng(2)
    images = _images(rng)

    short = _catalogue(rng) | {"z": np.zeros(N - 1)}
    with pytest.raises(IngestError, match=r"cat\.npz: arrays have different lengths.*'z': 11"):
        read_reference_npz(*_write(tmp_path, short, images))

    no_ra = {k: v for k, v in _catalogue(rng).items() if k != "ra"}
    with pytest.raises(IngestError, match=r"needs \['ra'\].*available arrays"):
        read_reference_npz(*_write(tmp_path, no_ra, images))
    with pytest.raises(IngestError, match=r"no array 'lgm'; available: \['dec'"):
        read_reference_npz(*_write(tmp_path, _catalogue(rng), images),
                           arrays={"ra": "ra", "dec": "dec", "stellar_mass": "lgm"})

    overlap = _catalogue(rng) | {"id_test": np.array([8, 11])}
    with pytest.raises(IngestError, match=r"'id_validation' and 'id_test' share row indices \[8\]"):
        read_reference_npz(*_write(tmp_path, overlap, images))
    outside = _catalogue(rng) | {"id_test": np.array([9, 12, -1])}
    with pytest.raises(IngestError, match=r"'id_test' has row indices \[12, -1\] outside"):
        read_reference_npz(*_write(tmp_path, outside, images))
    floats = _catalogue(rng) | {"id_train": np.array([0.0, 1.0])}
    with pytest.raises(IngestError, match=r"'id_train' must be 1-D integers"):
        read_reference_npz(*_write(tmp_path, floats, images))
    unlabelled = _catalogue(rng) | {"id_test": np.array([5, 9])}
    with pytest.raises(IngestError, match=r"need a stellar mass.*row\(s\) 5"):
        read_reference_npz(*_write(tmp_path, unlabelled, images))


def test_image_errors_name_the_arrays(tmp_path):
    rng = np.random.default_rng(3)
    catalogue = _catalogue(rng)

    missing_band = {k: v for k, v in _images(rng).items() if k != "img_z"}
    with pytest.raises(IngestError, match=r"lacks image array\(s\) \['img_z'\]"):
        read_reference_npz(*_write(tmp_path, catalogue, missing_band))

    wrong_rows = _images(rng) | {"img_r": np.zeros((N - 2, 8, 8), np.float32)}
    with pytest.raises(IngestError, match=r"shape \(12, H, W\).*'img_r': \(10, 8, 8\)"):
        read_reference_npz(*_write(tmp_path, catalogue, wrong_rows))

    wrong_side = _images(rng) | {"img_g": np.zeros((N, 9, 9), np.float32)}
    with pytest.raises(IngestError, match=r"'img_g': \(12, 9, 9\)"):
        read_reference_npz(*_write(tmp_path, catalogue, wrong_side))

    (tmp_path / "broken.npz").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(IngestError, match=r"cannot read npz file .*broken\.npz"):
        reference_cutout_batches(tmp_path / "broken.npz", N)
    with pytest.raises(IngestError, match=r"cannot read npz file .*broken\.npz"):
        read_reference_npz(tmp_path / "broken.npz", tmp_path / "img.npz")
