"""Catalogue encoder and decoder: deep leaky-ReLU MLPs over a vector of catalogue values.

The paper's catalogue encoder is 20 hidden layers of 128 units with leaky ReLU over the
concatenated inputs (photometry, errors, morphology, redshift and E(B-V)). This module also holds
the MLP building block and the weight initialisation shared by the estimator head and the image
networks.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from galpipe.models.config import ArchitectureConfig


def init_leaky_weights(module: nn.Module, negative_slope: float) -> None:
    """He-normal weights for the leaky-ReLU slope and zero biases, for every conv/linear layer.

    He initialisation keeps the second moment of activations roughly constant through a stack of
    leaky-ReLU layers, so deep plain networks start neither saturated nor vanishing.
    """
    for layer in module.modules():
        if isinstance(layer, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(layer.weight, a=negative_slope, nonlinearity="leaky_relu")
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)


class LeakyMLP(nn.Module):
    """Fully connected network: hidden leaky-ReLU layers, then a linear output layer.

    Parameters
    ----------
    n_in, n_out:
        Input and output sizes.
    hidden:
        Width of each hidden layer, in order (empty: one linear layer).
    negative_slope:
        Leaky ReLU slope.
    residual:
        If true, every hidden layer after the first whose width equals its input's is applied as
        ``h + leaky_relu(W h + b)``. The residual branches start scaled down by
        ``1 / sqrt(number of residual layers)`` so the activations' variance grows by about a
        factor e over the whole stack instead of doubling at every layer.

    Shapes: ``forward((N, n_in)) -> (N, n_out)``.
    """

    def __init__(self, n_in: int, hidden: Sequence[int], n_out: int, negative_slope: float,
                 residual: bool = False) -> None:
        super().__init__()
        self.activation = nn.LeakyReLU(negative_slope)
        widths = [n_in, *[int(w) for w in hidden]]
        self.hidden = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:]))
        self.skip = [residual and i > 0 and widths[i] == widths[i + 1]
                     for i in range(len(self.hidden))]
        self.output = nn.Linear(widths[-1], n_out)
        init_leaky_weights(self, negative_slope)

        n_residual = sum(self.skip)
        if n_residual:
            with torch.no_grad():
                for layer, skip in zip(self.hidden, self.skip):
                    if skip:
                        layer.weight.mul_(1.0 / math.sqrt(n_residual))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x
        for layer, skip in zip(self.hidden, self.skip):
            update = self.activation(layer(h))
            h = h + update if skip else update
        return self.output(h)


class CatalogueEncoder(nn.Module):
    """Deep MLP from catalogue features (plus additional inputs) to the latent vector.

    The additional inputs are simply concatenated to the features: in an MLP there is no
    spatial structure to bias, so this is the catalogue counterpart of the image encoder's
    per-channel bias.

    Shapes: ``forward(features (N, n_features), extra (N, n_extra) or None) -> (N, latent_dim)``.
    """

    def __init__(self, n_features: int, n_extra: int, latent_dim: int,
                 arch: ArchitectureConfig) -> None:
        super().__init__()
        if n_features < 1:
            raise ValueError(f"catalogue encoder needs at least one feature, got {n_features}")
        if n_extra < 0:
            raise ValueError(f"n_extra must be >= 0, got {n_extra}")
        self.n_features = n_features
        self.n_extra = n_extra
        self.mlp = LeakyMLP(n_features + n_extra, [arch.mlp_width] * arch.mlp_depth, latent_dim,
                            arch.negative_slope, residual=arch.mlp_residual)

    def forward(self, features: torch.Tensor, extra: torch.Tensor | None = None) -> torch.Tensor:
        if self.n_extra > 0:
            features = torch.cat([features, extra], dim=1)
        return self.mlp(features)


class CatalogueDecoder(nn.Module):
    """MLP from the latent back to the catalogue features (not the additional inputs).

    Shapes: ``forward(latent (N, latent_dim)) -> (N, n_features)``.
    """

    def __init__(self, n_features: int, latent_dim: int, arch: ArchitectureConfig) -> None:
        super().__init__()
        self.n_features = n_features
        self.mlp = LeakyMLP(latent_dim, [arch.decoder_width] * arch.decoder_depth, n_features,
                            arch.negative_slope, residual=arch.mlp_residual)

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        return self.mlp(latent)


__all__ = ["CatalogueDecoder", "CatalogueEncoder", "LeakyMLP", "init_leaky_weights"]
