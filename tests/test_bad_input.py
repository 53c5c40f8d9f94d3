"""Bad input gets a clear error naming the file, column, row or value, and loses nothing.

Each test feeds one kind of broken input (corrupt files, wrong types and shapes, sentinels,
duplicate ids, damaged manifests, unreachable or refusing storage, killed writers, broken
configs, bad SQL) and checks the error type, that the message names what is wrong, and that
committed outputs stay intact.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pyarrow as pa
import pytest
from astropy.io import fits

from galpipe import config as config_module
from galpipe.cli import main
from galpipe.contracts import ContractError
from galpipe.ingest.catalogues import read_catalogue, to_galaxies
from galpipe.ingest.fits_cutouts import fits_cutout_batches
from galpipe.ingest.reference_npz import read_reference_npz
from galpipe.ingest.tables import IngestError, galaxies_table
from galpipe.results import sql
from galpipe.storage import Provenance, Storage, StorageError

TINY = os.path.join(os.path.dirname(__file__), "..", "configs", "tiny.yaml")


def _galaxies(n: int = 5, offset: int = 0) -> pa.Table:
    return galaxies_table({"galaxy_id": np.arange(offset, offset + n), "ra": np.ones(n),
                           "dec": np.ones(n), "split": ["inference"] * n}, survey="t")


def _prov(run: str = "run-1") -> Provenance:
    return Provenance(run_id=run, config_hash="h")


def _csv(tmp_path, text: str, name: str = "cat.csv") -> str:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text).lstrip())
    return str(path)


# Catalogues ---------------------------------------------------------------------------------


def _read(path: str, **columns: str) -> pa.Table:
    return read_catalogue(path, id_column="id", ra_column="ra", dec_column="dec",
                          columns=columns or None)


def test_non_numeric_mass_names_column_and_row(tmp_path):
    table = _read(_csv(tmp_path, "id,ra,dec,m\n1,10,5,10.5\n2,11,5,abc\n"), stellar_mass="m")
    with pytest.raises(IngestError, match=r"'stellar_mass'.*\['abc'\].*row\(s\) 1"):
        to_galaxies(table, survey="s")


@pytest.mark.parametrize("marker", ["-1", "99", "-99"])
def test_mass_markers_outside_dex_range_are_refused(tmp_path, marker):
    table = _read(_csv(tmp_path, f"id,ra,dec,m\n1,10,5,10.5\n2,11,5,{marker}\n"),
                  stellar_mass="m")
    with pytest.raises(IngestError, match=rf"'stellar_mass'.*{float(marker)}.*row\(s\) 1"):
        to_galaxies(table, survey="s")


def test_linear_masses_are_refused_not_nulled(tmp_path):
    # 3e10 Msun is over the |v| >= 9000 sentinel rule: it must not silently become "no mass".
    path = _csv(tmp_path, "id,ra,dec,m\n1,10,5,3e10\n2,11,5,1e9\n")
    with pytest.raises(IngestError, match=r"row\(s\) 0, 1; stellar_mass must be log10"):
        _read(path, stellar_mass="m")


def test_sentinels_become_nulls_and_inference(tmp_path):
    table = _read(_csv(tmp_path, "id,ra,dec,m\n1,10,5,10.5\n2,11,5,-9999\n3,12,5,nan\n"),
                  stellar_mass="m")
    galaxies = to_galaxies(table, survey="s")
    assert galaxies.column("stellar_mass").to_pylist() == [10.5, None, None]
    assert galaxies.column("split").to_pylist()[1:] == ["inference", "inference"]


def test_header_only_and_oversized_ids(tmp_path):
    with pytest.raises(IngestError, match="has no rows"):
        _read(_csv(tmp_path, "id,ra,dec\n"))
    with pytest.raises(IngestError, match="int64 range at row"):
        _read(_csv(tmp_path, "id,ra,dec\n18446744073709551615,10,5\n"))


def test_cli_catalogue_error_names_file_and_exits_2(tmp_path, caplog):
    path = _csv(tmp_path, "id,ra,dec,m\n1,10,5,10.5\n2,11,5,abc\n")
    code = main(["ingest", "catalogue", path, "--storage", str(tmp_path / "s"),
                 "--id-column", "id", "--ra-column", "ra", "--dec-column", "dec",
                 "--column", "stellar_mass=m"])
    assert code == 2
    assert "cat.csv" in caplog.text and "'stellar_mass'" in caplog.text
    assert not (tmp_path / "s" / "tables" / "galaxies").exists() or \
        not Storage(tmp_path / "s").keys("galaxies")


# FITS cutouts -------------------------------------------------------------------------------


def _fits(directory, galaxy_id: int, data: np.ndarray) -> None:
    fits.PrimaryHDU(data).writeto(directory / f"{galaxy_id}.fits")


def test_fits_nan_pixels_empty_images_and_bad_options(tmp_path):
    image = np.ones((8, 8), np.float32)
    image[2, 3] = np.nan
    _fits(tmp_path, 1, image)
    _fits(tmp_path, 2, np.ones((0, 8), np.float32))
    _fits(tmp_path, 3, np.ones((8, 8), np.float32))
    with pytest.raises(IngestError, match=r"1\.fits: 1 NaN or infinite"):
        list(fits_cutout_batches([1], tmp_path, size=8))
    with pytest.raises(IngestError, match=r"2\.fits.*no pixels"):
        list(fits_cutout_batches([2], tmp_path, size=4, policy="crop"))
    with pytest.raises(IngestError, match=r"repeat: \[3\]"):
        list(fits_cutout_batches([3, 3], tmp_path, size=8))
    with pytest.raises(ValueError, match=r"\['x'\]"):
        list(fits_cutout_batches([3], tmp_path, pattern="{id}_{x}.fits", size=8))
    with pytest.raises(ValueError, match=">= 1 pixel"):
        list(fits_cutout_batches([3], tmp_path, size=0))
    with pytest.raises(ValueError, match="at least one"):
        list(fits_cutout_batches([3], tmp_path, bands=[], size=8))
    # a NaN outside the centre crop is cropped away, so that image is fine
    edge = np.ones((10, 10), np.float32)
    edge[0, 0] = np.nan
    _fits(tmp_path, 4, edge)
    assert len(list(fits_cutout_batches([4], tmp_path, size=8, policy="crop"))) == 1


# Reference npz ------------------------------------------------------------------------------


def _npz_catalogue(path, **arrays) -> str:
    empty = np.array([], np.int64)
    base = {"ra": np.array([1.0, 2.0]), "dec": np.array([1.0, 2.0]),
            "id_train": empty, "id_validation": empty, "id_test": empty}
    np.savez(path, **{**base, **arrays})
    return str(path)


def test_npz_bad_arrays_are_named(tmp_path):
    images = tmp_path / "img.npz"
    np.savez(images, **{f"img_{b}": np.ones((2, 4, 4), np.float32) for b in "ugriz"})
    cases = [
        ({"ra": np.array(["a", "b"])}, {}, r"'ra'.*dtype <U1"),
        ({"ra": np.float64(1.0)}, {}, r"'ra' is a single value"),
        ({"ids": np.array([5, 5])}, {"id_array": "ids"}, r"duplicate values \[5\]"),
        ({"ids": np.array([1.5, 2.5])}, {"id_array": "ids"}, r"'ids' has dtype float64"),
        ({"mass": np.array(["10", "x"])}, {}, r"'stellar_mass'.*\['x'\]"),
    ]
    for i, (arrays, options, pattern) in enumerate(cases):
        catalogue = _npz_catalogue(tmp_path / f"cat{i}.npz", **arrays)
        with pytest.raises(IngestError, match=pattern):
            read_reference_npz(catalogue, images, **options)

    nan_images = tmp_path / "nan.npz"
    np.savez(nan_images, **{f"img_{b}": np.full((2, 4, 4), np.nan, np.float32) for b in "ugriz"})
    _, batches = read_reference_npz(_npz_catalogue(tmp_path / "ok.npz"), nan_images)
    with pytest.raises(IngestError, match=r"nan\.npz.*galaxy_id \[0, 1\]"):
        list(batches)


# Storage ------------------------------------------------------------------------------------


@pytest.mark.parametrize("damage", [
    "[1]", '{"files": []}', '{"files": "abc", "num_rows": 1, "provenance": {}}',
    '{"files": ["../../../x"], "num_rows": 1, "provenance": {"run_id": "r", "config_hash": "h"}}',
    "", "{\"files\": [",
])
def test_damaged_manifest_is_a_storage_error(tmp_path, damage):
    storage = Storage(tmp_path)
    ref = storage.write_table("galaxies", _galaxies(), key="k", provenance=_prov())
    with open(os.path.join(ref.uri, "_COMMITTED.json"), "w") as handle:
        handle.write(damage)
    for call in (lambda: storage.read_table("galaxies", "k"), lambda: storage.keys("galaxies")):
        with pytest.raises(StorageError, match=r"damaged manifest .*galaxies/k/_COMMITTED"):
            call()


def test_manifest_with_extra_provenance_fields_still_reads(tmp_path):
    storage = Storage(tmp_path)
    ref = storage.write_table("galaxies", _galaxies(), key="k", provenance=_prov())
    path = os.path.join(ref.uri, "_COMMITTED.json")
    manifest = json.load(open(path))
    manifest["provenance"]["added_later"] = 1
    json.dump(manifest, open(path, "w"))
    assert storage.read_table("galaxies", "k").num_rows == 5


def test_keys_that_leave_the_table_folder_are_refused(tmp_path):
    storage = Storage(tmp_path / "store")
    for key in ("../../evil", "", ".."):
        with pytest.raises(ValueError, match="key of table 'galaxies'"):
            storage.write_table("galaxies", _galaxies(), key=key, provenance=_prov())
    assert set(os.listdir(tmp_path)) <= {"store"}


def test_wrong_types_inf_and_duplicates_are_contract_errors(tmp_path):
    storage = Storage(tmp_path)
    table = _galaxies()
    cases = [
        (table.set_column(2, "ra", pa.array(["a"] * 5)), r"'ra': type string cannot.*'a'"),
        (table.set_column(2, "ra", pa.array([np.inf] * 5)), r"'ra': infinite values"),
        (table.set_column(0, "galaxy_id", pa.array([1.5] * 5)), r"'galaxy_id': type double"),
        (table.set_column(0, "galaxy_id", pa.array([7] * 5)), r"duplicate values \[7\]"),
    ]
    for bad, pattern in cases:
        with pytest.raises(ContractError, match=pattern):
            storage.write_table("galaxies", bad, key="k", provenance=_prov())
    assert not storage.has_table("galaxies", "k")


def test_duplicate_ids_across_batches_abort_the_write(tmp_path):
    storage = Storage(tmp_path)
    storage.write_table("galaxies", _galaxies(), key="k", provenance=_prov("old"))
    batches = [_galaxies(5, 0).to_batches()[0], _galaxies(5, 3).to_batches()[0]]
    with pytest.raises(ContractError, match=r"duplicate values \[3, 4\]"):
        storage.write_table("galaxies", iter(batches), key="k", provenance=_prov("new"))
    assert storage.table("galaxies", "k").provenance.run_id == "old"
    assert len(os.listdir(tmp_path / "tables" / "galaxies" / "k")) == 2  # manifest + 1 part


def test_concurrent_writer_of_the_same_key_never_leaves_a_dangling_manifest(tmp_path):
    storage = Storage(tmp_path)
    slow = storage.table_writer("galaxies", key="k", provenance=_prov("slow"))
    slow.__enter__()
    slow.write(_galaxies(5))
    storage.write_table("galaxies", _galaxies(3), key="k", provenance=_prov("fast"))
    with pytest.raises(StorageError, match="disappeared before commit"):
        slow.__exit__(None, None, None)
    assert storage.read_table("galaxies", "k").num_rows == 3
    assert storage.table("galaxies", "k").provenance.run_id == "fast"


def test_sigkilled_writer_leaves_old_output(tmp_path):
    storage = Storage(tmp_path)
    storage.write_table("galaxies", _galaxies(4), key="k", provenance=_prov("old"))
    script = textwrap.dedent(f"""
        import os, signal, numpy as np
        from galpipe.ingest.tables import galaxies_table
        from galpipe.storage import Provenance, Storage
        def batches():
            for i in range(3):
                yield galaxies_table({{"galaxy_id": np.arange(i * 10, i * 10 + 10),
                    "ra": np.ones(10), "dec": np.ones(10), "split": ["inference"] * 10}},
                    survey="t").to_batches()[0]
            os.kill(os.getpid(), signal.SIGKILL)
        Storage({str(tmp_path)!r}).write_table("galaxies", batches(), key="k",
            provenance=Provenance("new", "h"), rows_per_file=10)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=120)
    assert done.returncode == -signal.SIGKILL, done.stderr.decode()[-2000:]
    assert storage.read_table("galaxies", "k").num_rows == 4
    assert storage.table("galaxies", "k").provenance.run_id == "old"
    storage.write_table("galaxies", _galaxies(6), key="k", provenance=_prov("rerun"))
    folder = tmp_path / "tables" / "galaxies" / "k"
    parts = [f for f in os.listdir(folder) if f != "_COMMITTED.json"]
    assert len(parts) == 1 and storage.read_table("galaxies", "k").num_rows == 6


def test_corrupt_data_file_in_provenance_of(tmp_path):
    storage = Storage(tmp_path)
    ref = storage.write_table("galaxies", _galaxies(), key="k", provenance=_prov())
    with open(ref.files[0], "wb") as handle:
        handle.write(b"PAR1 truncated")
    with pytest.raises(StorageError, match="cannot read table 'galaxies' output 'k'"):
        storage.provenance_of("galaxies", "k")


def test_unreachable_endpoint_lists_and_queries_give_storage_error(monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "y")
    storage = Storage("s3://galpipe/nowhere")
    with pytest.raises(StorageError, match="unreachable.*AWS_ENDPOINT_URL"):
        storage.keys("galaxies")
    with pytest.raises(StorageError, match="unreachable"):
        sql("SELECT * FROM galaxies", storage)


def test_wrong_credentials_on_real_s3_give_storage_error(s3_uri, monkeypatch):
    storage = Storage(s3_uri)
    storage.write_table("galaxies", _galaxies(), key="k", provenance=_prov())
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret")
    denied = Storage(s3_uri)
    for call in (lambda: denied.keys("galaxies"), lambda: denied.read_table("galaxies", "k"),
                 lambda: denied.write_table("galaxies", _galaxies(), key="k2",
                                            provenance=_prov())):
        with pytest.raises(StorageError, match="AWS_SECRET_ACCESS_KEY"):
            call()
    monkeypatch.undo()
    assert Storage(s3_uri).read_table("galaxies", "k").num_rows == 5


# Queries ------------------------------------------------------------------------------------


def test_query_errors_name_the_available_tables(tmp_path, caplog):
    storage = Storage(tmp_path)
    storage.write_table("galaxies", _galaxies(), key="k", provenance=_prov())
    with pytest.raises(ValueError, match=r"relation 'nope'.*Tables available: \['galaxies'\]"):
        sql("SELECT * FROM nope", storage)
    with pytest.raises(ValueError, match="sql parser error"):
        sql("SELEC * FROM galaxies", storage)
    assert sql("SELECT count(*) AS n FROM galaxies", storage)["n"].to_list() == [5]
    assert main(["query", "SELECT * FROM galaxies", "--storage", str(tmp_path)]) == 2
    assert "no pipeline runs recorded" in caplog.text


# Configs ------------------------------------------------------------------------------------


@pytest.mark.parametrize("overrides, pattern", [
    ({"training": {"steps": "abc"}}, r"training\.steps: expected an integer, got 'abc'"),
    ({"training": {"steps": -5}}, r"training\.steps must be >= 1"),
    ({"training": 5}, r"section 'training' must be a mapping"),
    ({"neighbours": {"k": 0}}, r"neighbours\.k must be >= 1"),
    ({"discovery": {"methods": ["pcx"]}}, r"'pcx' is not one of"),
    ({"local_tests": {"mass_edges": "abc"}}, r"local_tests\.mass_edges: expected a list"),
    ({"local_tests": {"mass_edges": [10, 9]}}, r"mass_edges must increase strictly"),
    ({"inference": {"pdf_quantiles": [1.5]}}, r"pdf_quantiles must be increasing values"),
    ({"survey": {"source": {"kind": "sampel"}}}, r"source\.kind must be .*'sampel'"),
    ({"survey": {"source": {"kind": "tables"}}}, r"source\.galaxies must be the URI"),
    ({"imodels": "Mugriz"}, r"imodels must be a list"),
    ({"feature_sets": {"X": {"columns": "mag_r"}}}, r"'columns' must be a list of names"),
    ({"feature_sets": {"X": {"bands": ["g"], "flux_normalise": "no"}}},
     r"'flux_normalise' must be true or false"),
    ({"information": {"tuples": [{"sources": "ab", "union": "Mugriz"}]}},
     r"'sources' must be a list of two"),
])
def test_bad_config_values_are_named(overrides, pattern):
    with pytest.raises(ValueError, match=pattern):
        config_module.load(TINY, overrides=overrides)


def test_bad_config_files_are_named(tmp_path):
    cases = {
        "list.yaml": ("- a\n- b\n", "must hold a mapping"),
        "broken.yaml": ("survey: [\n", "not valid YAML"),
        "twice.yaml": ("feature_sets: {a: {columns: [x]}}\nfeature_sets: {b: {columns: [y]}}\n",
                       "key 'feature_sets' appears twice"),
        "include.yaml": ("include: broken.yaml\n", r"broken\.yaml is not valid YAML"),
    }
    for name, (text, _) in cases.items():
        (tmp_path / name).write_text(text)
    for name, (_, pattern) in cases.items():
        with pytest.raises(ValueError, match=pattern):
            config_module.load(tmp_path / name)
    with pytest.raises(ValueError, match="is not a file"):
        config_module.load(tmp_path)


def test_cli_run_with_bad_set_exits_2_before_any_work(tmp_path, caplog):
    code = main(["run", "--config", TINY, "--storage", str(tmp_path / "s"),
                 "--set", "training.steps=many"])
    assert code == 2 and "training.steps: expected an integer" in caplog.text
    assert not (tmp_path / "s").exists()
