"""Catalogue readers, galaxies contract filling, splits and the sky cross-match."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from galpipe.contracts import validate
from galpipe.ingest.catalogues import read_catalogue, to_galaxies
from galpipe.ingest.crossmatch import crossmatch
from galpipe.ingest.splits import assign_split, assign_split_streaming
from galpipe.ingest.tables import IngestError

FIXTURES = Path(__file__).parent / "fixtures" / "catalogues"


def _small_catalogue() -> pa.Table:
    """Six galaxies with a sentinel, a NaN and an integer sentinel in known rows."""
    return pa.table({
        "objid": [11, 12, 13, 14, 15, 16],
        "RA": [10.0, 10.1, 10.2, 10.3, 10.4, 10.5],
        "DEC": [-1.0, 0.0, 1.0, 2.0, 3.0, 4.0],
        "petroMag_r": [17.1, -9999.0, 16.5, float("nan"), 15.0, 99999.0],
        "nchild": [0, 1, -9999, 2, 0, 1],
        "lgm": [10.1, 9.5, -9999.0, 11.0, 10.7, 9.9],
        "kind": ["sf", "passive", "sf", "sf", "passive", "sf"],
    })


def test_csv_round_trip_turns_sentinels_and_nan_into_nulls(tmp_path):
    path = tmp_path / "cat.csv"
    pacsv.write_csv(_small_catalogue(), path)

    table = read_catalogue(path, columns={"mag_r": "petroMag_r", "n_child": "nchild"},
                           id_column="objid", ra_column="RA", dec_column="DEC")

    assert table.column_names == ["galaxy_id", "ra", "dec", "mag_r", "n_child"]
    assert table.schema.field("galaxy_id").type == pa.int64()
    assert table.schema.field("mag_r").type == pa.float64()
    assert table.schema.field("n_child").type == pa.float64()
    assert table.column("galaxy_id").to_pylist() == [11, 12, 13, 14, 15, 16]
    assert table.column("mag_r").to_pylist() == [17.1, None, 16.5, None, 15.0, None]
    assert table.column("n_child").to_pylist() == [0.0, 1.0, None, 2.0, 0.0, 1.0]
    assert table.column("dec").to_pylist() == [-1.0, 0.0, 1.0, 2.0, 3.0, 4.0]


def test_parquet_round_trip_keeps_strings_and_snake_cases_names(tmp_path):
    path = tmp_path / "cat.parquet"
    pq.write_table(_small_catalogue(), path)

    table = read_catalogue(path, columns=None, id_column="objid", ra_column="RA",
                           dec_column="DEC")

    assert table.column_names == ["galaxy_id", "ra", "dec", "petro_mag_r", "nchild", "lgm",
                                  "kind"]
    assert table.column("kind").to_pylist() == ["sf", "passive", "sf", "sf", "passive", "sf"]
    assert table.column("lgm").null_count == 1


def test_fits_array_columns_masks_and_case_insensitive_names(tmp_path):
    from astropy.table import MaskedColumn, Table

    petromag = np.arange(20, dtype=">f4").reshape(4, 5) + 14.0
    petromag[2, 2] = -9999.0
    table = Table({
        "OBJID": np.array([5, 6, 7, 8], dtype=">i8"),
        "RA": [1.0, 2.0, 3.0, 4.0],
        "DEC": [0.5, 0.6, 0.7, 0.8],
        "PETROMAG": petromag,
        "Z": MaskedColumn([0.1, 0.2, 0.3, 0.4], mask=[False, True, False, False]),
        "CLASS": np.array([b"SF", b"PASSIVE", b"SF", b"SF"]),
    })
    path = tmp_path / "cat.fits"
    table.write(path)

    read = read_catalogue(path, columns={"mag_r": "petromag[2]", "mag_u": "PETROMAG[0]",
                                         "redshift": "z", "class": "CLASS"},
                          id_column="objid", ra_column="ra", dec_column="dec")

    assert read.column("galaxy_id").to_pylist() == [5, 6, 7, 8]
    assert read.column("mag_r").to_pylist() == [16.0, 21.0, None, 31.0]
    assert read.column("mag_u").to_pylist() == [14.0, 19.0, 24.0, 29.0]
    assert read.column("redshift").to_pylist()[1] is None
    assert read.column("class").to_pylist() == ["SF", "PASSIVE", "SF", "SF"]


def test_real_fits_catalogue_masked_values_become_nulls():
    path = FIXTURES / "alfalfa_sdss_first40.fits"
    table = read_catalogue(path, columns={"stellar_mass": "logMstarGSWLC",
                                          "taylor": "logMstarTaylor", "sfr22": "logSFR22"},
                           id_column="AGC", ra_column="RAdeg_OC", dec_column="DECdeg_OC",
                           name_column="Name")

    from astropy.table import Table

    reference = Table.read(path)
    for column, source in (("stellar_mass", "logMstarGSWLC"), ("taylor", "logMstarTaylor"),
                           ("sfr22", "logSFR22")):
        expected_missing = ~np.isfinite(np.asarray(reference[source], dtype=float))
        assert table.column(column).null_count == expected_missing.sum()
        values = np.asarray(table.column(column).to_pylist(), dtype=float)
        np.testing.assert_allclose(values[~expected_missing],
                                   np.asarray(reference[source], float)[~expected_missing])
    assert table.column("stellar_mass").null_count == 36
    assert table.column("name").to_pylist()[0] == str(reference["Name"][0]).strip()


def test_real_padded_csv_reads_numbers_and_trims_names():
    table = read_catalogue(FIXTURES / "a100_code12_first40.csv", columns={"v_helio": "Vhelio"},
                           id_column="AGCNr", ra_column="RAdeg_OC", dec_column="DECdeg_OC",
                           name_column="Name", sentinel_exempt=["v_*"])
    assert table.num_rows == 40
    assert table.column("galaxy_id").to_pylist()[:2] == [105367, 333313]
    assert table.column("ra").to_pylist()[:2] == [0.00333, 359.9975]
    assert table.column("name").to_pylist()[2] == "478-009b"
    assert table.column("v_helio").to_pylist()[0] == 11983.0

    sentinel_rule = read_catalogue(FIXTURES / "a100_code12_first40.csv",
                                   columns={"v_helio": "Vhelio"}, id_column="AGCNr",
                                   ra_column="RAdeg_OC", dec_column="DECdeg_OC")
    assert sentinel_rule.column("v_helio").to_pylist()[0] is None


def test_missing_columns_name_the_file_the_columns_and_what_is_available(tmp_path):
    path = tmp_path / "cat.csv"
    pacsv.write_csv(_small_catalogue(), path)
    with pytest.raises(IngestError) as info:
        read_catalogue(path, columns={"mag_r": "petroMag_r", "mag_g": "petroMag_g"},
                       id_column="objid", ra_column="RA", dec_column="Dec_deg")
    message = str(info.value)
    assert "cat.csv" in message and "'petroMag_g'" in message and "'Dec_deg'" in message
    assert "petroMag_r" in message.split("available")[1]


@pytest.mark.parametrize("suffix", [".fits", ".parquet", ".csv"])
def test_corrupt_files_name_the_file(tmp_path, suffix):
    path = tmp_path / f"broken{suffix}"
    path.write_bytes(b"\x00\x01not a table at all\xff" * 3)
    with pytest.raises(IngestError, match=f"broken{suffix}"):
        read_catalogue(path, id_column="objid", ra_column="RA", dec_column="DEC")


def test_bad_ids_and_positions_name_the_rows(tmp_path):
    table = _small_catalogue()
    duplicated = table.set_column(0, "objid", pa.array([11, 12, 13, 12, 15, 16]))
    pq.write_table(duplicated, tmp_path / "dup.parquet")
    with pytest.raises(IngestError, match=r"duplicate ids \[12\] at row\(s\) 1, 3"):
        read_catalogue(tmp_path / "dup.parquet", id_column="objid", ra_column="RA",
                       dec_column="DEC")

    bad_dec = table.set_column(2, "DEC", pa.array([0.0, 0.0, 95.0, 0.0, -9999.0, 0.0]))
    pq.write_table(bad_dec, tmp_path / "dec.parquet")
    with pytest.raises(IngestError, match=r"dec.parquet.*dec has missing or out-of-range.*"
                                          r"row\(s\) 2, 4"):
        read_catalogue(tmp_path / "dec.parquet", id_column="objid", ra_column="RA",
                       dec_column="DEC")

    with pytest.raises(IngestError, match="cannot tell the format"):
        read_catalogue(tmp_path / "cat.txt", id_column="objid", ra_column="RA",
                       dec_column="DEC")


def test_to_galaxies_fills_the_contract_and_splits_only_galaxies_with_mass():
    n = 400
    rng = np.random.default_rng(3)
    mass = rng.normal(10, 0.5, n)
    mass[::7] = np.nan
    classes = np.where(np.arange(n) % 3 == 0, "passive", "star-forming")
    table = pa.table({
        "galaxy_id": np.arange(1000, 1000 + n), "ra": rng.uniform(0, 360, n),
        "dec": rng.uniform(-30, 30, n), "stellar_mass": pa.array(mass, from_pandas=True),
        "class": classes, "mag_r": rng.normal(17, 1, n),
    })

    galaxies = to_galaxies(table, survey="test", seed=5)

    validate(galaxies, "galaxies")
    assert galaxies.column_names[-1] == "mag_r"
    assert galaxies.schema.metadata[b"galpipe.survey"] == b"test"
    split = np.array(galaxies.column("split").to_pylist())
    has_mass = np.isfinite(mass)
    assert (split[~has_mass] == "inference").all()
    assert not (split[has_mass] == "inference").any()
    for name in ("passive", "star-forming"):
        labelled = has_mass & (classes == name)
        expected_train = int(round(0.7 * labelled.sum()))
        expected_validation = int(round(0.15 * labelled.sum()))
        assert (split[labelled] == "train").sum() == expected_train
        assert (split[labelled] == "validation").sum() == expected_validation
        assert (split[labelled] == "test").sum() == labelled.sum() - expected_train \
            - expected_validation
    sources = galaxies.column("stellar_mass_source").to_pylist()
    assert {sources[i] for i in np.flatnonzero(has_mass)} == {"catalogue"}
    assert {sources[i] for i in np.flatnonzero(~has_mass)} == {None}

    again = to_galaxies(table, survey="test", seed=5)
    other_seed = to_galaxies(table, survey="test", seed=6)
    assert again.column("split").equals(galaxies.column("split"))
    assert not other_seed.column("split").equals(galaxies.column("split"))


def test_to_galaxies_checks_a_given_split():
    table = pa.table({"galaxy_id": [1, 2, 3], "ra": [1.0, 2.0, 3.0], "dec": [0.0, 0.0, 0.0],
                      "stellar_mass": [10.0, None, 9.0],
                      "split": ["train", "test", "inference"]})
    with pytest.raises(IngestError, match=r"need a stellar mass.*row\(s\) 1"):
        to_galaxies(table, survey="t")
    wrong = table.set_column(4, "split", pa.array(["train", "inference", "holdout"]))
    with pytest.raises(IngestError, match=r"'holdout'.*row\(s\) 2"):
        to_galaxies(wrong, survey="t")
    kept = to_galaxies(table.set_column(4, "split", pa.array(["train", "inference", "test"])),
                       survey="t")
    assert kept.column("split").to_pylist() == ["train", "inference", "test"]


def test_splits_do_not_depend_on_row_order_or_chunking():
    ids = np.arange(5000, 6000)
    has_mass = ids % 5 != 0
    strata = np.where(ids % 2 == 0, "a", "b")
    whole = assign_split(ids, has_mass, seed=1, strata=strata)
    order = np.random.default_rng(0).permutation(len(ids))
    shuffled = assign_split(ids[order], has_mass[order], seed=1, strata=strata[order])
    assert (shuffled == whole[order]).all()

    streamed = np.concatenate([assign_split_streaming(ids[i:i + 77], has_mass[i:i + 77], seed=1)
                               for i in range(0, len(ids), 77)])
    assert (streamed == assign_split_streaming(ids, has_mass, seed=1)).all()
    fractions = [(streamed[has_mass] == s).mean() for s in ("train", "validation", "test")]
    np.testing.assert_allclose(fractions, [0.70, 0.15, 0.15], atol=0.05)


def _separation_arcsec(ra1, dec1, ra2, dec2):
    """Great-circle separation by the haversine formula, arcsec (independent of astropy)."""
    ra1, dec1, ra2, dec2 = map(np.radians, (ra1, dec1, ra2, dec2))
    h = np.sin((dec2 - dec1) / 2) ** 2 + np.cos(dec1) * np.cos(dec2) * np.sin((ra2 - ra1) / 2) ** 2
    return np.degrees(2 * np.arcsin(np.sqrt(h))) * 3600


def test_crossmatch_takes_the_nearest_source_within_the_radius():
    rng = np.random.default_rng(11)
    n = 300
    galaxies = pa.table({"galaxy_id": np.arange(n), "ra": rng.uniform(150, 151, n),
                         "dec": rng.uniform(1, 2, n)})
    ra = galaxies.column("ra").to_numpy()
    dec = galaxies.column("dec").to_numpy()
    # Every other galaxy gets a counterpart offset by 0-4 arcsec, plus unrelated field sources.
    offset = rng.uniform(0, 4, n) / 3600
    angle = rng.uniform(0, 2 * np.pi, n)
    keep = np.arange(n) % 2 == 0
    other_ra = np.concatenate([(ra + offset * np.cos(angle) / np.cos(np.radians(dec)))[keep],
                               rng.uniform(150, 151, 200), [np.nan]])
    other_dec = np.concatenate([(dec + offset * np.sin(angle))[keep], rng.uniform(1, 2, 200),
                                [1.5]])
    w1 = np.arange(len(other_ra), dtype=float) + 100
    wise = pa.table({"RA": other_ra, "DEC": other_dec, "w1": w1})

    matched = crossmatch(galaxies, wise, max_separation_arcsec=3.0, prefix="wise_",
                         other_ra_column="RA", other_dec_column="DEC")

    assert matched.column_names == ["galaxy_id", "ra", "dec", "wise_w1", "wise_sep_arcsec"]
    finite = np.isfinite(other_ra)
    separations = _separation_arcsec(ra[:, None], dec[:, None], other_ra[None, finite],
                                     other_dec[None, finite])
    nearest = np.argmin(separations, axis=1)
    nearest_sep = separations[np.arange(n), nearest]
    expected_w1 = np.where(nearest_sep <= 3.0, w1[finite][nearest], np.nan)
    got_w1 = np.array(matched.column("wise_w1").to_pylist(), dtype=float)
    np.testing.assert_array_equal(np.isnan(got_w1), np.isnan(expected_w1))
    np.testing.assert_array_equal(got_w1[~np.isnan(got_w1)], expected_w1[~np.isnan(expected_w1)])
    got_sep = np.array(matched.column("wise_sep_arcsec").to_pylist(), dtype=float)
    np.testing.assert_allclose(got_sep[~np.isnan(got_sep)],
                               nearest_sep[nearest_sep <= 3.0], atol=1e-6)
    assert 0 < np.isnan(got_w1).sum() < n

    with pytest.raises(IngestError, match="wise_"):
        crossmatch(matched, wise, max_separation_arcsec=3.0, prefix="wise_",
                   other_ra_column="RA", other_dec_column="DEC")
    with pytest.raises(IngestError, match=r"\['w4'\]"):
        crossmatch(galaxies, wise, max_separation_arcsec=3.0, prefix="x_", columns=["w4"],
                   other_ra_column="RA", other_dec_column="DEC")
