"""The main job end to end on a tiny mock survey: every table, caching, resume, lineage, queries."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow.compute as pc
import pytest

from galpipe import config as config_module
from galpipe.contracts import validate_dataset
from galpipe.pipeline import run_pipeline
from galpipe.storage import Storage

pytestmark = pytest.mark.timeout(900)

TINY = config_module.CONFIG_DIR / "tiny.yaml"
RESULT_TABLES = ("galaxies", "cutouts", "predictions", "metrics", "neighbours", "local_tests",
                 "local_tests_summary", "causal_edges", "information", "information_summary",
                 "runs")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, ray_local, mlflow_server):
    """One full pipeline run of the tiny config, tracked on the real MLflow server."""
    root = tmp_path_factory.mktemp("tiny")
    config = config_module.load(TINY)
    summary = run_pipeline(config, str(root / "store"), tracking_uri=mlflow_server.tracking_uri)
    return config, root / "store", summary, mlflow_server


def test_every_result_table_is_written_and_valid(tiny_run):
    _, store, summary, _ = tiny_run
    storage = Storage(store)
    assert set(RESULT_TABLES) <= set(storage.tables())
    for table in RESULT_TABLES:
        for key in storage.keys(table):
            assert validate_dataset(storage.dataset(table, key), table) > 0, table
            provenance = storage.provenance_of(table, key)
            assert provenance.run_id and provenance.config_hash and provenance.code_version
    assert all(r.status == "computed" for r in summary.records)
    predictions = storage.read_table("predictions")
    assert set(predictions.column("estimator").to_pylist()) == {"network", "knn"}
    n_galaxies = storage.read_table("galaxies").num_rows
    network = predictions.filter(pc.equal(predictions["estimator"], "network"))
    assert network.num_rows == n_galaxies * len(summary.records and tiny_run[0].models())
    assert summary.figures, "the run made no figures"


def test_rerun_with_same_config_reuses_every_stage(tiny_run):
    config, store, first, server = tiny_run
    start = time.perf_counter()
    second = run_pipeline(config, str(store), tracking_uri=server.tracking_uri)
    assert time.perf_counter() - start < 60
    assert [r.status for r in second.records] == ["reused"] * len(first.records)
    assert [r.key for r in second.records] == [r.key for r in first.records]


def test_changing_one_model_reruns_only_what_depends_on_it(tiny_run):
    config, store, first, server = tiny_run
    changed = config_module.load(TINY, overrides={
        "training": {"overrides": {"mi:MW123": {"steps": 20}}}})
    summary = run_pipeline(changed, str(store), tracking_uri=server.tracking_uri,
                           targets=("information",))
    computed = {r.stage for r in summary.records if r.status == "computed"}
    assert computed == {"train:mi:MW123", "infer:mi:MW123", "information"}


def test_mlflow_holds_parent_and_child_runs(tiny_run):
    import mlflow
    from mlflow.tracking import MlflowClient

    config, _, summary, server = tiny_run
    client = MlflowClient(server.tracking_uri)
    parent = client.get_run(summary.mlflow_run_id)
    assert parent.data.tags["galpipe.run_id"] == summary.run_id
    assert parent.info.status == "FINISHED"
    experiment = client.get_experiment_by_name(config.tracking.experiment)
    children = client.search_runs(
        [experiment.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{summary.mlflow_run_id}'")
    names = {c.data.tags.get("galpipe.stage") for c in children}
    assert {f"train:{m.name}" for m in config.models()} <= names
    trained = next(c for c in children if c.data.tags.get("galpipe.stage") == "train:mi:Mugriz")
    assert "validation_cross_entropy" in trained.data.metrics
    artifacts = [a.path for a in client.list_artifacts(summary.mlflow_run_id, "figures")]
    assert any(path.endswith(".png") for path in artifacts)
    del mlflow


def test_results_query_with_polars(tiny_run):
    from galpipe.results import open_table, sql

    _, store, summary, _ = tiny_run
    info = open_table("information", store, run=summary.run_id).collect()
    assert info["run_id"].unique().to_list() == [summary.run_id]
    by_class = sql("SELECT tuple, avg(synergistic) AS mean_synergy FROM information "
                   "GROUP BY tuple", store, run=summary.run_id)
    direct = info.group_by("tuple").agg(pl.col("synergistic").mean())
    assert np.isclose(by_class["mean_synergy"][0], direct["synergistic"][0])


def test_interrupted_run_resumes_and_matches_uninterrupted(tiny_run, tmp_path):
    """SIGKILL mid-training, rerun: the run completes with the same tables, keys and rows.

    Training is not bit-reproducible across processes (fresh augmentation entropy, Ray Data
    block timing), so values are compared for what is deterministic: the content keys of
    every stage, the set of tables, and the galaxies and splits of every row.
    """
    config, store, first, _ = tiny_run
    resumed_store = tmp_path / "resumed"
    env = dict(os.environ, MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'mlflow.db'}")
    env.pop("RAY_ADDRESS", None)
    command = [sys.executable, "-m", "galpipe.cli", "run", "--config", str(TINY),
               "--storage", str(resumed_store)]
    log_path = tmp_path / "first.log"
    with log_path.open("w") as log_file:
        process = subprocess.Popen(command, env=env, stdout=log_file,
                                   stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 400
        checkpoints = resumed_store / "checkpoints"
        while time.monotonic() < deadline and process.poll() is None:
            if checkpoints.exists() and any(checkpoints.rglob("checkpoint_*")):
                break
            time.sleep(0.2)
        assert process.poll() is None, f"run ended before a checkpoint:\n{log_path.read_text()}"
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(30)
    resumed = Storage(resumed_store)
    assert not resumed.keys("predictions"), "the kill came too late to interrupt training"

    rerun = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    resumed_steps = re.findall(r"'resumed_from_step': (\d+)", rerun.stderr + rerun.stdout)
    assert any(int(step) > 0 for step in resumed_steps), "no model resumed from a checkpoint"
    original = Storage(store)
    for record in first.records:
        if record.table == "model":
            continue
        assert resumed.has_table(record.table, record.key), record.stage
        a = original.read_table(record.table, record.key)
        b = resumed.read_table(record.table, record.key)
        assert a.num_rows == b.num_rows, record.stage
        if "galaxy_id" in a.column_names:
            assert sorted(a.column("galaxy_id").to_pylist()) == \
                sorted(b.column("galaxy_id").to_pylist()), record.stage
