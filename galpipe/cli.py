"""The ``galpipe`` command line.

Each sub-command lives with the stage it drives and registers itself here; this module only
wires them together and sets up logging and the local-runtime environment.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

# Module that defines `register(subparsers)` for each group of sub-commands.
COMMAND_MODULES = (
    "galpipe.commands",       # run, ingest, mock, train, infer, neighbours, causal, information
    "galpipe.results.cli",    # query, tables
    "galpipe.submit",         # submit (Ray Jobs)
)


def _local_environment() -> None:
    """Defaults that keep a local Ray runtime on loopback and quiet (never overriding the user)."""
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    os.environ.setdefault("RAY_TRAIN_ENABLE_STATE_TRACKING", "0")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="galpipe",
        description="Interpretable deep-learning stellar masses for survey catalogues.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
            continue
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    _local_environment()
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    for noisy in ("urllib3", "botocore", "s3fs", "fsspec", "alembic", "matplotlib", "PIL"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        return int(args.handler(args) or 0)
    except KeyboardInterrupt:
        logging.getLogger("galpipe").warning(
            "interrupted: completed stages are kept; rerun the same command to resume")
        return 130
    except (ValueError, OSError, RuntimeError) as exc:
        if args.verbose:
            raise
        logging.getLogger("galpipe").error("%s", exc)
        return 2


if __name__ == "__main__":
    sys.exit(main())
