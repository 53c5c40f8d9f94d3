"""Ray Job entrypoint: one whole galpipe pipeline run on the cluster the job runs in.

    python jobs/run_pipeline.py --config configs/tiny.yaml --storage s3://galpipe/runs/tiny \\
        [--tracking-uri http://mlflow:5000] [--run-id ID] [--set training.use_gpu=true]

Run from the root of a galpipe checkout (the job's working directory). Ray Jobs sets
``RAY_ADDRESS`` for the entrypoint, so the pipeline joins the cluster instead of starting a
local runtime. Storage and MLflow settings come from the environment (``AWS_*``,
``MLFLOW_*``). Exit status 0 only when the pipeline completed.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

# `python jobs/run_pipeline.py` puts jobs/ first on sys.path; the checkout holding this script
# must come first so that the submitted galpipe code is the code that runs.
CHECKOUT = Path(__file__).resolve().parent.parent
if str(CHECKOUT) not in sys.path:
    sys.path.insert(0, str(CHECKOUT))


def build_parser() -> argparse.ArgumentParser:
    """The entrypoint's arguments (also used by tests to check the cluster manifests)."""
    parser = argparse.ArgumentParser(
        prog="jobs/run_pipeline.py",
        description="Run the galpipe pipeline inside a Ray job (or against $RAY_ADDRESS).")
    parser.add_argument("--config", default=None,
                        help="config YAML, relative to the checkout (default: configs/ngc_ic.yaml)")
    parser.add_argument("--storage", required=True,
                        help="storage root: s3://bucket/prefix on a cluster, or a local path")
    parser.add_argument("--tracking-uri", default=None,
                        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI)")
    parser.add_argument("--run-id", default=None, help="run id (default: time + random)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set training.use_gpu=true")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for noisy in ("urllib3", "botocore", "s3fs", "fsspec", "alembic", "matplotlib", "PIL"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # The same quiet defaults as `galpipe run`, minus the loopback ones: on a cluster the
    # network and auth settings belong to the cluster, which this process inherits.
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    os.environ.setdefault("RAY_TRAIN_ENABLE_STATE_TRACKING", "0")
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")

    from galpipe import config as config_module
    from galpipe.commands import parse_overrides
    from galpipe.pipeline import run_pipeline

    log = logging.getLogger("galpipe.jobs.run_pipeline")
    if not os.environ.get("RAY_ADDRESS"):
        log.warning("RAY_ADDRESS is not set: the pipeline starts a local Ray runtime")
    config = config_module.load(args.config, overrides=parse_overrides(args.set))
    summary = run_pipeline(config, args.storage, tracking_uri=args.tracking_uri,
                           run_id=args.run_id)
    sys.stdout.write(summary.render() + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
