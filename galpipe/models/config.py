"""Sizes of every network galpipe trains: one frozen, serialisable configuration object.

Two profiles exist for each input kind. ``paper`` follows the sizes the paper states (520 mass
bins; S of 16 dimensions for images and 8 for catalogues; 512 and 8 extra reconstruction
dimensions; catalogue MLP of 20 layers of 128 with leaky ReLU). Sizes the paper does not state
(inception widths, decoder widths, estimator head) are galpipe defaults chosen to keep the image
network compact. ``small`` shrinks every width so that a 64 x 64 image network trains on two CPU
cores; it is the default for the bundled sample and for tests.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Literal

InputKind = Literal["image", "catalogue"]
INPUT_KINDS: tuple[str, ...] = ("image", "catalogue")


@dataclass(frozen=True)
class ArchitectureConfig:
    """Every width, depth and latent size of one mass network.

    Parameters
    ----------
    kind:
        ``"image"`` (inception CNN encoder) or ``"catalogue"`` (deep MLP encoder).
    n_bins:
        Number of stellar-mass bins the estimator classifies into (paper: 520).
    latent_s_dim:
        Dimensions of S, the first part of the latent that carries the mass information and
        feeds the estimator (paper: 16 for images, 8 for catalogues).
    extra_latent_dim:
        Further latent dimensions used only by the decoder of contrastive ("scl") models (paper:
        512 for images, 8 for catalogues). Information ("mi") models ignore them: their latent is
        S alone.
    negative_slope:
        Slope of the leaky ReLU for negative inputs, used in every hidden layer.
    image_size:
        Height and width of the square input images in pixels; the image decoder produces this
        size. Must be divisible by ``2 ** len(decoder_channels)``.
    stem_channels:
        Output channels of the first convolution (where the additional inputs enter as a
        per-channel bias).
    stem_stride:
        Stride of the first convolution (3 x 3); 2 halves the resolution before the inception
        stages, which is where most of the compute of a 64 x 64 network goes.
    inception_channels:
        Output channels of each inception stage; every stage is one inception block followed by
        2 x 2 average pooling, so the encoder downsamples by ``2 ** len(inception_channels)``.
    image_dense_width:
        Width of the dense layer between global pooling and the latent.
    decoder_channels:
        Channels of each upsampling stage of the image decoder, coarsest first.
    mlp_depth, mlp_width:
        Hidden layers and their width in the catalogue encoder (paper: 20 and 128).
    mlp_residual:
        Add an identity skip around each hidden layer after the first. Not stated in the paper;
        it keeps a 20-layer MLP trainable without normalisation layers.
    decoder_depth, decoder_width:
        Hidden layers and width of the catalogue decoder MLP.
    estimator_hidden:
        Hidden widths of the estimator head from S to the bin logits (empty: a linear head).
    """

    kind: InputKind = "image"
    n_bins: int = 520
    latent_s_dim: int = 16
    extra_latent_dim: int = 512
    negative_slope: float = 0.2
    image_size: int = 64
    stem_channels: int = 32
    stem_stride: int = 1
    inception_channels: tuple[int, ...] = (64, 128, 192, 256)
    image_dense_width: int = 256
    decoder_channels: tuple[int, ...] = (128, 64, 32, 16)
    mlp_depth: int = 20
    mlp_width: int = 128
    mlp_residual: bool = False
    decoder_depth: int = 4
    decoder_width: int = 128
    estimator_hidden: tuple[int, ...] = (128, 128)

    def __post_init__(self) -> None:
        if self.kind not in INPUT_KINDS:
            raise ValueError(f"architecture kind must be one of {INPUT_KINDS}, got {self.kind!r}")
        positive = {
            "n_bins": self.n_bins,
            "latent_s_dim": self.latent_s_dim,
            "image_size": self.image_size,
            "stem_channels": self.stem_channels,
            "stem_stride": self.stem_stride,
            "image_dense_width": self.image_dense_width,
            "mlp_depth": self.mlp_depth,
            "mlp_width": self.mlp_width,
            "decoder_depth": self.decoder_depth,
            "decoder_width": self.decoder_width,
        }
        for name, value in positive.items():
            if int(value) < 1:
                raise ValueError(f"architecture field {name} must be >= 1, got {value}")
        if self.n_bins < 2:
            raise ValueError(f"architecture field n_bins must be >= 2, got {self.n_bins}")
        if self.extra_latent_dim < 0:
            raise ValueError(f"extra_latent_dim must be >= 0, got {self.extra_latent_dim}")
        if not self.negative_slope >= 0.0:
            raise ValueError(f"negative_slope must be >= 0, got {self.negative_slope}")
        for name in ("inception_channels", "decoder_channels", "estimator_hidden"):
            widths = getattr(self, name)
            if any(int(w) < 1 for w in widths):
                raise ValueError(f"architecture field {name} needs widths >= 1, got {widths}")
        if self.kind == "image":
            if not self.inception_channels or not self.decoder_channels:
                raise ValueError("image architectures need non-empty inception_channels and "
                                 "decoder_channels")
            if any(int(w) < 4 for w in self.inception_channels):
                raise ValueError("inception_channels must be >= 4 (four parallel branches), got "
                                 f"{self.inception_channels}")
            upsampling = 2 ** len(self.decoder_channels)
            if self.image_size % upsampling != 0:
                raise ValueError(
                    f"image_size={self.image_size} must be divisible by 2**len(decoder_channels)"
                    f"={upsampling}; change image_size or the number of decoder stages"
                )

    @property
    def latent_dim_scl(self) -> int:
        """Full latent size of a contrastive model: S plus the reconstruction dimensions."""
        return self.latent_s_dim + self.extra_latent_dim

    @classmethod
    def paper(cls, kind: InputKind = "image") -> ArchitectureConfig:
        """Sizes stated in the paper, galpipe defaults where it is silent."""
        if kind == "image":
            return cls(kind="image", latent_s_dim=16, extra_latent_dim=512)
        if kind == "catalogue":
            return cls(kind="catalogue", latent_s_dim=8, extra_latent_dim=8, mlp_depth=20,
                       mlp_width=128, mlp_residual=False, decoder_depth=4, decoder_width=128)
        raise ValueError(f"architecture kind must be one of {INPUT_KINDS}, got {kind!r}")

    @classmethod
    def small(cls, kind: InputKind = "image") -> ArchitectureConfig:
        """A fast profile for two CPU cores at 64 x 64: paper S sizes, narrower layers."""
        if kind == "image":
            return cls(
                kind="image", latent_s_dim=16, extra_latent_dim=64, stem_channels=16,
                stem_stride=2, inception_channels=(24, 32, 48), image_dense_width=64,
                decoder_channels=(32, 16, 8), estimator_hidden=(64,),
            )
        if kind == "catalogue":
            return cls(
                kind="catalogue", latent_s_dim=8, extra_latent_dim=8, mlp_depth=6, mlp_width=64,
                mlp_residual=True, decoder_depth=3, decoder_width=64, estimator_hidden=(64,),
            )
        raise ValueError(f"architecture kind must be one of {INPUT_KINDS}, got {kind!r}")

    def with_changes(self, **changes: Any) -> ArchitectureConfig:
        """A copy with some fields replaced (validated again)."""
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON/YAML-serialisable dict (tuples become lists)."""
        out = asdict(self)
        for name in ("inception_channels", "decoder_channels", "estimator_hidden"):
            out[name] = list(out[name])
        return out

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ArchitectureConfig:
        """Build from a dict as written by :meth:`to_dict` or a config file.

        Unknown keys raise ``ValueError`` naming them; missing keys take the class defaults.
        """
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown architecture fields {unknown}; expected some of "
                             f"{sorted(known)}")
        cleaned = dict(values)
        for name in ("inception_channels", "decoder_channels", "estimator_hidden"):
            if name in cleaned:
                cleaned[name] = tuple(int(w) for w in cleaned[name])
        return cls(**cleaned)
