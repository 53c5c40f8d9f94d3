"""Image encoder (compact inception-style CNN) and image decoder for C x H x W cutouts.

Additional inputs (catalogue values of the same galaxy such as E(B-V), photometry or redshift)
enter the encoder through a dense layer whose output is added as a per-channel bias to the first
convolution's output: the network can shift each stem feature map by an amount that depends on
the galaxy's catalogue values, before any non-linearity.
"""

from __future__ import annotations

import torch
from torch import nn
from galpipe.models.catalogue import init_leaky_weights
from galpipe.models.config import ArchitectureConfig


def _leaky_conv(c_in: int, c_out: int, kernel: int, slope: float) -> nn.Sequential:
    """Same-padded convolution followed by leaky ReLU."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel_size=kernel, padding=kernel // 2),
        nn.LeakyReLU(slope),
    )


def _branch_widths(c_out: int) -> tuple[int, int, int, int]:
    """Split c_out channels over the four inception branches; the 1x1 branch takes the rest."""
    quarter = c_out // 4
    return c_out - 3 * quarter, quarter, quarter, quarter


class InceptionBlock(nn.Module):
    """Four parallel branches concatenated along channels.

    Branches: 1x1 conv; 1x1 reduce then 3x3; 1x1 reduce then two 3x3 (a 5x5 receptive field at
    lower cost); 3x3 max pooling then 1x1. Input (N, c_in, H, W), output (N, c_out, H, W).
    """

    def __init__(self, c_in: int, c_out: int, negative_slope: float) -> None:
        super().__init__()
        w1, w3, w5, wp = _branch_widths(c_out)
        self.branch_1x1 = _leaky_conv(c_in, w1, 1, negative_slope)
        self.branch_3x3 = nn.Sequential(
            _leaky_conv(c_in, w3, 1, negative_slope), _leaky_conv(w3, w3, 3, negative_slope)
        )
        self.branch_5x5 = nn.Sequential(
            _leaky_conv(c_in, w5, 1, negative_slope),
            _leaky_conv(w5, w5, 3, negative_slope),
            _leaky_conv(w5, w5, 3, negative_slope),
        )
        self.branch_pool = nn.Sequential(
            nn.MaxPool2d(kernel_size=3, stride=1, padding=1),
            _leaky_conv(c_in, wp, 1, negative_slope),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat(
            [self.branch_1x1(x), self.branch_3x3(x), self.branch_5x5(x), self.branch_pool(x)],
            dim=1,
        )


class ImageEncoder(nn.Module):
    """Inception-style CNN from images (and optional additional inputs) to a latent vector.

    Parameters
    ----------
    n_channels:
        Image bands C.
    n_extra:
        Length of the additional-input vector per galaxy (0: none).
    latent_dim:
        Output size (S plus any reconstruction dimensions).
    arch:
        Widths and slope; see :class:`ArchitectureConfig`.

    Shapes: ``forward(images (N, C, H, W) float32, extra (N, n_extra) or None) -> (N,
    latent_dim)``. Global average pooling makes the encoder accept any H, W that survive the
    downsampling (H, W >= 2 ** len(arch.inception_channels)).
    """

    def __init__(self, n_channels: int, n_extra: int, latent_dim: int,
                 arch: ArchitectureConfig) -> None:
        super().__init__()
        if n_channels < 1:
            raise ValueError(f"image encoder needs at least one channel, got {n_channels}")
        if n_extra < 0:
            raise ValueError(f"n_extra must be >= 0, got {n_extra}")
        self.n_channels = n_channels
        self.n_extra = n_extra
        slope = arch.negative_slope

        self.stem = nn.Conv2d(n_channels, arch.stem_channels, kernel_size=3, padding=1,
                              stride=arch.stem_stride)
        self.extra_bias = nn.Linear(n_extra, arch.stem_channels) if n_extra > 0 else None
        self.stem_activation = nn.LeakyReLU(slope)

        stages: list[nn.Module] = []
        c_in = arch.stem_channels
        for c_out in arch.inception_channels:
            stages += [InceptionBlock(c_in, c_out, slope), nn.AvgPool2d(kernel_size=2)]
            c_in = c_out
        self.stages = nn.Sequential(*stages)

        self.head = nn.Sequential(
            nn.Linear(c_in, arch.image_dense_width),
            nn.LeakyReLU(slope),
            nn.Linear(arch.image_dense_width, latent_dim),
        )
        init_leaky_weights(self, slope)

    def first_layer(self, images: torch.Tensor, extra: torch.Tensor | None) -> torch.Tensor:
        """Stem convolution plus the per-channel bias from the additional inputs.

        Returns the pre-activation (N, stem_channels, H / stem_stride, W / stem_stride),
        exposed so tests and diagnostics can see exactly what the additional inputs change.
        """
        stem = self.stem(images)
        if self.extra_bias is None:
            return stem
        bias = self.extra_bias(extra)
        return stem + bias[:, :, None, None]

    def forward(self, images: torch.Tensor, extra: torch.Tensor | None = None) -> torch.Tensor:
        h = self.stem_activation(self.first_layer(images, extra))
        h = self.stages(h)
        h = h.mean(dim=(2, 3))
        return self.head(h)


class ImageDecoder(nn.Module):
    """Latent vector back to an image: dense, reshape, then (upsample x2 + conv) stages.

    Nearest-neighbour upsampling followed by a 3 x 3 convolution avoids the checkerboard
    artefacts of strided transposed convolutions. The last convolution is linear because the
    preprocessed pixels (log-stretched flux) take either sign.

    Shapes: ``forward(latent (N, latent_dim)) -> (N, n_channels, image_size, image_size)``.
    """

    def __init__(self, n_channels: int, latent_dim: int, arch: ArchitectureConfig) -> None:
        super().__init__()
        slope = arch.negative_slope
        self.n_channels = n_channels
        self.image_size = arch.image_size
        self.start_size = arch.image_size // 2 ** len(arch.decoder_channels)
        self.start_channels = arch.decoder_channels[0]

        self.dense = nn.Sequential(
            nn.Linear(latent_dim, self.start_channels * self.start_size**2),
            nn.LeakyReLU(slope),
        )
        stages: list[nn.Module] = []
        c_in = self.start_channels
        for c_out in arch.decoder_channels:
            stages += [nn.Upsample(scale_factor=2, mode="nearest"),
                       _leaky_conv(c_in, c_out, 3, slope)]
            c_in = c_out
        self.stages = nn.Sequential(*stages)
        self.to_image = nn.Conv2d(c_in, n_channels, kernel_size=3, padding=1)
        init_leaky_weights(self, slope)

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        h = self.dense(latent)
        h = h.view(-1, self.start_channels, self.start_size, self.start_size)
        return self.to_image(self.stages(h))


__all__ = ["ImageDecoder", "ImageEncoder", "InceptionBlock"]
