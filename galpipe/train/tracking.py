"""MLflow helpers for training: one client, explicit run ids, batched metric logging.

Everything goes through :class:`mlflow.tracking.MlflowClient` with an explicit run id, so the
driver and rank 0 of a Ray Train run can log into the same run without sharing MLflow's global
"active run" state, and a caller's own run is never ended here. The tracking URI is an
``http://`` server or a ``sqlite:///`` file; SQLite locks under concurrent writers, which is
why only rank 0 and the driver log.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping
from typing import Any

from galpipe.tracking import flatten_params

log = logging.getLogger(__name__)



def _client(tracking_uri: str):
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri)


def start_run(tracking_uri: str, experiment: str, run_name: str,
              tags: Mapping[str, str]) -> str:
    """Create a run under ``experiment`` (created when missing); return its id."""
    client = _client(tracking_uri)
    found = client.get_experiment_by_name(experiment)
    experiment_id = found.experiment_id if found else client.create_experiment(experiment)
    run = client.create_run(experiment_id, run_name=run_name, tags=dict(tags))
    return run.info.run_id


def end_run(tracking_uri: str, run_id: str, status: str = "FINISHED") -> None:
    _client(tracking_uri).set_terminated(run_id, status=status)


class RunLogger:
    """Logs parameters, metrics and artifacts into one existing MLflow run."""

    def __init__(self, tracking_uri: str, run_id: str) -> None:
        self.client = _client(tracking_uri)
        self.run_id = run_id

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Log (flattened) parameters; re-logging an identical value is allowed by MLflow."""
        from mlflow.entities import Param

        flat = flatten_params(params)
        items = [Param(k, v) for k, v in sorted(flat.items())]
        for start in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[start:start + 100])

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Log finite scalar metrics at ``step`` in one request."""
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, int(step)) for k, v in metrics.items()
                 if v is not None and math.isfinite(float(v))]
        if items:
            self.client.log_batch(self.run_id, metrics=items)

    def log_artifact(self, local_path: str, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, local_path, artifact_path)

    def set_tags(self, tags: Mapping[str, str]) -> None:
        for name, value in tags.items():
            self.client.set_tag(self.run_id, name, str(value))


__all__ = ["RunLogger", "end_run", "flatten_params", "start_run"]
