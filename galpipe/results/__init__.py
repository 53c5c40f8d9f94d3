"""Query result tables with Polars: any table, local or on S3, filtered to a run or across runs.

    >>> import galpipe.results as results
    >>> lf = results.open_table("information", storage="./galpipe-data", run="latest")
    >>> lf.group_by("tuple").agg(pl.col("synergistic").mean()).collect()

A run's tables are the committed outputs it computed or reused, as listed in the ``runs`` table;
``run=None`` reads every committed output (across runs), and the ``run_id`` column tells which
run computed each row.
"""

from __future__ import annotations

from collections.abc import Iterable

import polars as pl

from galpipe.storage import Storage, StorageError, polars_storage_options

__all__ = ["open_table", "run_keys", "runs", "sql", "tables"]


def _storage(storage: Storage | str) -> Storage:
    return storage if isinstance(storage, Storage) else Storage(storage)


def runs(storage: Storage | str) -> pl.DataFrame:
    """Every recorded pipeline run stage (the ``runs`` table), newest run first."""
    store = _storage(storage)
    if not store.keys("runs"):
        raise StorageError(f"no pipeline runs recorded under {store.uri}")
    return open_table("runs", store).collect().sort("started_at", descending=True)


def run_keys(storage: Storage | str, run: str, table: str) -> list[str]:
    """Keys of ``table``'s committed outputs that run ``run`` ('latest' allowed) used."""
    frame = runs(storage)
    if run == "latest":
        run = frame.row(0, named=True)["run_id"]
    used = frame.filter(pl.col("run_id") == run)
    if used.is_empty():
        raise StorageError(f"no run '{run}' under {_storage(storage).uri}")
    keys = used.filter(pl.col("table") == table)["key"].to_list()
    # Stages write companion tables under the same key (metrics beside predictions, summaries
    # beside their tables); a run that used the key used those too.
    store = _storage(storage)
    companions = used["key"].unique().to_list()
    keys += [k for k in companions if k not in keys and store.has_table(table, k)]
    return list(dict.fromkeys(keys))


def open_table(table: str, storage: Storage | str, run: str | None = None,
               keys: Iterable[str] | None = None) -> pl.LazyFrame:
    """A Polars LazyFrame over result table ``table``.

    ``run``: a run id or ``"latest"`` to read only the outputs that run used; None reads every
    committed output. ``keys`` selects outputs explicitly.
    """
    store = _storage(storage)
    if keys is None:
        keys = run_keys(store, run, table) if run is not None else store.keys(table)
    files: list[str] = []
    for key in keys:
        files.extend(store.uri_of(f) for f in store.table(table, key).files)
    if not files:
        raise StorageError(f"table '{table}' has no committed output under {store.uri}"
                           + (f" for run '{run}'" if run else ""))
    return pl.scan_parquet(files, storage_options=polars_storage_options(store.uri))


def tables(storage: Storage | str) -> dict[str, int]:
    """Table names under a storage root with their number of committed outputs."""
    store = _storage(storage)
    return {name: len(store.keys(name)) for name in store.tables()}


def sql(query: str, storage: Storage | str, run: str | None = None) -> pl.DataFrame:
    """Run Polars SQL over every table under ``storage`` (tables named as in the contracts)."""
    store = _storage(storage)
    context = pl.SQLContext()
    skipped: list[str] = []
    for name in store.tables():
        if name in query:
            try:
                context.register(name, open_table(name, store, run=run))
            except StorageError as exc:
                skipped.append(f"{name} ({exc})")
    try:
        return context.execute(query, eager=True)
    except (pl.exceptions.SQLInterfaceError, pl.exceptions.SQLSyntaxError,
            pl.exceptions.ColumnNotFoundError, pl.exceptions.ComputeError,
            pl.exceptions.InvalidOperationError, pl.exceptions.SchemaError) as exc:
        detail = f"; not usable: {'; '.join(skipped)}" if skipped else ""
        raise ValueError(f"query failed under {store.uri}: {exc}. Tables available: "
                         f"{store.tables() or 'none'}{detail}") from exc
    except OSError as exc:
        raise StorageError(f"query could not read tables under {store.uri}: {exc}") from exc
