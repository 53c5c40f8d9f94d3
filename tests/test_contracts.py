"""Table contracts: every declared table loads, and the validator reports every violation."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from galpipe.contracts import ContractError, check, contract_names, load_contract, validate

REQUIRED = {"galaxies", "cutouts", "predictions", "neighbours", "local_tests", "information",
            "information_summary", "causal_edges", "metrics", "runs"}


def test_every_required_table_has_a_contract_with_units_and_meanings():
    assert REQUIRED <= set(contract_names())
    for name in contract_names():
        contract = load_contract(name)
        assert contract.version >= 1
        for column in contract.columns:
            assert column.description, f"{name}.{column.name} has no meaning"
        if name not in ("galaxies", "cutouts"):
            assert contract.column_names[0] == "run_id", f"{name} lacks run_id first"


def test_cutout_image_accepts_uint8_or_float32_fixed_lists():
    contract = load_contract("cutouts")
    meta = {b"galpipe.bands": b"g,r,i", b"galpipe.image_shape": b"3,2,2",
            b"galpipe.pixel_kind": b"colour_uint8"}
    for dtype in (pa.uint8(), pa.float32()):
        images = pa.FixedSizeListArray.from_arrays(pa.array(np.zeros(24), dtype), 12)
        table = pa.table({"galaxy_id": pa.array([1, 2], pa.int64()), "image": images})
        assert check(table.replace_schema_metadata(meta), contract) == []
    ragged = pa.table({"galaxy_id": pa.array([1], pa.int64()),
                       "image": pa.array([[1.0, 2.0]], pa.list_(pa.float32()))})
    problems = check(ragged.replace_schema_metadata(meta), contract)
    assert any("column 'image': type" in p for p in problems)


def test_validator_lists_all_violations_together():
    table = pa.table({
        "run_id": ["r", None],
        "stage": ["a", "b"],
        "key": ["k", "k"],
        "table": ["t", "t"],
        "status": ["computed", "maybe"],
        "seconds": [1.0, 2.0],
        "started_at": ["x", "y"],
    })
    with pytest.raises(ContractError) as info:
        validate(table, "runs")
    message = str(info.value)
    assert "missing column 'config_hash'" in message
    assert "column 'run_id': nulls" in message and "1 row(s): 1" in message
    assert "values ['maybe']" in message
    assert "out of declared order" not in message  # order is only judged when nothing is missing
