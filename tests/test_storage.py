"""Storage: atomic, validated table writes with provenance, locally and on a real S3 server."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from galpipe.contracts import ContractError
from galpipe.storage import PROVENANCE_KEY, Provenance, Storage, StorageError


def _galaxies(n: int, offset: int = 0) -> pa.Table:
    ids = np.arange(offset, offset + n, dtype=np.int64)
    return pa.table({
        "galaxy_id": ids,
        "name": pa.array([f"G{i}" for i in ids]),
        "ra": np.linspace(0, 10, n),
        "dec": np.linspace(-5, 5, n),
        "redshift": np.full(n, 0.02),
        "stellar_mass": np.linspace(8, 11, n),
        "stellar_mass_source": pa.array(["mock"] * n),
        "class": pa.array(["spiral"] * n),
        "split": pa.array(["train"] * n),
        "mag_r": np.linspace(14, 17, n),
    })


def _provenance() -> Provenance:
    return Provenance(run_id="run-1", config_hash="abc123", input_uris=["memory://test"])


@pytest.fixture(params=["local", "s3"])
def storage(request, tmp_path):
    if request.param == "local":
        return Storage(tmp_path / "store")
    return Storage(request.getfixturevalue("s3_uri"))


def test_round_trip_keeps_rows_and_provenance(storage):
    table = _galaxies(100)
    ref = storage.write_table("galaxies", table, key="k1", provenance=_provenance())

    assert ref.num_rows == 100
    back = storage.read_table("galaxies", "k1")
    assert back.column("galaxy_id").to_pylist() == list(range(100))
    np.testing.assert_allclose(back.column("mag_r").to_numpy(), table.column("mag_r").to_numpy())
    provenance = storage.provenance_of("galaxies", "k1")
    assert (provenance.run_id, provenance.config_hash) == ("run-1", "abc123")
    assert provenance.input_uris == ["memory://test"]
    schema = pq.read_schema(ref.files[0], filesystem=storage.fs)
    assert PROVENANCE_KEY in schema.metadata
    assert storage.keys("galaxies") == ["k1"]


def test_streamed_write_rolls_files_and_counts_rows(storage):
    batches = (_galaxies(50, offset=i * 50).to_batches()[0] for i in range(5))
    ref = storage.write_table("galaxies", batches, key="stream", provenance=_provenance(),
                              rows_per_file=100)
    assert ref.num_rows == 250
    assert len(ref.files) == 3
    ids = storage.read_table("galaxies", "stream").column("galaxy_id").to_numpy()
    np.testing.assert_array_equal(np.sort(ids), np.arange(250))


def test_failed_write_leaves_previous_output_untouched(storage):
    storage.write_table("galaxies", _galaxies(10), key="k", provenance=_provenance())

    def batches():
        yield _galaxies(10, offset=100).to_batches()[0]
        bad = _galaxies(5).drop_columns(["ra"])
        yield bad.to_batches()[0]

    with pytest.raises(ContractError, match="missing column 'ra'"):
        storage.write_table("galaxies", batches(), key="k", provenance=_provenance())
    back = storage.read_table("galaxies", "k")
    assert back.column("galaxy_id").to_pylist() == list(range(10))


def test_killed_write_is_invisible(storage):
    def batches():
        yield _galaxies(10).to_batches()[0]
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        storage.write_table("galaxies", batches(), key="half", provenance=_provenance())
    assert not storage.has_table("galaxies", "half")
    assert storage.keys("galaxies") == []
    with pytest.raises(StorageError, match="no committed output"):
        storage.read_table("galaxies", "half")


def test_contract_violations_name_column_and_rows(tmp_path):
    storage = Storage(tmp_path)
    table = _galaxies(6)
    split = table.column("split").to_pylist()
    split[2] = "training"
    table = table.set_column(table.schema.get_field_index("split"), "split", pa.array(split))
    ra = table.column("ra").to_numpy().copy()
    ra[4] = np.nan
    table = table.set_column(table.schema.get_field_index("ra"), "ra", pa.array(ra))
    with pytest.raises(ContractError) as info:
        storage.write_table("galaxies", table, key="bad", provenance=_provenance())
    message = str(info.value)
    assert "column 'split'" in message and "['training']" in message and "2" in message
    assert "column 'ra': NaN" in message and "4" in message


def test_unreachable_s3_gives_actionable_error(monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "y")
    storage = Storage("s3://galpipe/nowhere")
    with pytest.raises(StorageError, match="unreachable.*AWS_ENDPOINT_URL"):
        storage.check_reachable()


def test_corrupt_parquet_gives_storage_error(tmp_path):
    storage = Storage(tmp_path)
    ref = storage.write_table("galaxies", _galaxies(10), key="k", provenance=_provenance())
    with open(ref.files[0], "wb") as handle:
        handle.write(b"PAR1 not really parquet")
    with pytest.raises(StorageError, match="cannot read table 'galaxies'"):
        storage.read_table("galaxies", "k")
