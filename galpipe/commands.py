"""Sub-commands that run the pipeline or its stages: run, train, infer, neighbours, causal,
information, ingest, mock.

The stage commands run the same DAG as ``galpipe run`` limited to one stage group and what it
depends on; completed outputs are reused, so ``galpipe causal`` after ``galpipe run`` only
recomputes what its config changed.
"""

from __future__ import annotations

import argparse
import logging
import os

log = logging.getLogger("galpipe")

DEFAULT_STORAGE = "./galpipe-data"


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=None,
                        help="config YAML (default: the bundled NGC/IC sample, configs/ngc_ic.yaml)")
    parser.add_argument("--storage", default=os.environ.get("GALPIPE_STORAGE", DEFAULT_STORAGE),
                        help="storage root: a local directory or s3://bucket/prefix "
                             "(default: ./galpipe-data or $GALPIPE_STORAGE)")
    parser.add_argument("--tracking-uri", default=None,
                        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else a local "
                             "SQLite store beside local storage)")
    parser.add_argument("--run-id", default=None, help="run id (default: time + random)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set training.steps=100 "
                             "(value parsed as YAML)")


def parse_overrides(pairs: list[str]) -> dict:
    """A nested override mapping from ``KEY.PATH=VALUE`` strings (values parsed as YAML)."""
    import yaml

    overrides: dict = {}
    for pair in pairs:
        if "=" not in pair:
            raise ValueError(f"--set expects KEY=VALUE, got {pair!r}")
        dotted, value = pair.split("=", 1)
        node = overrides
        parts = dotted.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = yaml.safe_load(value)
    return overrides


def _run(args: argparse.Namespace, targets: tuple[str, ...] | None = None,
         models: tuple[str, ...] | None = None) -> int:
    from galpipe import config as config_module
    from galpipe.pipeline import run_pipeline

    config = config_module.load(args.config, overrides=parse_overrides(args.set))
    summary = run_pipeline(config, args.storage, tracking_uri=args.tracking_uri,
                           run_id=args.run_id, targets=targets, models=models)
    print(summary.render())
    return 0


def _stage_command(targets: tuple[str, ...]):
    def handler(args: argparse.Namespace) -> int:
        models = tuple(args.model) if getattr(args, "model", None) else None
        return _run(args, targets, models)
    return handler


def _mock(args: argparse.Namespace) -> int:
    from galpipe.config import stable_hash
    from galpipe.ingest.mock import mock_survey
    from galpipe.pipeline.core import new_run_id
    from galpipe.storage import Provenance, Storage

    storage = Storage(args.storage)
    storage.check_reachable()
    key = args.key or f"mock-{stable_hash([args.n, args.seed, args.image_size])}"
    source = [f"source:mock?n={args.n}&seed={args.seed}"]
    run_id = new_run_id()
    with storage.table_writer("galaxies", key=key, provenance=Provenance(
            run_id, stable_hash(vars(args)), input_uris=source, stage="mock")) as galaxies, \
            storage.table_writer("cutouts", key=key, provenance=Provenance(
                run_id, stable_hash(vars(args)), input_uris=source, stage="mock")) as cutouts:
        done = 0
        for gal, cut in mock_survey(args.n, seed=args.seed, chunk_size=args.chunk_size,
                                    image_size=args.image_size):
            galaxies.write(gal)
            cutouts.write(cut)
            done += gal.num_rows
            log.info("mock: %d / %d galaxies", done, args.n)
    print(f"mock survey of {args.n} galaxies written to {storage.uri}/tables/"
          f"{{galaxies,cutouts}}/{key}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    run = subparsers.add_parser(
        "run", help="run the whole pipeline (default: the bundled real sample, locally)")
    _common(run)
    run.set_defaults(handler=lambda args: _run(args))

    for name, targets, text in (
        ("train", ("train",), "train the models the analyses need (or --model NAME)"),
        ("infer", ("infer",), "predict every galaxy: predictions and metrics tables"),
        ("neighbours", ("neighbours",), "exact KNN in each SCL model's S and KNN estimates"),
        ("causal", ("local_tests", "discovery"), "local causal tests and global discovery"),
        ("information", ("information",), "pointwise information decomposition"),
    ):
        parser = subparsers.add_parser(name, help=text)
        _common(parser)
        if name in ("train", "infer"):
            parser.add_argument("--model", action="append",
                                help="only this model (e.g. mi:gri); repeatable")
        parser.set_defaults(handler=_stage_command(targets))

    mock = subparsers.add_parser("mock", help="write a mock survey in the galpipe contracts")
    mock.add_argument("--n", type=int, required=True, help="number of galaxies")
    mock.add_argument("--storage", default=os.environ.get("GALPIPE_STORAGE", DEFAULT_STORAGE))
    mock.add_argument("--seed", type=int, default=0)
    mock.add_argument("--chunk-size", type=int, default=10_000)
    mock.add_argument("--image-size", type=int, default=64)
    mock.add_argument("--key", default=None, help="output key (default: hash of the options)")
    mock.set_defaults(handler=_mock)

    try:
        from galpipe.ingest.cli import register as register_ingest
    except ModuleNotFoundError as exc:
        if exc.name != "galpipe.ingest.cli":
            raise
    else:
        register_ingest(subparsers)
