"""MLflow lineage: one parent run per pipeline run, a child run per stage and model.

Only the driver (and rank 0 of a training job) writes to MLflow: a SQLite store locks under
concurrent writers. The embedded default is a local SQLite store next to local storage; a
remote tracking server is chosen with ``--tracking-uri`` or ``MLFLOW_TRACKING_URI``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def default_tracking_uri(storage_uri: str) -> str:
    """``$MLFLOW_TRACKING_URI`` if set; else SQLite beside local storage (or in the cwd)."""
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    base = Path.cwd() if storage_uri.startswith("s3://") else Path(storage_uri).expanduser()
    base.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{(base / 'mlflow.db').resolve()}"


def _safe_key(key: str) -> str:
    """An MLflow-legal name: feature-set names like ``gri+nir`` carry characters it rejects."""
    return "".join(ch if ch.isalnum() or ch in "_-. :/" else "_" for ch in key)


def flatten_params(params: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested mappings as MLflow-legal ``a.b`` keys with string values (params are strings)."""
    flat: dict[str, str] = {}
    for key, value in params.items():
        name = f"{prefix}{_safe_key(str(key))}"
        if isinstance(value, Mapping):
            flat.update(flatten_params(value, f"{name}."))
        else:
            flat[name] = str(value)[:500]
    return flat


class Tracker:
    """A thin wrapper around MLflow's client for the pipeline's parent/child runs."""

    def __init__(self, tracking_uri: str, experiment: str):
        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
        import mlflow
        from mlflow.tracking import MlflowClient

        self.tracking_uri = tracking_uri
        mlflow.set_tracking_uri(tracking_uri)
        self.client = MlflowClient(tracking_uri)
        found = self.client.get_experiment_by_name(experiment)
        self.experiment_id = found.experiment_id if found else \
            self.client.create_experiment(experiment)
        self.parent_id: str | None = None

    def start_parent(self, run_name: str, tags: Mapping[str, str]) -> str:
        run = self.client.create_run(self.experiment_id, run_name=run_name, tags=dict(tags))
        self.parent_id = run.info.run_id
        return self.parent_id

    def end_parent(self, status: str = "FINISHED") -> None:
        if self.parent_id:
            self.client.set_terminated(self.parent_id, status=status)

    def create_child(self, name: str, tags: Mapping[str, str] | None = None) -> str:
        """A child run under the parent (left open for a training job's rank 0 to write)."""
        tags = {"mlflow.parentRunId": self.parent_id or "", "galpipe.stage": name,
                **dict(tags or {})}
        return self.client.create_run(self.experiment_id, run_name=name, tags=tags).info.run_id

    @contextmanager
    def child(self, name: str, tags: Mapping[str, str] | None = None) -> Iterator[str]:
        run_id = self.create_child(name, tags)
        try:
            yield run_id
        except BaseException:
            self.client.set_terminated(run_id, status="FAILED")
            raise
        self.client.set_terminated(run_id, status="FINISHED")

    def log_params(self, run_id: str, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        flat = [Param(k, v) for k, v in flatten_params(params).items()]
        for start in range(0, len(flat), 100):
            self.client.log_batch(run_id, params=flat[start:start + 100])

    def log_metrics(self, run_id: str, metrics: Mapping[str, float], step: int = 0) -> None:
        import math
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        rows = [Metric(_safe_key(k), float(v), now, step) for k, v in metrics.items()
                if v is not None and math.isfinite(float(v))]
        for start in range(0, len(rows), 500):
            self.client.log_batch(run_id, metrics=rows[start:start + 500])

    def set_tags(self, run_id: str, tags: Mapping[str, Any]) -> None:
        for key, value in tags.items():
            self.client.set_tag(run_id, _safe_key(key), str(value)[:5000])

    def log_artifact(self, run_id: str, path: str | os.PathLike, subdir: str | None = None) -> None:
        try:
            self.client.log_artifact(run_id, str(path), artifact_path=subdir)
        except Exception as exc:  # a figure that cannot be uploaded must not fail the science
            log.warning("could not log artifact %s to MLflow: %s", path, exc)
