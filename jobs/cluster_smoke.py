"""Ray Job entrypoint: a seconds-long check that a cluster can run galpipe jobs.

    python jobs/cluster_smoke.py --storage s3://galpipe/smoke [--run-id ID] [--n-galaxies 64]

Checks what a pipeline run relies on, without training anything:

* one task pinned to every alive node with CPUs imports galpipe from the job's working
  directory, reports which storage and MLflow variables it sees (names and whether they are
  set, never the values of secrets) and writes that report to storage as
  ``smoke/<run_id>/node-<node id>.json``: so every node has the code, the environment and
  write access to the bucket;
* the driver writes a small ``galaxies`` table through ``galpipe.storage`` (contract-checked,
  atomic, with provenance) under the key ``smoke-<run_id>``.

The last line of the output is ``SMOKE OK nodes=<n> galaxies=<rows>``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parent.parent
if str(CHECKOUT) not in sys.path:
    sys.path.insert(0, str(CHECKOUT))

log = logging.getLogger("galpipe.jobs.cluster_smoke")


def build_parser() -> argparse.ArgumentParser:
    """The entrypoint's arguments."""
    parser = argparse.ArgumentParser(
        prog="jobs/cluster_smoke.py",
        description="Check that every node of a Ray cluster can run galpipe and write storage.")
    parser.add_argument("--storage", required=True, help="storage root (s3://bucket/prefix)")
    parser.add_argument("--run-id", default=None, help="run id (default: time + random)")
    parser.add_argument("--n-galaxies", type=int, default=64,
                        help="rows of the galaxies table the driver writes")
    return parser


def node_report(storage_uri: str, run_id: str) -> dict:
    """What this worker's node sees; written to storage and returned.

    Values are reported only for non-secret endpoint settings; every other variable is
    reported as set or not.
    """
    import ray

    from galpipe.storage import Storage
    from galpipe.submit import FORWARDED_ENV

    shown = {"AWS_ENDPOINT_URL", "AWS_REGION", "MLFLOW_TRACKING_URI", "MLFLOW_S3_ENDPOINT_URL"}
    context = ray.get_runtime_context()
    report = {
        "node_id": context.get_node_id(),
        "pid": os.getpid(),
        "galpipe_file": str(Path(sys.modules["galpipe"].__file__).resolve()),
        "env_set": {name: bool(os.environ.get(name)) for name in FORWARDED_ENV},
        "env_values": {name: os.environ.get(name) for name in sorted(shown)},
    }
    storage = Storage(storage_uri)
    report["uri"] = storage.write_bytes(f"smoke/{run_id}/node-{report['node_id']}.json",
                                        json.dumps(report, indent=1).encode())
    return report


def smoke_galaxies(n: int, seed: int = 0):
    """``n`` made-up galaxies in the ``galaxies`` contract (positions uniform on the sky)."""
    import numpy as np
    import pyarrow as pa

    rng = np.random.default_rng(seed)
    splits = np.array(["train", "validation", "test"])[np.arange(n) % 3]
    return pa.table({
        "galaxy_id": pa.array(np.arange(1, n + 1), pa.int64()),
        "name": [f"SMOKE{i:05d}" for i in range(1, n + 1)],
        "ra": rng.uniform(0.0, 360.0, n),
        "dec": np.degrees(np.arcsin(rng.uniform(-1.0, 1.0, n))),
        "redshift": rng.uniform(0.005, 0.1, n),
        "stellar_mass": rng.uniform(8.0, 11.5, n),
        "stellar_mass_source": ["mock"] * n,
        "class": np.where(np.arange(n) % 2 == 0, "spiral", "elliptical").tolist(),
        "split": splits.tolist(),
    })


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    if not os.environ.get("RAY_ADDRESS"):
        raise SystemExit("RAY_ADDRESS is not set: submit this script as a Ray job "
                         "(galpipe.submit.submit_job or `ray job submit`)")
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from galpipe.config import stable_hash
    from galpipe.pipeline.core import new_run_id
    from galpipe.storage import Provenance, Storage

    run_id = args.run_id or new_run_id()
    storage = Storage(args.storage)
    storage.check_reachable()
    ray.init(address=os.environ["RAY_ADDRESS"], log_to_driver=True)
    try:
        nodes = [n["NodeID"] for n in ray.nodes()
                 if n["Alive"] and n["Resources"].get("CPU", 0) > 0]
        # A quarter CPU each, so the check fits beside other work on small nodes.
        report_task = ray.remote(num_cpus=0.25)(node_report)
        pending = [report_task.options(scheduling_strategy=NodeAffinitySchedulingStrategy(
            node_id, soft=False)).remote(storage.uri, run_id) for node_id in nodes]
        reports = ray.get(pending, timeout=300)
    finally:
        ray.shutdown()
    for report in reports:
        missing = sorted(name for name, present in report["env_set"].items()
                         if present != bool(os.environ.get(name)))
        log.info("node %s: galpipe from %s; report %s%s", report["node_id"][:12],
                 report["galpipe_file"], report["uri"],
                 f"; environment differs from the driver's for {missing}" if missing else "")

    galaxies = smoke_galaxies(args.n_galaxies)
    provenance = Provenance(run_id=run_id, config_hash=stable_hash(vars(args)),
                            input_uris=["source:cluster_smoke"], stage="cluster_smoke")
    ref = storage.write_table("galaxies", galaxies, key=f"smoke-{run_id}",
                              provenance=provenance)
    sys.stdout.write(f"SMOKE OK nodes={len(reports)} galaxies={ref.num_rows}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
