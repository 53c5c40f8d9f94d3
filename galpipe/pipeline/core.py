"""The run context and the stage runner: content-keyed caching, resume, progress, lineage.

Each stage is a function of (its config section, its input tables) to its output tables. Its
output key is the hash of exactly those, so a rerun skips complete outputs, an interrupted run
continues from the first incomplete stage, and changing one model's config reruns only what
depends on that model.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from galpipe.config import Config, stable_hash
from galpipe.storage import Provenance, Storage, code_version
from galpipe.tracking import Tracker, default_tracking_uri

log = logging.getLogger(__name__)

# Bump when a stage's computation changes in a way that invalidates its committed outputs.
STAGE_VERSIONS = {
    "ingest": 1, "train": 1, "infer": 1, "neighbours": 1, "local_tests": 1,
    "discovery": 1, "information": 1,
}


def new_run_id() -> str:
    """A sortable, unique run id: UTC time plus a random suffix."""
    now = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S")
    return f"{now}-{uuid.uuid4().hex[:6]}"


@dataclass
class StageRecord:
    """What one stage did in this run."""

    stage: str
    table: str
    key: str
    status: str
    seconds: float
    info: dict[str, Any] = field(default_factory=dict)


class RunContext:
    """Everything a stage needs: config, storage, run id, tracker, and the run's records."""

    def __init__(self, config: Config, storage_uri: str, *, tracking_uri: str | None = None,
                 run_id: str | None = None):
        self.config = config
        self.storage = Storage(storage_uri)
        self.storage.check_reachable()
        self.run_id = run_id or new_run_id()
        self.started_at = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        self.tracking_uri = tracking_uri or config.tracking.tracking_uri or \
            default_tracking_uri(storage_uri)
        self.tracker = Tracker(self.tracking_uri, config.tracking.experiment)
        self.records: list[StageRecord] = []
        self.keys: dict[str, str] = {}
        self._progress_total = 0
        self._progress_done = 0

    # Keys and provenance ------------------------------------------------------------------

    def key(self, stage: str, *parts: Any) -> str:
        """The content key of a stage output: its version, config parts and input keys."""
        return stable_hash([stage, STAGE_VERSIONS.get(stage.split(":")[0], 1), *parts])

    def provenance(self, stage: str, inputs: list[tuple[str, str]] | None = None,
                   extra: dict[str, Any] | None = None) -> Provenance:
        """Provenance for an output of ``stage`` made from committed ``(table, key)`` inputs."""
        uris = []
        for table, key in inputs or []:
            if table.startswith("models/") or table.startswith("source:"):
                uris.append(table if table.startswith("source:") else self.storage.uri_of(
                    self.storage.path(table)))
            else:
                uris.append(self.storage.uri_of(self.storage.table_path(table, key)))
        return Provenance(run_id=self.run_id, config_hash=self.config.config_hash,
                          code_version=code_version(), input_uris=uris, stage=stage,
                          extra=extra or {})

    # Running stages -----------------------------------------------------------------------

    def expect_stages(self, n: int) -> None:
        self._progress_total += n

    def run_stage(self, stage: str, table: str, key: str, done: Callable[[], bool],
                  compute: Callable[[], dict[str, Any] | None]) -> StageRecord:
        """Run ``compute`` unless ``done()`` says the keyed output is already committed."""
        self._progress_done += 1
        prefix = f"[{self._progress_done}/{self._progress_total}] {stage}"
        start = time.perf_counter()
        if done():
            record = StageRecord(stage, table, key, "reused", time.perf_counter() - start)
            log.info("%s: reusing committed %s/%s", prefix, table, key)
        else:
            log.info("%s: computing %s/%s", prefix, table, key)
            info = compute() or {}
            record = StageRecord(stage, table, key, "computed", time.perf_counter() - start,
                                 info)
            log.info("%s: done in %.1f s %s", prefix, record.seconds,
                     _short(info))
        self.records.append(record)
        self.keys[stage] = key
        return record

    def runs_table(self) -> pa.Table:
        """This run's records in the ``runs`` contract."""
        return pa.table({
            "run_id": [self.run_id] * len(self.records),
            "stage": [r.stage for r in self.records],
            "table": [r.table for r in self.records],
            "key": [r.key for r in self.records],
            "status": [r.status for r in self.records],
            "seconds": [float(r.seconds) for r in self.records],
            "config_hash": [self.config.config_hash] * len(self.records),
            "started_at": [self.started_at] * len(self.records),
        })

    def write_runs_table(self) -> None:
        self.storage.write_table("runs", self.runs_table(), key=self.run_id,
                                 provenance=self.provenance("runs"))


def _short(info: dict[str, Any]) -> str:
    shown = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in info.items()
             if isinstance(v, (int, float, str)) and not k.startswith("_")}
    return str(shown) if shown else ""


def ensure_ray(config: Config) -> bool:
    """Connect to the cluster in ``RAY_ADDRESS`` or start a local runtime on loopback.

    Returns True when this call started Ray (so the caller shuts it down).
    """
    import ray

    if ray.is_initialized():
        return False
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    if os.environ.get("RAY_ADDRESS"):
        ray.init(address=os.environ["RAY_ADDRESS"], log_to_driver=True)
        return True
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(
        num_cpus=config.resources.num_cpus,
        object_store_memory=config.resources.object_store_mb * 1024**2,
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=True,
        logging_level=logging.WARNING,
    )
    return True
