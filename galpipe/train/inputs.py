"""From preprocessed batches to network inputs, shared by training and inference.

A preprocessed batch (see :mod:`galpipe.data.pipeline`) carries ``image`` (N, C, H, W) for
image feature sets and ``features`` (N, F). An image network takes the image as its main input
and all F features as additional inputs; a catalogue network takes the first
``n_main_features`` (columns and errors) as its main input and the rest (extra inputs and
missing-value indicators) as additional inputs.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from galpipe.data.pipeline import Preprocessor
from galpipe.models import ArchitectureConfig

ARCHITECTURES = ("small", "paper")


def network_arguments(preprocessor: Preprocessor, training_kind: str, architecture: str,
                      n_bins: int) -> dict[str, Any]:
    """Keyword arguments of :func:`galpipe.models.build_network` for a feature set.

    ``architecture`` is ``"small"`` or ``"paper"`` (:class:`ArchitectureConfig` profiles); the
    number of mass bins and, for images, the cutout size are taken from the data.
    """
    if architecture not in ARCHITECTURES:
        raise ValueError(f"architecture must be one of {ARCHITECTURES}, got '{architecture}'")
    kind = preprocessor.feature_set.input_kind
    profile = getattr(ArchitectureConfig, architecture)(kind)
    changes: dict[str, Any] = {"n_bins": int(n_bins)}
    if kind == "image":
        channels, height, width = preprocessor.image_shape
        if height != width:
            raise ValueError(f"image networks need square cutouts, got {height} x {width}")
        changes["image_size"] = int(height)
        n_inputs, n_extra = channels, preprocessor.n_features
    else:
        n_inputs = preprocessor.n_main_features
        n_extra = preprocessor.n_features - n_inputs
    return {"input_kind": kind, "training_kind": training_kind, "n_inputs": int(n_inputs),
            "n_extra": int(n_extra), "arch": profile.with_changes(**changes).to_dict()}


def network_inputs(batch: dict[str, Any], input_kind: str,
                   n_inputs: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(main input, additional inputs or None) of a batch of tensors or numpy arrays.

    Shapes: image (N, C, H, W) and extra (N, F) for images; features[:, :n_inputs] and
    features[:, n_inputs:] for catalogues. Arrays are converted to float32 tensors.
    """
    def tensor(values: Any) -> torch.Tensor:
        if isinstance(values, np.ndarray):
            return torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32))
        return values.float()

    features = tensor(batch["features"])
    if input_kind == "image":
        x = tensor(batch["image"])
        extra = features if features.shape[1] > 0 else None
    else:
        x = features[:, :n_inputs]
        extra = features[:, n_inputs:] if features.shape[1] > n_inputs else None
    return x, extra


def dihedral(images: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """Apply symmetry ``codes`` (N,) in 0..7 of the square to images (N, C, H, H).

    Code c rotates by (c mod 4) x 90 degrees, then mirrors left-right when c >= 4: the same
    convention as :func:`galpipe.data.preprocess.apply_dihedral`, so composing a code with the
    augmentation already applied in the data pipeline never gives back the same view unless the
    code is 0.
    """
    out = torch.empty_like(images)
    for code in range(8):
        members = torch.nonzero(codes == code).flatten()
        if members.numel() == 0:
            continue
        moved = torch.rot90(images[members], code % 4, dims=(-2, -1))
        out[members] = torch.flip(moved, dims=(-1,)) if code >= 4 else moved
    return out


__all__ = ["ARCHITECTURES", "dihedral", "network_arguments", "network_inputs"]
