"""Estimator head: from S, the first ``latent_s_dim`` latent dimensions, to stellar-mass bin logits.

Its softmax is the network's discretised p(M* | input) over the bins of
:class:`galpipe.bins.MassBins`.
"""

from __future__ import annotations

import torch
from torch import nn

from galpipe.models.catalogue import LeakyMLP
from galpipe.models.config import ArchitectureConfig


class MassEstimator(nn.Module):
    """Small leaky-ReLU MLP from S to one logit per stellar-mass bin.

    Shapes: ``forward(latent_s (N, latent_s_dim)) -> logits (N, n_bins)``; the logits are
    natural-log unnormalised probabilities (softmax gives p per bin).
    """

    def __init__(self, arch: ArchitectureConfig) -> None:
        super().__init__()
        self.latent_s_dim = arch.latent_s_dim
        self.n_bins = arch.n_bins
        self.mlp = LeakyMLP(arch.latent_s_dim, arch.estimator_hidden, arch.n_bins,
                            arch.negative_slope)

    def forward(self, latent_s: torch.Tensor) -> torch.Tensor:
        return self.mlp(latent_s)


__all__ = ["MassEstimator"]
