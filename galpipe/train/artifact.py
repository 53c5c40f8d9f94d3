"""The final model artifact: one ``torch.save`` file per trained model, and its loader.

Layout: ``models/<model slug>/<key>/model.pt`` under the storage root, written atomically with
:meth:`Storage.write_bytes`. The file is a dict of plain Python values and tensors (loadable with
``torch.load(weights_only=True)``):

* ``format``: artifact format version; ``spec``: model name, feature set and kind; ``key``
* ``state_dict``: network weights; ``network_arguments``: :func:`build_network` arguments
* ``architecture``: :meth:`ArchitectureConfig.to_dict`; ``feature_set``: :meth:`FeatureSet.to_dict`
* ``preprocessor``: :meth:`Preprocessor.to_dict`; ``bins``: mass-bin low, high, n_bins
* ``training``: the training config used; ``metrics``: final metrics (nats, galaxies/s, ...)
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from galpipe.bins import MassBins
from galpipe.data.pipeline import Preprocessor
from galpipe.features import FeatureSet
from galpipe.models import MassNetwork, build_network
from galpipe.storage import Storage
from galpipe.train.inputs import network_inputs

ARTIFACT_FORMAT = 1
MODEL_FILE = "model.pt"


def model_path(slug: str, key: str) -> str:
    """Relative path of a model artifact under the storage root."""
    return f"models/{slug}/{key}/{MODEL_FILE}"


def write_model(storage: Storage, relative_path: str, *, spec: dict[str, str], key: str,
                state_dict: dict[str, torch.Tensor], network_arguments: dict[str, Any],
                preprocessor: dict[str, Any], bins: MassBins, training: dict[str, Any],
                metrics: dict[str, Any]) -> str:
    """Write the artifact atomically; return its URI."""
    payload = {
        "format": ARTIFACT_FORMAT, "spec": dict(spec), "key": key,
        "state_dict": {name: tensor.detach().cpu() for name, tensor in state_dict.items()},
        "network_arguments": network_arguments,
        "architecture": network_arguments["arch"],
        "feature_set": preprocessor["feature_set"], "preprocessor": preprocessor,
        "bins": {"low": bins.low, "high": bins.high, "n_bins": bins.n_bins},
        "training": training, "metrics": metrics,
    }
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    return storage.write_bytes(relative_path, buffer.getvalue())


def read_payload(storage: Storage, relative_path: str) -> dict[str, Any]:
    """The raw artifact dict (no network built)."""
    if not storage.exists(relative_path):
        raise FileNotFoundError(f"no model artifact {relative_path} under {storage.uri}")
    payload = torch.load(io.BytesIO(storage.read_bytes(relative_path)), map_location="cpu",
                         weights_only=True)
    if payload.get("format") != ARTIFACT_FORMAT:
        raise ValueError(f"model artifact {relative_path} has format {payload.get('format')}, "
                         f"this galpipe reads format {ARTIFACT_FORMAT}")
    return payload


@dataclass
class TrainedModel:
    """A trained mass network ready for inference, with everything needed to feed it.

    Attributes: ``network`` (eval mode, on ``device``), ``feature_set``, ``preprocessor``,
    ``bins``, ``spec`` (name, feature_set, kind), ``key``, ``metrics``, ``training``.
    """

    network: MassNetwork
    feature_set: FeatureSet
    preprocessor: Preprocessor
    bins: MassBins
    spec: dict[str, str]
    key: str
    metrics: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def latent_s_dim(self) -> int:
        return self.network.latent_s_dim

    def preprocess(self, raw_batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Raw galaxies (+ cutout) columns to a model batch, without augmentation.

        ``raw_batch`` as for :meth:`Preprocessor.transform` (galaxy_id, stellar_mass with NaN
        for null, catalogue columns, and ``image`` (N, C_all, H, W) raw pixels for image sets).
        Adds ``bin`` (int64, -1 where the mass is null).
        """
        out = self.preprocessor.transform(raw_batch, training=False)
        out["bin"] = self.bins.index(out["stellar_mass"])
        return out

    @torch.no_grad()
    def predict(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """S and log-probabilities over the mass bins of an already-preprocessed batch.

        Returns ``latent_s`` float32 (N, d) and ``log_probs`` float32 (N, n_bins) (natural
        log of the softmax over bins).
        """
        x, extra = network_inputs(batch, self.network.input_kind, self.network.n_inputs)
        out = self.network(x.to(self.device), None if extra is None else extra.to(self.device))
        log_probs = torch.log_softmax(out["logits"].float(), dim=1)
        return {"latent_s": self.network.latent_s(out["latent"]).float().cpu().numpy(),
                "log_probs": log_probs.cpu().numpy()}


def load_model(storage: Storage, relative_path: str,
               device: str | torch.device = "cpu") -> TrainedModel:
    """Load a model artifact written by :func:`galpipe.train.train_model`."""
    payload = read_payload(storage, relative_path)
    network = build_network(**payload["network_arguments"])
    network.load_state_dict(payload["state_dict"])
    device = torch.device(device)
    network.to(device).eval()
    preprocessor = Preprocessor.from_dict(payload["preprocessor"])
    return TrainedModel(
        network=network, feature_set=preprocessor.feature_set, preprocessor=preprocessor,
        bins=MassBins(**payload["bins"]), spec=dict(payload["spec"]), key=payload["key"],
        metrics=dict(payload["metrics"]), training=dict(payload["training"]), device=device,
    )


__all__ = ["MODEL_FILE", "TrainedModel", "load_model", "model_path", "read_payload",
           "write_model"]
