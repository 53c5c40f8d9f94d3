"""``galpipe query`` and ``galpipe tables``: look at result tables from the shell."""

from __future__ import annotations

import argparse
import os

import polars as pl


def _query(args: argparse.Namespace) -> int:
    from galpipe.results import sql

    frame = sql(args.sql, args.storage, run=args.run)
    with pl.Config(tbl_rows=args.max_rows, tbl_cols=-1, tbl_width_chars=160,
                   fmt_str_lengths=40):
        print(frame)
    if args.output:
        frame.write_csv(args.output) if args.output.endswith(".csv") else \
            frame.write_parquet(args.output)
    return 0


def _tables(args: argparse.Namespace) -> int:
    from galpipe.results import runs, tables

    for name, count in tables(args.storage).items():
        print(f"{name:<22}{count:>4} committed output(s)")
    try:
        frame = runs(args.storage)
        print("\nruns:")
        print(frame.group_by("run_id", maintain_order=True).agg(
            pl.col("started_at").first(), pl.len().alias("stages"),
            (pl.col("status") == "computed").sum().alias("computed")))
    except Exception:  # no run recorded yet is not an error for a listing
        pass
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    storage_default = os.environ.get("GALPIPE_STORAGE", "./galpipe-data")
    query = subparsers.add_parser("query", help="run Polars SQL over the result tables")
    query.add_argument("sql", help='e.g. "SELECT tuple, avg(synergistic) FROM information '
                                   'GROUP BY tuple"')
    query.add_argument("--storage", default=storage_default)
    query.add_argument("--run", default="latest",
                       help="run id, 'latest' (default) or 'all' for every run")
    query.add_argument("--max-rows", type=int, default=40)
    query.add_argument("--output", default=None, help="also write the result (.csv/.parquet)")
    query.set_defaults(handler=lambda a: _query(argparse.Namespace(
        **{**vars(a), "run": None if a.run == "all" else a.run})))

    listing = subparsers.add_parser("tables", help="list result tables and runs")
    listing.add_argument("--storage", default=storage_default)
    listing.set_defaults(handler=_tables)
