"""The pipeline's stages: each reads committed tables and writes its own, keyed by content.

Science lives in the domain packages (``galpipe.ingest``, ``galpipe.train``, ``galpipe.infer``,
``galpipe.neighbours``, ``galpipe.causal``, ``galpipe.information``); a stage here only says
which tables go in, how its key is made, and where its outputs go.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from galpipe.config import ModelSpec
from galpipe.pipeline.core import RunContext

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SurveyTables:
    galaxies_key: str
    cutouts_key: str | None


# Ingest ---------------------------------------------------------------------------------------


def _files_digest(paths: list[Path]) -> str:
    digest = hashlib.sha256()
    for path in sorted(paths):
        digest.update(path.name.encode())
        with path.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()[:16]


def ingest(ctx: RunContext) -> SurveyTables:
    """Bring the survey's galaxies and cutouts into storage as committed tables."""
    survey = ctx.config.survey
    source = dict(survey.source)
    kind = source.get("kind")
    storage = ctx.storage

    if kind == "sample":
        from galpipe.ingest.sample import load_sample, sample_dir

        fingerprint = _files_digest(sorted(sample_dir().glob("*.parquet")))
        key = ctx.key("ingest", source, fingerprint)
        inputs = [(f"source:{sample_dir()}", "")]

        def compute() -> dict[str, Any]:
            galaxies, cutouts = load_sample()
            prov = ctx.provenance("ingest", inputs)
            storage.write_table("galaxies", galaxies, key=key, provenance=prov)
            storage.write_table("cutouts", cutouts, key=key, provenance=ctx.provenance(
                "ingest", inputs))
            return {"galaxies": galaxies.num_rows}
    elif kind == "mock":
        from galpipe.ingest.mock import mock_survey

        n, seed = int(source.get("n", 10_000)), int(source.get("seed", 0))
        key = ctx.key("ingest", source, survey.image_size)
        inputs = [(f"source:mock?n={n}&seed={seed}", "")]

        def compute() -> dict[str, Any]:
            with storage.table_writer("galaxies", key=key,
                                      provenance=ctx.provenance("ingest", inputs)) as gal, \
                    storage.table_writer("cutouts", key=key,
                                         provenance=ctx.provenance("ingest", inputs)) as cut:
                for galaxies, cutouts in mock_survey(n, seed=seed,
                                                     image_size=survey.image_size):
                    gal.write(galaxies)
                    cut.write(cutouts)
            return {"galaxies": n}
    elif kind == "tables":
        from galpipe.storage import resolve

        listed = {t: _source_files(*resolve(source[t])) for t in ("galaxies", "cutouts")
                  if source.get(t)}
        # The key covers the files' names, sizes and modification times, so changed inputs
        # are re-ingested rather than silently reused.
        key = ctx.key("ingest", source, {t: [(f.path, f.size, f.mtime_ns) for f in files]
                                         for t, files in listed.items()})
        inputs = [(f"source:{source[t]}", "") for t in listed]

        def compute() -> dict[str, Any]:
            import pyarrow.dataset as pads

            count = 0
            for table, files in listed.items():
                fs, _ = resolve(source[table])
                dataset = pads.dataset([f.path for f in files], filesystem=fs,
                                       format="parquet")
                with storage.table_writer(table, key=key, provenance=ctx.provenance(
                        "ingest", inputs)) as writer:
                    for batch in dataset.to_batches():
                        writer.write(pa.Table.from_batches([batch], schema=dataset.schema))
                        count += batch.num_rows if table == "galaxies" else 0
            return {"galaxies": count}
    else:
        raise ValueError(f"survey.source.kind must be sample, mock or tables, got {kind!r}")

    ctx.run_stage("ingest", "galaxies", key,
                  done=lambda: storage.has_table("galaxies", key) and (
                      not _has_images(ctx) or storage.has_table("cutouts", key)),
                  compute=compute)
    cutouts_key = key if storage.has_table("cutouts", key) else None
    return SurveyTables(key, cutouts_key)


def _source_files(fs, path: str) -> list:
    """The Parquet files of a source: those a galpipe manifest lists, else every *.parquet."""
    import json

    from pyarrow import fs as pafs

    info = fs.get_file_info(path)
    if info.type == pafs.FileType.File:
        return [info]
    if info.type == pafs.FileType.NotFound:
        raise FileNotFoundError(f"survey source {path} does not exist")
    try:
        with fs.open_input_stream(f"{path}/_COMMITTED.json") as handle:
            listed = json.loads(handle.read())["files"]
        return fs.get_file_info([f"{path}/{name}" for name in listed])
    except FileNotFoundError:
        pass
    found = [i for i in fs.get_file_info(pafs.FileSelector(path, recursive=True))
             if i.type == pafs.FileType.File and i.path.endswith(".parquet")]
    if not found:
        raise FileNotFoundError(f"survey source {path} holds no .parquet files")
    return sorted(found, key=lambda i: i.path)


def check_columns(ctx: RunContext, tables: SurveyTables) -> None:
    """Fail before any training when the config names columns or bands the survey lacks."""
    import pyarrow.parquet as pq

    config = ctx.config
    galaxies = ctx.storage.table("galaxies", tables.galaxies_key)
    columns = pq.read_schema(galaxies.files[0], filesystem=ctx.storage.fs).names
    bands: list[str] = []
    if tables.cutouts_key:
        cutouts = ctx.storage.table("cutouts", tables.cutouts_key)
        metadata = pq.read_schema(cutouts.files[0], filesystem=ctx.storage.fs).metadata or {}
        bands = metadata.get(b"galpipe.bands", b"").decode().split(",")
    for spec in config.models():
        config.feature_set(spec.feature_set).check_available(columns, bands)
    named = {"local_tests.query": config.local_tests.query,
             "local_tests.condition": config.local_tests.condition,
             "survey.class_column": config.survey.class_column,
             "survey.magnitude_column": config.survey.magnitude_column}
    named.update({f"discovery.variables[{i}]": v for i, v in
                  enumerate(config.discovery.variables) if not v.startswith("estimate:")})
    missing = {k: v for k, v in named.items() if v and v not in columns}
    if missing:
        raise ValueError(f"config names columns the galaxies table does not have: {missing} "
                         f"(available: {sorted(columns)})")
    for variable in config.discovery.variables:
        if variable.startswith("estimate:") and \
                f"mi:{variable.split(':', 1)[1]}" not in {m.name for m in config.models()}:
            raise ValueError(f"discovery variable '{variable}' needs an MI model of that "
                             "feature set; add it to an information tuple")


def _has_images(ctx: RunContext) -> bool:
    return any(fs.bands for fs in ctx.config.feature_sets.values())


# Train ----------------------------------------------------------------------------------------


def model_key(ctx: RunContext, spec: ModelSpec, tables: SurveyTables) -> str:
    config = ctx.config
    feature_set = config.feature_set(spec.feature_set)
    training = config.training.for_model(feature_set.input_kind, spec.kind, spec.name)
    return ctx.key("train", spec.name, feature_set.to_dict(), asdict(training),
                   asdict(config.bins), tables.galaxies_key,
                   tables.cutouts_key if feature_set.bands else None)


def train(ctx: RunContext, spec: ModelSpec, tables: SurveyTables) -> tuple[str, str, dict]:
    """Train one model (or reuse its committed artifact); returns (key, model path, metrics)."""
    from galpipe.train.trainer import train_model

    key = model_key(ctx, spec, tables)
    model_path = f"models/{spec.slug}/{key}/model.pt"
    result: dict[str, Any] = {}

    def compute() -> dict[str, Any]:
        with ctx.tracker.child(f"train:{spec.name}", {"galpipe.model": spec.name}) as child:
            out = train_model(ctx.config, spec, ctx.storage, galaxies_key=tables.galaxies_key,
                              cutouts_key=tables.cutouts_key, key=key, run_id=ctx.run_id,
                              tracking_uri=ctx.tracking_uri, mlflow_run_id=child)
        info = {k: v for k, v in asdict(out).items() if isinstance(v, (int, float, str))}
        result.update(info)
        return info

    ctx.run_stage(f"train:{spec.name}", "model", key,
                  done=lambda: ctx.storage.exists(model_path), compute=compute)
    return key, model_path, result


# Inference and metrics -----------------------------------------------------------------------


def infer(ctx: RunContext, spec: ModelSpec, tables: SurveyTables, model_key_: str,
          model_path: str) -> str:
    """Predict every galaxy with one model into ``predictions`` and its ``metrics``."""
    from galpipe.data.pipeline import galaxy_dataset
    from galpipe.infer.predict import predict_dataset
    from galpipe.train.artifact import load_model

    config = ctx.config
    key = ctx.key("infer", model_key_, asdict(config.inference), tables.galaxies_key,
                  tables.cutouts_key)

    def compute() -> dict[str, Any]:
        trained = load_model(ctx.storage, model_path)
        feature_set = trained.feature_set
        dataset = galaxy_dataset(
            ctx.storage, tables.galaxies_key, tables.cutouts_key if feature_set.bands else None,
            feature_set, config.bins, trained.preprocessor, splits=None, training=False,
            seed=config.training.seed)
        batches = predict_dataset(
            dataset, storage_uri=ctx.storage.uri, model_path=model_path, run_id=ctx.run_id,
            model=spec.name, feature_set=spec.feature_set, kind=spec.kind,
            quantiles=config.inference.pdf_quantiles, batch_size=config.inference.batch_size,
            num_actors=config.inference.num_actors,
            cpus_per_actor=config.inference.cpus_per_actor,
            gpus_per_actor=config.inference.gpus_per_actor)
        levels = ",".join(str(q) for q in config.inference.pdf_quantiles).encode()
        ref = ctx.storage.write_table(
            "predictions", batches, key=key,
            provenance=ctx.provenance("infer", [("galaxies", tables.galaxies_key),
                                                (model_path, "")]),
            extra_metadata={b"galpipe.quantile_levels": levels})
        info = write_metrics(ctx, spec.name, "network", key, [("predictions", key)])
        return {"galaxies": ref.num_rows, **info}

    ctx.run_stage(f"infer:{spec.name}", "predictions", key,
                  done=lambda: ctx.storage.has_table("predictions", key)
                  and ctx.storage.has_table("metrics", key), compute=compute)
    return key


def write_metrics(ctx: RunContext, model: str, estimator: str, key: str,
                  inputs: list[tuple[str, str]]) -> dict[str, float]:
    """Metrics of every point estimate on every labelled split, from a predictions output."""
    from galpipe.infer.evaluation import metrics_from_predictions

    config = ctx.config
    predictions = ctx.storage.read_table(
        "predictions", key, columns=["galaxy_id", "split", "stellar_mass", "mass_mean",
                                     "mass_median", "mass_mode", "crps"],
        filter=pc.is_valid(pc.field("stellar_mass")))
    galaxies = ctx.storage.read_table(
        "galaxies", ctx.keys["ingest"], columns=["galaxy_id", config.survey.class_column])
    classes = dict(zip(galaxies.column("galaxy_id").to_pylist(),
                       galaxies.column(config.survey.class_column).to_pylist()))
    table = metrics_from_predictions(
        predictions, classes=classes, run_id=ctx.run_id, model=model, estimator=estimator,
        mass_edges=config.local_tests.mass_edges)
    ctx.storage.write_table("metrics", table, key=key,
                            provenance=ctx.provenance("metrics", inputs))
    summary = {}
    overall = table.filter(pc.and_(pc.equal(table["grouping"], "all"),
                                   pc.equal(table["split"], "test")))
    for row in overall.to_pylist():
        if row["point"] == "median":
            summary = {"test_bias": row["bias"], "test_sigma_mad": row["sigma_mad"],
                       "test_outlier_fraction": row["outlier_fraction"],
                       "test_crps": row["crps"], "test_n": row["n"]}
    return summary


# Neighbours and the KNN estimator ------------------------------------------------------------


def _latent_arrays(ctx: RunContext, predictions_key: str, splits: tuple[str, ...] | None):
    """(galaxy ids, S vectors, stellar masses) of the galaxies in ``splits`` (None: all)."""
    filter_ = None if splits is None else pc.is_in(pc.field("split"), pa.array(list(splits)))
    table = ctx.storage.read_table("predictions", predictions_key,
                                   columns=["galaxy_id", "latent_s", "stellar_mass"],
                                   filter=filter_)
    ids = table.column("galaxy_id").to_numpy()
    latent = table.column("latent_s").combine_chunks()
    dim = len(latent[0]) if len(latent) else 0
    vectors = latent.flatten().to_numpy().reshape(-1, dim).astype(np.float32)
    mass = table.column("stellar_mass").to_numpy(zero_copy_only=False).astype(np.float64)
    return ids, vectors, mass


def _query_blocks(ctx: RunContext, predictions_key: str,
                  block_size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    for batch in ctx.storage.iter_batches("predictions", predictions_key,
                                          columns=["galaxy_id", "latent_s"],
                                          batch_size=block_size):
        latent = batch.column(1)
        dim = len(latent[0]) if len(latent) else 0
        yield (batch.column(0).to_numpy(),
               latent.flatten().to_numpy().reshape(-1, dim).astype(np.float32))


def neighbours(ctx: RunContext, spec: ModelSpec, predictions_key: str) -> tuple[str, str]:
    """KNN of every galaxy among the training galaxies in S, and the KNN mass estimator."""
    from galpipe.infer.knn_estimator import gather_neighbour_masses, knn_pdf
    from galpipe.infer.predict import predictions_batch, prediction_columns
    from galpipe.neighbours import knn_ray

    config = ctx.config
    settings = config.neighbours
    key = ctx.key("neighbours", predictions_key, asdict(settings))

    def compute() -> dict[str, Any]:
        index_ids, index_vectors, index_mass = _latent_arrays(ctx, predictions_key, ("train",))
        k = min(settings.k, len(index_ids) - (1 if settings.exclude_self else 0))
        batches = knn_ray(_query_blocks(ctx, predictions_key, settings.block_size),
                          index_ids, index_vectors, k=k, exclude_self=settings.exclude_self,
                          run_id=ctx.run_id, model=spec.name, num_actors=settings.num_actors)
        ref = ctx.storage.write_table(
            "neighbours", batches, key=key,
            provenance=ctx.provenance("neighbours", [("predictions", predictions_key)]))

        # The KNN estimator reads each galaxy's neighbours' true masses back, block by block.
        truth = ctx.storage.read_table("predictions", predictions_key,
                                       columns=["galaxy_id", "split", "stellar_mass"])
        truth_ids = truth.column("galaxy_id").to_numpy()
        order = np.argsort(truth_ids)

        def knn_batches() -> Iterator[pa.RecordBatch]:
            for batch in ctx.storage.iter_batches("neighbours", key,
                                                  columns=["galaxy_id", "neighbour_ids",
                                                           "distances"],
                                                  batch_size=settings.block_size):
                ids = batch.column(0).to_numpy()
                kk = len(batch.column(1)[0]) if batch.num_rows else 0
                nid = batch.column(1).flatten().to_numpy().reshape(-1, kk)
                dist = batch.column(2).flatten().to_numpy().reshape(-1, kk)
                masses = gather_neighbour_masses(nid, index_ids, index_mass)
                pdf = knn_pdf(masses, dist, config.bins, settings.knn_weighting,
                              settings.knn_smoothing_dex)
                rows = order[np.searchsorted(truth_ids, ids, sorter=order)]
                mass = truth.column("stellar_mass").to_numpy(
                    zero_copy_only=False)[rows].astype(np.float64)
                split = np.asarray(truth.column("split").to_pylist(), dtype=object)[rows]
                with np.errstate(divide="ignore"):
                    log_pdf = np.log(np.clip(pdf, 0, None))
                log_pdf = np.nan_to_num(log_pdf, nan=-np.inf)
                bad = ~np.isfinite(pdf).all(axis=1)
                log_pdf[bad] = np.log(1.0 / config.bins.n_bins)
                columns = prediction_columns(log_pdf, mass, config.bins,
                                             config.inference.pdf_quantiles)
                yield predictions_batch(
                    run_id=ctx.run_id, model=spec.name, feature_set=spec.feature_set,
                    kind=spec.kind, estimator="knn", galaxy_id=ids, split=split,
                    stellar_mass=mass, columns=columns, latent_s=None)

        ctx.storage.write_table(
            "predictions", knn_batches(), key=key,
            provenance=ctx.provenance("neighbours", [("neighbours", key)]))
        info = write_metrics(ctx, spec.name, "knn", key, [("predictions", key)])
        return {"galaxies": ref.num_rows, "k": k, **{f"knn_{k_}": v for k_, v in info.items()}}

    ctx.run_stage(f"neighbours:{spec.name}", "neighbours", key,
                  done=lambda: all(ctx.storage.has_table(t, key)
                                   for t in ("neighbours", "predictions", "metrics")),
                  compute=compute)
    return key, key


# Local causal tests ---------------------------------------------------------------------------


def _galaxy_columns(ctx: RunContext, columns: list[str], filter_=None) -> pa.Table:
    return ctx.storage.read_table("galaxies", ctx.keys["ingest"], columns=columns,
                                  filter=filter_)


def _float_column(table: pa.Table, name: str) -> np.ndarray:
    return table.column(name).to_numpy(zero_copy_only=False).astype(np.float64)


def local_tests(ctx: RunContext, spec: ModelSpec, neighbours_key: str) -> str:
    """Local tests of stellar mass against the query column over each galaxy's neighbours."""
    from galpipe.causal import plot_local_tests, run_local_tests, summarise_local_tests

    config = ctx.config
    settings = config.local_tests
    key = ctx.key("local_tests", neighbours_key, asdict(settings), ctx.keys["ingest"])
    condition = settings.condition

    def compute() -> dict[str, Any]:
        columns = ["galaxy_id", "stellar_mass", settings.query] + ([condition] if condition
                                                                   else [])
        train = _galaxy_columns(ctx, list(dict.fromkeys(columns)),
                                pc.equal(pc.field("split"), "train"))
        order = np.argsort(train.column("galaxy_id").to_numpy())
        train = train.take(order)

        def blocks() -> Iterator[tuple[np.ndarray, np.ndarray]]:
            for batch in ctx.storage.iter_batches("neighbours", neighbours_key,
                                                  columns=["galaxy_id", "neighbour_ids"],
                                                  batch_size=settings.block_size):
                kk = len(batch.column(1)[0]) if batch.num_rows else 0
                yield (batch.column(0).to_numpy(),
                       batch.column(1).flatten().to_numpy().reshape(-1, kk))

        batches = run_local_tests(
            blocks(), train.column("galaxy_id").to_numpy(), _float_column(train, "stellar_mass"),
            _float_column(train, settings.query),
            _float_column(train, condition) if condition else None,
            run_id=ctx.run_id, model=spec.name, query_name=settings.query,
            condition_name=condition, n_permutations=settings.n_permutations,
            seed=settings.seed, min_valid=settings.min_valid, num_actors=settings.num_actors)
        inputs = [("neighbours", neighbours_key), ("galaxies", ctx.keys["ingest"])]
        ref = ctx.storage.write_table("local_tests", batches, key=key,
                                      provenance=ctx.provenance("local_tests", inputs))

        tests = ctx.storage.read_table("local_tests", key)
        galaxies = _galaxy_columns(ctx, ["galaxy_id", config.survey.class_column,
                                         "stellar_mass"])
        galaxies = galaxies.rename_columns(["galaxy_id", "class", "stellar_mass"])
        joined = tests.join(galaxies, "galaxy_id")
        summary = summarise_local_tests(joined, list(settings.mass_edges), run_id=ctx.run_id,
                                        alpha=settings.alpha)
        ctx.storage.write_table("local_tests_summary", summary, key=key,
                                provenance=ctx.provenance("local_tests", [("local_tests", key)]))
        with ctx.storage.local_dir(f"figures/local_tests/{key}") as scratch:
            path = str(scratch / f"local_tests_{spec.slug}.png")
            plot_local_tests(joined, spec.name, path)
            ctx.tracker.log_artifact(ctx.tracker.parent_id, path, "figures")
        r_p = tests.column("r_pvalue").to_numpy(zero_copy_only=False)
        return {"galaxies": ref.num_rows,
                "share_r_p_below_alpha": float(np.nanmean(r_p < settings.alpha))}

    ctx.run_stage(f"local_tests:{spec.name}", "local_tests", key,
                  done=lambda: ctx.storage.has_table("local_tests", key)
                  and ctx.storage.has_table("local_tests_summary", key), compute=compute)
    return key


# Global causal discovery ----------------------------------------------------------------------


def discovery(ctx: RunContext, predictions: dict[str, str]) -> str:
    """Bootstrapped PC / FCI over galaxy variables and MI models' mass estimates."""
    from galpipe.causal import bootstrap_discovery, plot_causal_graph

    config = ctx.config
    settings = config.discovery
    needed = {v.split(":", 1)[1]: predictions[f"mi:{v.split(':', 1)[1]}"]
              for v in settings.variables if v.startswith("estimate:")}
    key = ctx.key("discovery", asdict(settings), ctx.keys["ingest"], sorted(needed.items()))

    def compute() -> dict[str, Any]:
        columns = [v for v in settings.variables if not v.startswith("estimate:")]
        galaxies = _galaxy_columns(ctx, ["galaxy_id", *columns],
                                   pc.is_in(pc.field("split"), pa.array(["validation", "test"])))
        ids = galaxies.column("galaxy_id").to_numpy()
        data = {c: _float_column(galaxies, c) for c in columns}
        for feature_set, pred_key in needed.items():
            pred = ctx.storage.read_table("predictions", pred_key,
                                          columns=["galaxy_id", "mass_mean"])
            lookup = dict(zip(pred.column("galaxy_id").to_numpy().tolist(),
                              pred.column("mass_mean").to_numpy().tolist()))
            data[f"estimate:{feature_set}"] = np.array([lookup.get(i, np.nan) for i in ids])
        names = list(settings.variables)
        matrix = np.column_stack([data[n] for n in names])
        tables = [
            bootstrap_discovery(matrix, names, method=method, indep_test=settings.indep_test,
                                alpha=settings.alpha, n_bootstrap=settings.n_bootstrap,
                                sample_size=settings.sample_size, seed=settings.seed,
                                num_actors=settings.num_actors, run_id=ctx.run_id)
            for method in settings.methods
        ]
        edges = pa.concat_tables(tables)
        inputs = [("galaxies", ctx.keys["ingest"])] + [("predictions", k)
                                                        for k in needed.values()]
        ctx.storage.write_table("causal_edges", edges, key=key,
                                provenance=ctx.provenance("discovery", inputs))
        with ctx.storage.local_dir(f"figures/discovery/{key}") as scratch:
            for method, table in zip(settings.methods, tables):
                path = str(scratch / f"causal_graph_{method}.png")
                plot_causal_graph(table, path)
                ctx.tracker.log_artifact(ctx.tracker.parent_id, path, "figures")
        strong = pc.sum(pc.greater(edges["adjacency_frequency"], 0.8)).as_py() or 0
        return {"edges_above_80pct": int(strong), "rows": edges.num_rows}

    ctx.run_stage("discovery", "causal_edges", key,
                  done=lambda: ctx.storage.has_table("causal_edges", key), compute=compute)
    return key


# Information decomposition --------------------------------------------------------------------


def information(ctx: RunContext, predictions: dict[str, str]) -> str:
    """Pointwise information of every MI model and its decomposition for every tuple."""
    from galpipe.information import (decompose, information_figures, information_table,
                                     pointwise_information, prior_log_probabilities,
                                     summarise_information)

    config = ctx.config
    settings = config.information
    bins = config.bins
    models = sorted({fs for t in settings.tuples
                     for fs in (*t.sources, t.union, t.reference) if fs})
    keys = {fs: predictions[f"mi:{fs}"] for fs in models}
    key = ctx.key("information", asdict(settings), ctx.keys["ingest"], sorted(keys.items()),
                  config.survey.magnitude_column)

    def compute() -> dict[str, Any]:
        magnitude = config.survey.magnitude_column
        columns = ["galaxy_id", config.survey.class_column, "stellar_mass", "split"] + (
            [magnitude] if magnitude else [])
        galaxies = _galaxy_columns(ctx, columns)
        masses = _float_column(galaxies, "stellar_mass")
        log_prior = prior_log_probabilities(bins.index(masses[np.isfinite(masses)]),
                                            bins.n_bins)

        target = galaxies.filter(pc.equal(galaxies["split"], settings.split))
        target = target.filter(pc.is_valid(target["stellar_mass"]))
        target_ids = target.column("galaxy_id").to_numpy()

        def info_of(feature_set: str) -> np.ndarray:
            pred = ctx.storage.read_table("predictions", keys[feature_set],
                                          columns=["galaxy_id", "cross_entropy", "true_bin"])
            ids = pred.column("galaxy_id").to_numpy()
            order = np.argsort(ids)
            rows = order[np.searchsorted(ids, target_ids, sorter=order)]
            ce = _float_column(pred, "cross_entropy")[rows]
            true_bins = pred.column("true_bin").to_numpy(zero_copy_only=False)
            true_bins = np.nan_to_num(true_bins.astype(np.float64), nan=-1).astype(np.int64)
            return pointwise_information(ce, true_bins[rows], log_prior)

        cache = {fs: info_of(fs) for fs in models}
        tables = []
        for tup in settings.tuples:
            i1, i2, i12 = cache[tup.sources[0]], cache[tup.sources[1]], cache[tup.union]
            tables.append(information_table(
                target_ids, run_id=ctx.run_id, tuple_name=tup.name, source_1=tup.sources[0],
                source_2=tup.sources[1], union=tup.union, i1=i1, i2=i2, i12=i12,
                gap_reference=cache[tup.reference] if tup.reference else None,
                redundancy=settings.redundancy))
        info = pa.concat_tables(tables)
        inputs = [("galaxies", ctx.keys["ingest"])] + [("predictions", k) for k in keys.values()]
        ctx.storage.write_table("information", info, key=key,
                                provenance=ctx.provenance("information", inputs))

        frame = galaxies.rename_columns(
            ["galaxy_id", "class", "stellar_mass", "split"] + ([magnitude] if magnitude else []))
        summary = summarise_information(
            info, frame, run_id=ctx.run_id, magnitude_column=magnitude,
            mass_edges=list(settings.mass_edges) or None,
            magnitude_edges=list(settings.magnitude_edges) or None,
            n_bootstrap=settings.n_bootstrap, level=settings.level,
            min_count=settings.min_count, seed=settings.seed, use_ray=True)
        ctx.storage.write_table("information_summary", summary, key=key,
                                provenance=ctx.provenance("information", [("information", key)]))
        with ctx.storage.local_dir(f"figures/information/{key}") as scratch:
            for path in information_figures(summary, str(scratch)):
                ctx.tracker.log_artifact(ctx.tracker.parent_id, path, "figures")
        means = {}
        for tup in settings.tuples:
            rows = info.filter(pc.equal(info["tuple"], tup.name))
            for component in ("redundant", "unique_1", "unique_2", "synergistic"):
                values = rows.column(component).to_numpy(zero_copy_only=False)
                means[f"{tup.name}:{component}"] = float(np.nanmean(values))
        return {"galaxies": len(target_ids), "_means": means}

    ctx.run_stage("information", "information", key,
                  done=lambda: ctx.storage.has_table("information", key)
                  and ctx.storage.has_table("information_summary", key), compute=compute)
    return key
