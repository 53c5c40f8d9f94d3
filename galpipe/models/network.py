"""MassNetwork: encoder, estimator and (for contrastive models) decoder in one module.

Two training kinds share the same pieces:

* ``"scl"`` (contrastive) models build S for the causal analysis; their latent is S followed by
  ``extra_latent_dim`` reconstruction dimensions, and they carry a decoder.
* ``"mi"`` (information) models estimate pointwise information; their latent is S alone and they
  have no decoder.
"""

from __future__ import annotations

import logging
from typing import Any, Literal

import torch
from torch import nn

from galpipe.models.catalogue import CatalogueDecoder, CatalogueEncoder
from galpipe.models.config import INPUT_KINDS, ArchitectureConfig
from galpipe.models.heads import MassEstimator
from galpipe.models.image import ImageDecoder, ImageEncoder

logger = logging.getLogger(__name__)

TrainingKind = Literal["scl", "mi"]
TRAINING_KINDS: tuple[str, ...] = ("scl", "mi")


class MassNetwork(nn.Module):
    """A stellar-mass classifier with an explicit latent space.

    Build it with :func:`build_network`. Tensors: inputs are float32, images (N, C, H, W) or
    catalogue features (N, F); ``extra`` is (N, n_extra) float32 or ``None`` when n_extra is 0.
    """

    def __init__(self, input_kind: str, training_kind: str, n_inputs: int, n_extra: int,
                 arch: ArchitectureConfig, encoder: nn.Module, estimator: MassEstimator,
                 decoder: nn.Module | None) -> None:
        super().__init__()
        self.input_kind = input_kind
        self.training_kind = training_kind
        self.n_inputs = n_inputs
        self.n_extra = n_extra
        self.arch = arch
        self.latent_s_dim = arch.latent_s_dim
        self.encoder = encoder
        self.estimator = estimator
        self.decoder = decoder

    @property
    def latent_dim(self) -> int:
        """Size of the full latent vector (S alone for "mi" models)."""
        return self.arch.latent_dim_scl if self.training_kind == "scl" else self.latent_s_dim

    def spec(self) -> dict[str, Any]:
        """JSON-serialisable arguments of :func:`build_network` that rebuild this network."""
        return {
            "input_kind": self.input_kind,
            "training_kind": self.training_kind,
            "n_inputs": self.n_inputs,
            "n_extra": self.n_extra,
            "arch": self.arch.to_dict(),
        }

    def _check_inputs(self, x: torch.Tensor, extra: torch.Tensor | None) -> torch.Tensor | None:
        """Raise a readable error for wrongly shaped inputs; normalise empty extras to None."""
        if self.input_kind == "image":
            size = self.arch.image_size
            if x.dim() != 4 or x.shape[1] != self.n_inputs:
                raise ValueError(f"image network expects images of shape (N, {self.n_inputs}, "
                                 f"{size}, {size}), got {tuple(x.shape)}")
            if self.decoder is not None and tuple(x.shape[2:]) != (size, size):
                raise ValueError(f"contrastive image network reconstructs {size}x{size} images, "
                                 f"got {tuple(x.shape[2:])}; set arch.image_size to match")
        elif x.dim() != 2 or x.shape[1] != self.n_inputs:
            raise ValueError(f"catalogue network expects features of shape (N, {self.n_inputs}), "
                             f"got {tuple(x.shape)}")

        if self.n_extra == 0:
            if extra is not None and extra.numel() > 0:
                raise ValueError(f"network was built without additional inputs but got extra of "
                                 f"shape {tuple(extra.shape)}")
            return None
        if extra is None or extra.shape != (x.shape[0], self.n_extra):
            shape = None if extra is None else tuple(extra.shape)
            raise ValueError(f"network expects additional inputs of shape ({x.shape[0]}, "
                             f"{self.n_extra}), got {shape}")
        return extra

    def encode(self, x: torch.Tensor, extra: torch.Tensor | None = None) -> torch.Tensor:
        """Inputs to the latent vector, (N, latent_dim)."""
        return self.encoder(x, self._check_inputs(x, extra))

    def latent_s(self, latent: torch.Tensor) -> torch.Tensor:
        """S, the first ``latent_s_dim`` dimensions of the latent, (N, latent_s_dim)."""
        return latent[:, : self.latent_s_dim]

    def logits(self, latent: torch.Tensor) -> torch.Tensor:
        """Stellar-mass bin logits (N, n_bins) from the latent (only S is used)."""
        return self.estimator(self.latent_s(latent))

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        """Reconstructed inputs from the full latent; only contrastive ("scl") networks decode."""
        if self.decoder is None:
            raise ValueError(f"a {self.training_kind!r} network has no decoder; build it with "
                             "training_kind='scl' to reconstruct inputs")
        return self.decoder(latent)

    def forward(self, x: torch.Tensor,
                extra: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """``{"latent": (N, latent_dim), "logits": (N, n_bins)}``."""
        latent = self.encode(x, extra)
        return {"latent": latent, "logits": self.logits(latent)}


def build_network(input_kind: str, training_kind: str, n_inputs: int, n_extra: int = 0,
                  arch: ArchitectureConfig | dict[str, Any] | None = None) -> MassNetwork:
    """Assemble a :class:`MassNetwork`.

    Parameters
    ----------
    input_kind:
        ``"image"`` or ``"catalogue"``.
    training_kind:
        ``"scl"`` (contrastive: latent S + reconstruction dims, with decoder) or ``"mi"``
        (information: latent S, no decoder).
    n_inputs:
        Image channels C for images, number of catalogue features F for catalogues.
    n_extra:
        Length of the additional-input vector (0 for none).
    arch:
        Architecture, or its dict form; default ``ArchitectureConfig.small(input_kind)``.
    """
    if input_kind not in INPUT_KINDS:
        raise ValueError(f"input_kind must be one of {INPUT_KINDS}, got {input_kind!r}")
    if training_kind not in TRAINING_KINDS:
        raise ValueError(f"training_kind must be one of {TRAINING_KINDS}, got {training_kind!r}")
    if arch is None:
        arch = ArchitectureConfig.small(input_kind)  # type: ignore[arg-type]
    elif isinstance(arch, dict):
        arch = ArchitectureConfig.from_dict(arch)
    if arch.kind != input_kind:
        raise ValueError(f"architecture is for {arch.kind!r} inputs but input_kind is "
                         f"{input_kind!r}; use ArchitectureConfig.small({input_kind!r}) or "
                         f".paper({input_kind!r})")
    if n_inputs < 1:
        raise ValueError(f"n_inputs (channels or features) must be >= 1, got {n_inputs}")
    if n_extra < 0:
        raise ValueError(f"n_extra must be >= 0, got {n_extra}")

    scl = training_kind == "scl"
    latent_dim = arch.latent_dim_scl if scl else arch.latent_s_dim
    if input_kind == "image":
        encoder: nn.Module = ImageEncoder(n_inputs, n_extra, latent_dim, arch)
        decoder: nn.Module | None = ImageDecoder(n_inputs, latent_dim, arch) if scl else None
    else:
        encoder = CatalogueEncoder(n_inputs, n_extra, latent_dim, arch)
        decoder = CatalogueDecoder(n_inputs, latent_dim, arch) if scl else None

    network = MassNetwork(input_kind, training_kind, n_inputs, n_extra, arch, encoder,
                          MassEstimator(arch), decoder)
    logger.debug("built %s/%s network: %d inputs, %d extra, latent %d, %d parameters",
                 input_kind, training_kind, n_inputs, n_extra, latent_dim,
                 sum(p.numel() for p in network.parameters()))
    return network


def network_from_spec(spec: dict[str, Any]) -> MassNetwork:
    """Rebuild an (untrained) network from :meth:`MassNetwork.spec`; load weights afterwards."""
    return build_network(**spec)


__all__ = ["MassNetwork", "TRAINING_KINDS", "build_network", "network_from_spec"]
