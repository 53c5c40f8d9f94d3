"""The pipeline: the DAG of stages from survey tables to interpreted stellar masses.

    ingest -> train (every SCL and MI model) -> infer -> neighbours (SCL) -> local tests
                                                     \\-> discovery (MI estimates)
                                                     \\-> information (MI tuples) -> figures

``run_pipeline`` runs it once; every stage's output is keyed by the hash of its config and
inputs, so a rerun skips what is committed, an interrupted run resumes, and changing one
model's config reruns only what depends on it.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

from galpipe.config import Config
from galpipe.pipeline.core import RunContext, StageRecord, ensure_ray, new_run_id

log = logging.getLogger(__name__)

__all__ = ["RunSummary", "STAGE_GROUPS", "run_pipeline", "new_run_id"]


@dataclass
class RunSummary:
    """What a pipeline run did and where its results are."""

    run_id: str
    storage_uri: str
    tracking_uri: str
    mlflow_run_id: str | None
    seconds: float
    records: list[StageRecord] = field(default_factory=list)
    model_metrics: dict[str, dict[str, Any]] = field(default_factory=dict)
    information_means: dict[str, float] = field(default_factory=dict)
    figures: list[str] = field(default_factory=list)

    def render(self) -> str:
        """A human-readable summary with the key numbers and where the results are."""
        lines = [f"galpipe run {self.run_id} finished in {self.seconds:.0f} s",
                 f"  storage: {self.storage_uri}/tables/<table>/  (query: galpipe query "
                 f"--storage {self.storage_uri} \"SELECT ...\")",
                 f"  MLflow:  {self.tracking_uri} (parent run {self.mlflow_run_id})"]
        computed = sum(r.status == "computed" for r in self.records)
        lines.append(f"  stages:  {computed} computed, {len(self.records) - computed} reused")
        if self.model_metrics:
            lines.append("  test-split accuracy (median estimate; dex):")
            lines.append(f"    {'model':<28}{'estimator':<10}{'n':>6}{'bias':>9}"
                         f"{'sigma_MAD':>11}{'outliers':>10}{'CRPS':>8}")
            for (model, estimator), row in sorted(self.model_metrics.items()):
                lines.append(
                    f"    {model:<28}{estimator:<10}{row['n']:>6}{row['bias']:>9.3f}"
                    f"{row['sigma_mad']:>11.3f}{row['outlier_fraction']:>10.3f}"
                    f"{row['crps']:>8.3f}")
        if self.information_means:
            lines.append("  mean information components on the test split (nats):")
            for name, value in self.information_means.items():
                lines.append(f"    {name:<50}{value:>8.3f}")
        if self.figures:
            lines.append(f"  figures: {len(self.figures)} under {self.storage_uri}/figures/")
        return "\n".join(lines)


STAGE_GROUPS = ("ingest", "train", "infer", "neighbours", "local_tests", "discovery",
                "information")


def run_pipeline(config: Config, storage_uri: str, *, tracking_uri: str | None = None,
                 run_id: str | None = None, targets: tuple[str, ...] | None = None,
                 models: tuple[str, ...] | None = None) -> RunSummary:
    """Run the pipeline on ``config`` with tables under ``storage_uri``.

    ``targets`` limits the run to the named stage groups and what they depend on (default:
    all of ``STAGE_GROUPS``); ``models`` limits training and inference to the named models.
    """
    from galpipe.pipeline import stages

    targets = tuple(targets or STAGE_GROUPS)
    unknown = sorted(set(targets) - set(STAGE_GROUPS))
    if unknown:
        raise ValueError(f"unknown stage groups {unknown} (known: {list(STAGE_GROUPS)})")
    wanted = set(targets)
    if wanted & {"local_tests"}:
        wanted.add("neighbours")
    if wanted & {"neighbours", "discovery", "information"}:
        wanted.add("infer")
    if "infer" in wanted:
        wanted.add("train")

    all_models = config.models()
    if models:
        names = {m.name for m in all_models}
        missing = sorted(set(models) - names)
        if missing:
            raise ValueError(f"unknown models {missing} (this config has {sorted(names)})")
        all_models = [m for m in all_models if m.name in models]
    scl = [m for m in all_models if m.kind == "scl"]

    start = time.perf_counter()
    ctx = RunContext(config, storage_uri, tracking_uri=tracking_uri, run_id=run_id)
    started_ray = ensure_ray(config)
    parent = ctx.tracker.start_parent(
        f"pipeline {ctx.run_id}",
        {"galpipe.run_id": ctx.run_id, "galpipe.config_hash": config.config_hash,
         "galpipe.storage": ctx.storage.uri, "galpipe.survey": config.survey.name,
         "galpipe.targets": ",".join(targets)})
    ctx.tracker.log_params(parent, config.to_dict())
    status = "FAILED"
    log.info("run %s: storage %s, MLflow %s", ctx.run_id, ctx.storage.uri, ctx.tracking_uri)
    try:
        ctx.expect_stages(1 + len(all_models) * (("train" in wanted) + ("infer" in wanted))
                          + len(scl) * (("neighbours" in wanted) + ("local_tests" in wanted))
                          + ("discovery" in wanted) + ("information" in wanted))
        tables = stages.ingest(ctx)
        stages.check_columns(ctx, tables)
        trained = {}
        if "train" in wanted:
            trained = {m.name: stages.train(ctx, m, tables) for m in all_models}
        predictions = {}
        if "infer" in wanted:
            predictions = {m.name: stages.infer(ctx, m, tables, *trained[m.name][:2])
                           for m in all_models}
        if "neighbours" in wanted:
            neighbour_keys = {m.name: stages.neighbours(ctx, m, predictions[m.name])[0]
                              for m in scl}
            if "local_tests" in wanted:
                for m in scl:
                    stages.local_tests(ctx, m, neighbour_keys[m.name])
        if "discovery" in wanted and config.discovery.variables and config.discovery.methods:
            stages.discovery(ctx, predictions)
        if "information" in wanted and config.information.tuples:
            stages.information(ctx, predictions)
        status = "FINISHED"
        return _summary(ctx, parent, start)
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        try:
            if ctx.records:
                ctx.write_runs_table()
        finally:
            ctx.tracker.end_parent(status)
            if started_ray:
                import ray

                ray.shutdown()


def _summary(ctx: RunContext, parent: str, start: float) -> RunSummary:
    """Collect the key numbers from the committed tables this run used."""
    import pyarrow.compute as pc

    summary = RunSummary(run_id=ctx.run_id, storage_uri=ctx.storage.uri,
                         tracking_uri=ctx.tracking_uri, mlflow_run_id=parent,
                         seconds=time.perf_counter() - start, records=list(ctx.records))
    metric_keys = [r.key for r in ctx.records if r.table in ("predictions", "neighbours")]
    for key in metric_keys:
        if not ctx.storage.has_table("metrics", key):
            continue
        table = ctx.storage.read_table("metrics", key)
        rows = table.filter(pc.and_(pc.and_(pc.equal(table["grouping"], "all"),
                                            pc.equal(table["split"], "test")),
                                    pc.equal(table["point"], "median")))
        for row in rows.to_pylist():
            summary.model_metrics[(row["model"], row["estimator"])] = row
    info_keys = [r.key for r in ctx.records if r.table == "information"]
    for key in info_keys:
        table = ctx.storage.read_table("information", key)
        for name in dict.fromkeys(table.column("tuple").to_pylist()):
            rows = table.filter(pc.equal(table["tuple"], name))
            for component in ("redundant", "unique_1", "unique_2", "synergistic"):
                summary.information_means[f"{name} {component}"] = \
                    pc.mean(rows[component]).as_py() or 0.0
    for record in ctx.records:
        if record.status == "computed":
            ctx.tracker.log_metrics(parent, {f"{record.stage}.seconds": record.seconds})
    for (model, estimator), row in summary.model_metrics.items():
        ctx.tracker.log_metrics(parent, {
            f"{model}.{estimator}.test_sigma_mad": row["sigma_mad"],
            f"{model}.{estimator}.test_bias": row["bias"],
            f"{model}.{estimator}.test_crps": row["crps"]})
    ctx.tracker.set_tags(parent, {"galpipe.tables": ctx.storage.uri + "/tables",
                                  **{f"galpipe.key.{r.stage}": r.key for r in ctx.records}})
    # Figures live under figures/<stage>/<key>/: list only those of outputs this run used.
    used = {r.key for r in ctx.records}
    try:
        from pyarrow import fs as pafs

        infos = ctx.storage.fs.get_file_info(pafs.FileSelector(
            ctx.storage.path("figures"), recursive=True, allow_not_found=True))
        summary.figures = [ctx.storage.uri_of(i.path) for i in infos
                           if i.path.endswith(".png") and i.path.split("/")[-2] in used]
    except OSError:
        pass
    return summary
