"""Survey-scale batch inference: a Ray Data actor pool, one model replica per actor.

Every galaxy of the catalogue streams through the same preprocessing as training (without
augmentation) into actors that each hold one copy of the model (GPU when the actor is given
one, fractional CPUs otherwise). Per galaxy the actor returns the latent S, the PDF's point
estimates and quantiles, the cross-entropy of the true bin and the per-galaxy CRPS; the driver
streams those rows into the ``predictions`` table, so memory is flat in catalogue size.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from galpipe.bins import MassBins
from galpipe.data.pipeline import SPLITS
from galpipe.infer.estimates import pdf_quantiles, point_estimates, true_bin_cross_entropy
from galpipe.infer.metrics import crps_per_galaxy

log = logging.getLogger(__name__)


def prediction_columns(
    log_probs: np.ndarray, stellar_mass: np.ndarray, bins: MassBins,
    quantiles: Sequence[float],
) -> dict[str, np.ndarray]:
    """Point estimates, quantiles, true-bin cross-entropy and CRPS from log-probabilities.

    ``log_probs`` has shape (N, n_bins) (natural log, normalised); ``stellar_mass`` (N,) dex
    with NaN where unknown. Returns arrays of shape (N,) (quantiles: (N, len(quantiles))).
    """
    pdf = np.exp(log_probs.astype(np.float64))
    estimates = point_estimates(pdf, bins)
    true_bins = bins.index(stellar_mass)
    return {
        "true_bin": true_bins,
        "mass_mean": estimates["mean"],
        "mass_median": estimates["median"],
        "mass_mode": estimates["mode"],
        "mass_quantiles": pdf_quantiles(pdf, bins, tuple(quantiles)).astype(np.float32),
        "cross_entropy": true_bin_cross_entropy(log_probs, true_bins, log=True),
        "crps": crps_per_galaxy(pdf, stellar_mass, bins),
    }


def predictions_batch(
    *, run_id: str, model: str, feature_set: str, kind: str, estimator: str,
    galaxy_id: np.ndarray, split: np.ndarray, stellar_mass: np.ndarray,
    columns: dict[str, np.ndarray], latent_s: np.ndarray | None,
) -> pa.RecordBatch:
    """A record batch in the ``predictions`` contract."""
    n = len(galaxy_id)
    true_bin = np.asarray(columns["true_bin"])
    mass = np.asarray(stellar_mass, dtype=np.float64)
    quantiles = np.asarray(columns["mass_quantiles"], dtype=np.float32)
    n_q = quantiles.shape[1] if quantiles.ndim == 2 else 0
    if latent_s is None:
        latent = pa.nulls(n, type=pa.list_(pa.float32()))
    else:
        latent_s = np.ascontiguousarray(latent_s, dtype=np.float32)
        latent = pa.ListArray.from_arrays(
            pa.array(np.arange(0, n * latent_s.shape[1] + 1, latent_s.shape[1],
                               dtype=np.int32)),
            pa.array(latent_s.ravel()))
    return pa.RecordBatch.from_pydict({
        "run_id": pa.array([run_id] * n, pa.string()),
        "model": pa.array([model] * n, pa.string()),
        "feature_set": pa.array([feature_set] * n, pa.string()),
        "kind": pa.array([kind] * n, pa.string()),
        "estimator": pa.array([estimator] * n, pa.string()),
        "galaxy_id": pa.array(np.asarray(galaxy_id, dtype=np.int64)),
        "split": pa.array(np.asarray(split).astype(str), pa.string()),
        "stellar_mass": pa.array(mass, mask=~np.isfinite(mass)),
        "true_bin": pa.array(true_bin.astype(np.int32), mask=true_bin < 0),
        "mass_mean": pa.array(np.asarray(columns["mass_mean"], dtype=np.float64)),
        "mass_median": pa.array(np.asarray(columns["mass_median"], dtype=np.float64)),
        "mass_mode": pa.array(np.asarray(columns["mass_mode"], dtype=np.float64)),
        "mass_quantiles": pa.ListArray.from_arrays(
            pa.array(np.arange(0, n * n_q + 1, n_q, dtype=np.int32)),
            pa.array(quantiles.ravel())),
        "cross_entropy": _nullable(columns["cross_entropy"]),
        "crps": _nullable(columns["crps"]),
        "latent_s": latent,
    })


def _nullable(values: np.ndarray) -> pa.Array:
    values = np.asarray(values, dtype=np.float64)
    return pa.array(values, mask=~np.isfinite(values))


class ModelPredictor:
    """A Ray Data callable class: loads one model replica, maps preprocessed batches to rows."""

    def __init__(self, storage_uri: str, model_path: str, run_id: str, model: str,
                 feature_set: str, kind: str, quantiles: Sequence[float]):
        import torch

        from galpipe.storage import Storage
        from galpipe.train.artifact import load_model

        torch.set_num_threads(max(1, torch.get_num_threads()))
        self.trained = load_model(Storage(storage_uri), model_path)
        self.bins: MassBins = self.trained.bins
        self.meta = dict(run_id=run_id, model=model, feature_set=feature_set, kind=kind)
        self.quantiles = tuple(quantiles)

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        out = self.trained.predict(batch)
        mass = np.asarray(batch["stellar_mass"], dtype=np.float64)
        columns = prediction_columns(np.asarray(out["log_probs"]), mass, self.bins,
                                     self.quantiles)
        record = predictions_batch(
            **self.meta, estimator="network", galaxy_id=batch["galaxy_id"],
            split=np.asarray(SPLITS, dtype=object)[np.asarray(batch["split_code"])],
            stellar_mass=mass, columns=columns,
            latent_s=np.asarray(out["latent_s"]),
        )
        return pa.Table.from_batches([record])


def predict_dataset(
    dataset: Any, *, storage_uri: str, model_path: str, run_id: str, model: str,
    feature_set: str, kind: str, quantiles: Sequence[float], batch_size: int,
    num_actors: int, cpus_per_actor: float, gpus_per_actor: float,
) -> Iterator[pa.RecordBatch]:
    """Stream ``predictions`` record batches for every galaxy of a preprocessed Ray dataset."""
    predicted = dataset.map_batches(
        ModelPredictor,
        fn_constructor_kwargs=dict(storage_uri=storage_uri, model_path=model_path,
                                   run_id=run_id, model=model, feature_set=feature_set,
                                   kind=kind, quantiles=tuple(quantiles)),
        batch_size=batch_size,
        batch_format="numpy",
        concurrency=(1, max(1, num_actors)),
        num_cpus=cpus_per_actor,
        num_gpus=gpus_per_actor or None,
    )
    for table in predicted.iter_batches(batch_format="pyarrow", batch_size=None):
        yield from table.to_batches()
