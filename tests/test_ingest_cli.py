"""`galpipe ingest` round-trips each input format to valid Parquet, locally and on SeaweedFS."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from galpipe.cli import main
from galpipe.contracts import validate_dataset
from galpipe.storage import Storage

FIXTURES = Path(__file__).parent / "fixtures"


def _only_key(storage: Storage, table: str) -> str:
    keys = storage.keys(table)
    assert len(keys) == 1
    return keys[0]


@pytest.fixture(params=["local", "s3"])
def storage_uri(request, tmp_path):
    return str(tmp_path / "store") if request.param == "local" else \
        request.getfixturevalue("s3_uri")


def test_sample_round_trip(storage_uri):
    assert main(["ingest", "sample", "--storage", storage_uri]) == 0
    storage = Storage(storage_uri)
    key = _only_key(storage, "galaxies")
    assert validate_dataset(storage.dataset("galaxies", key), "galaxies") == 3901
    assert validate_dataset(storage.dataset("cutouts", key), "cutouts") == 3901


def test_catalogue_with_fits_cutouts_round_trip(storage_uri, tmp_path):
    ids = sorted(int(p.stem) for p in (FIXTURES / "fits").glob("*.fits"))
    csv = tmp_path / "cat.csv"
    rows = ["objid,ra,dec,logmass,petroMag_r,z"]
    for i, objid in enumerate(ids):
        mass = "-9999" if i == 0 else f"{10 + 0.1 * i}"
        rows.append(f"{objid},{10 + i},{-1 + i * 0.1},{mass},{15 + i},0.0{i + 1}")
    csv.write_text("\n".join(rows) + "\n")
    code = main(["ingest", "catalogue", str(csv), "--storage", storage_uri, "--id-column",
                 "objid", "--ra-column", "ra", "--dec-column", "dec",
                 "--column", "stellar_mass=logmass", "--column", "mag_r=petroMag_r",
                 "--column", "redshift=z", "--stratify-by", "",
                 "--fits-dir", str(FIXTURES / "fits"), "--bands", "r", "--size", "48",
                 "--policy", "crop", "--bias", "1000"])
    assert code == 0
    storage = Storage(storage_uri)
    key = _only_key(storage, "galaxies")
    galaxies = storage.read_table("galaxies", key)
    assert galaxies.column("galaxy_id").to_pylist() == ids
    mass = galaxies.column("stellar_mass").to_pylist()
    assert mass[0] is None and mass[1] == pytest.approx(10.1)     # -9999 became null
    assert galaxies.column("split").to_pylist()[0] == "inference"
    cutouts = storage.read_table("cutouts", key)
    assert validate_dataset(storage.dataset("cutouts", key), "cutouts") == len(ids)
    assert cutouts.schema.metadata[b"galpipe.image_shape"] == b"1,48,48"
    pixels = np.asarray(cutouts.column("image")[0].values.to_numpy(), dtype=np.float32)
    assert pixels.shape == (48 * 48,) and np.isfinite(pixels).all()


def test_reference_npz_pair_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    n = 12
    np.savez(tmp_path / "cat.npz", mass=rng.uniform(8, 11, n), ra=rng.uniform(0, 360, n),
             dec=rng.uniform(-10, 10, n), z=rng.uniform(0.01, 0.2, n),
             id_train=np.arange(0, 8), id_validation=np.arange(8, 10),
             id_test=np.arange(10, 12))
    images = {f"img_{b}": rng.normal(size=(n, 64, 64)).astype(np.float32) for b in "ugriz"}
    np.savez(tmp_path / "img.npz", **images)
    store = str(tmp_path / "store")
    assert main(["ingest", "npz", str(tmp_path / "cat.npz"), str(tmp_path / "img.npz"),
                 "--storage", store]) == 0
    storage = Storage(store)
    key = _only_key(storage, "galaxies")
    galaxies = storage.read_table("galaxies", key)
    assert galaxies.column("split").to_pylist() == ["train"] * 8 + ["validation"] * 2 + \
        ["test"] * 2
    cutouts = storage.read_table("cutouts", key)
    first = np.asarray(cutouts.column("image")[0].values.to_numpy()).reshape(5, 64, 64)
    np.testing.assert_array_equal(first[2], images["img_r"][0])


def test_missing_column_fails_with_file_and_column_named(tmp_path, caplog):
    csv = tmp_path / "cat.csv"
    csv.write_text("objid,ra,dec\n1,10,0\n")
    code = main(["ingest", "catalogue", str(csv), "--storage", str(tmp_path / "s"),
                 "--id-column", "objid", "--ra-column", "ra", "--dec-column", "dec",
                 "--column", "stellar_mass=lgm_tot_p50"])
    assert code == 2
    message = " ".join(r.getMessage() for r in caplog.records)
    assert "lgm_tot_p50" in message and "cat.csv" in message
    assert not Storage(tmp_path / "s").keys("galaxies")
