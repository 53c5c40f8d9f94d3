"""Table contracts: the declared schema of every galpipe table, and a validator.

Contracts live as YAML files in the repository's ``schemas/`` directory, one per table. Each
declares the table's columns in order with their Arrow type, unit, nullability and meaning. The
validator checks an in-memory Arrow table or a Parquet dataset against a contract and reports
*every* violation with the column and, where it applies, the first offending rows.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import yaml

SCHEMA_DIR = Path(__file__).resolve().parent.parent / "schemas"

_SIMPLE_TYPES: dict[str, pa.DataType] = {
    "int64": pa.int64(),
    "int32": pa.int32(),
    "int16": pa.int16(),
    "int8": pa.int8(),
    "uint8": pa.uint8(),
    "float64": pa.float64(),
    "float32": pa.float32(),
    "string": pa.string(),
    "large_string": pa.large_string(),
    "bool": pa.bool_(),
    "timestamp": pa.timestamp("us", tz="UTC"),
}
_NESTED = re.compile(r"^(list|large_list|fixed_size_list)<(\w+)>(?:\[(\d+)\])?$")


class ContractError(ValueError):
    """A table does not satisfy its contract; the message lists every violation."""

    def __init__(self, table: str, violations: list[str]):
        self.table = table
        self.violations = violations
        lines = "\n  - ".join(violations)
        super().__init__(f"table '{table}' violates its contract ({len(violations)}):\n  - {lines}")


def _type_matches(declared: str, actual: pa.DataType) -> bool:
    """True when an Arrow type satisfies one declared type string."""
    if declared in _SIMPLE_TYPES:
        expected = _SIMPLE_TYPES[declared]
        if declared == "string":
            return actual in (pa.string(), pa.large_string())
        if declared == "timestamp":
            return pa.types.is_timestamp(actual)
        return actual == expected
    match = _NESTED.match(declared)
    if not match:
        raise ValueError(f"unknown type '{declared}' in a contract")
    kind, value_name, size = match.groups()
    value_type = _SIMPLE_TYPES[value_name]
    if kind == "fixed_size_list":
        if not pa.types.is_fixed_size_list(actual):
            return False
        if size is not None and actual.list_size != int(size):
            return False
        return actual.value_type == value_type
    if kind in ("list", "large_list"):
        is_list = pa.types.is_list(actual) or pa.types.is_large_list(actual)
        return is_list and actual.value_type == value_type
    return False


@dataclass(frozen=True)
class Column:
    """One declared column."""

    name: str
    types: tuple[str, ...]
    unit: str | None
    nullable: bool
    description: str
    allowed: tuple[Any, ...] | None = None

    def arrow_type(self) -> pa.DataType:
        """The Arrow type used when building an empty table or casting (first declared type)."""
        declared = self.types[0]
        if declared in _SIMPLE_TYPES:
            return _SIMPLE_TYPES[declared]
        kind, value_name, size = _NESTED.match(declared).groups()
        value_type = _SIMPLE_TYPES[value_name]
        if kind == "fixed_size_list":
            if size is None:
                raise ValueError(f"column '{self.name}' has no fixed size to build a type from")
            return pa.list_(value_type, int(size))
        return pa.list_(value_type)


@dataclass(frozen=True)
class Contract:
    """A versioned table contract loaded from ``schemas/<name>.yaml``."""

    name: str
    version: int
    description: str
    columns: tuple[Column, ...]
    extra_columns: bool = False
    metadata_keys: tuple[str, ...] = field(default_factory=tuple)

    @property
    def column_names(self) -> list[str]:
        return [c.name for c in self.columns]

    def column(self, name: str) -> Column:
        for col in self.columns:
            if col.name == name:
                return col
        raise KeyError(f"table '{self.name}' declares no column '{name}'")

    def arrow_schema(self) -> pa.Schema:
        """The Arrow schema of the declared columns (first declared type of each)."""
        return pa.schema(
            [pa.field(c.name, c.arrow_type(), nullable=c.nullable) for c in self.columns]
        )

    def conform(self, table: pa.Table) -> pa.Table:
        """Reorder and cast a table's declared columns to the contract (extra columns kept last).

        Raises ``ContractError`` for missing columns; casting only widens or narrows numeric
        types the way ``pyarrow.compute.cast`` does safely.
        """
        missing = [c for c in self.column_names if c not in table.column_names]
        if missing:
            raise ContractError(self.name, [f"missing column '{c}'" for c in missing])
        arrays, fields = [], []
        for col in self.columns:
            array = table.column(col.name)
            if not any(_type_matches(t, array.type) for t in col.types):
                array = _cast_column(array, col, self.name)
            arrays.append(array)
            fields.append(pa.field(col.name, array.type, nullable=col.nullable))
        extras = [n for n in table.column_names if n not in self.column_names]
        for name in extras:
            arrays.append(table.column(name))
            fields.append(table.schema.field(name))
        return pa.Table.from_arrays(arrays, schema=pa.schema(fields, metadata=table.schema.metadata))


def _cast_column(array: pa.ChunkedArray, col: Column, table: str) -> pa.ChunkedArray:
    """``array`` cast to the column's type; a ContractError names the column and bad values."""
    target = col.arrow_type()
    try:
        return array.cast(target)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as exc:
        detail = str(exc).splitlines()[0]
        try:  # the first values that do not convert, so the user can find them
            converted = pc.cast(array, target, safe=False)
            bad = pc.and_(pc.is_null(converted), pc.is_valid(array))
            if pc.any(bad).as_py():
                values = pc.filter(array, bad).slice(0, 3).to_pylist()
                detail = f"values {values} at {_row_context(bad)}"
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
            pass
        raise ContractError(table, [f"column '{col.name}': type {array.type} cannot be converted "
                                    f"to declared {list(col.types)}: {detail}"]) from exc


def _parse_contract(raw: dict[str, Any], source: str) -> Contract:
    try:
        columns = []
        for entry in raw["columns"]:
            types = entry["type"]
            types = tuple(types) if isinstance(types, list) else (types,)
            for declared in types:
                if declared not in _SIMPLE_TYPES and not _NESTED.match(declared):
                    raise ValueError(f"column '{entry['name']}': unknown type '{declared}'")
            allowed = entry.get("allowed")
            columns.append(
                Column(
                    name=entry["name"],
                    types=types,
                    unit=entry.get("unit"),
                    nullable=bool(entry.get("nullable", True)),
                    description=str(entry.get("description", "")).strip(),
                    allowed=tuple(allowed) if allowed is not None else None,
                )
            )
        return Contract(
            name=raw["name"],
            version=int(raw["version"]),
            description=str(raw.get("description", "")).strip(),
            columns=tuple(columns),
            extra_columns=bool(raw.get("extra_columns", False)),
            metadata_keys=tuple(raw.get("metadata", []) or []),
        )
    except (KeyError, TypeError) as exc:
        raise ValueError(f"malformed contract {source}: {exc!r}") from exc


@functools.lru_cache(maxsize=None)
def load_contract(name: str) -> Contract:
    """Load the contract of table ``name`` from ``schemas/<name>.yaml``."""
    path = SCHEMA_DIR / f"{name}.yaml"
    if not path.exists():
        known = ", ".join(sorted(p.stem for p in SCHEMA_DIR.glob("*.yaml")))
        raise KeyError(f"no contract for table '{name}' in {SCHEMA_DIR} (known: {known})")
    with path.open() as handle:
        raw = yaml.safe_load(handle)
    contract = _parse_contract(raw, str(path))
    if contract.name != name:
        raise ValueError(f"{path} declares name '{contract.name}', expected '{name}'")
    return contract


def contract_names() -> list[str]:
    """Names of every declared table."""
    return sorted(p.stem for p in SCHEMA_DIR.glob("*.yaml"))


def _row_context(mask: pa.ChunkedArray | pa.Array, limit: int = 5) -> str:
    """A short description of the first rows where ``mask`` is true."""
    import numpy as np

    flags = np.asarray(mask.to_numpy(zero_copy_only=False), dtype=bool)
    rows = np.flatnonzero(flags)
    shown = ", ".join(str(r) for r in rows[:limit])
    more = f" and {len(rows) - limit} more" if len(rows) > limit else ""
    return f"{len(rows)} row(s): {shown}{more}"


def check(table: pa.Table, contract: Contract | str, *, row_offset: int = 0) -> list[str]:
    """Every violation of ``contract`` by ``table``, as human-readable strings (empty if valid)."""
    if isinstance(contract, str):
        contract = load_contract(contract)
    violations: list[str] = []
    names = table.column_names

    missing = [c.name for c in contract.columns if c.name not in names]
    for name in missing:
        violations.append(f"missing column '{name}'")
    if not contract.extra_columns:
        for name in names:
            if name not in contract.column_names:
                violations.append(f"unexpected column '{name}' (not declared in the contract)")
    present = [c for c in contract.columns if c.name in names]
    declared_order = [c.name for c in present]
    actual_order = [n for n in names if n in declared_order]
    if not missing and actual_order != declared_order:
        violations.append(f"columns out of declared order: {actual_order} != {declared_order}")

    for col in present:
        array = table.column(col.name)
        if not any(_type_matches(t, array.type) for t in col.types):
            violations.append(
                f"column '{col.name}': type {array.type} does not match declared {list(col.types)}"
            )
            continue
        if not col.nullable and array.null_count:
            where = _row_context(pc.is_null(array))
            violations.append(f"column '{col.name}': nulls in a non-nullable column at {where}")
        if pa.types.is_floating(array.type) and not col.nullable:
            nan_mask = pc.is_nan(array)
            if pc.any(nan_mask).as_py():
                violations.append(f"column '{col.name}': NaN values at {_row_context(nan_mask)}")
            # A required number must be a number: +-inf is as missing as NaN.
            inf_mask = pc.is_inf(array)
            if pc.any(inf_mask).as_py():
                violations.append(f"column '{col.name}': infinite values at "
                                  f"{_row_context(inf_mask)}")
        if col.allowed is not None and len(array):
            allowed = pa.array(list(col.allowed), type=array.type)
            bad = pc.and_(pc.invert(pc.is_in(array, value_set=allowed)), pc.is_valid(array))
            if pc.any(bad).as_py():
                values = pc.unique(pc.filter(array, bad)).to_pylist()[:5]
                violations.append(
                    f"column '{col.name}': values {values} not in {list(col.allowed)} at "
                    f"{_row_context(bad)}"
                )

    metadata = table.schema.metadata or {}
    for key in contract.metadata_keys:
        if key.encode() not in metadata:
            violations.append(f"missing schema metadata key '{key}'")
    if row_offset:
        violations = [f"{v} (rows counted from {row_offset})" for v in violations]
    return violations


def validate(table: pa.Table, contract: Contract | str) -> pa.Table:
    """Return ``table`` unchanged if it satisfies ``contract``; raise ``ContractError`` otherwise."""
    if isinstance(contract, str):
        contract = load_contract(contract)
    violations = check(table, contract)
    if violations:
        raise ContractError(contract.name, violations)
    return table


def validate_dataset(source: Any, contract: Contract | str) -> int:
    """Validate a Parquet dataset (a ``pyarrow.dataset.Dataset``) batch by batch.

    Returns the number of rows checked. Violations of every batch are collected, with row
    numbers counted from the start of the dataset, and raised together.
    """
    if isinstance(contract, str):
        contract = load_contract(contract)
    violations: list[str] = []
    offset = 0
    for fragment in source.get_fragments():
        for batch in fragment.to_batches():
            table = pa.Table.from_batches([batch], schema=source.schema)
            found = check(table, contract, row_offset=offset)
            violations.extend(f"{fragment.path}: {v}" for v in found)
            offset += batch.num_rows
    if violations:
        raise ContractError(contract.name, violations[:50])
    return offset
