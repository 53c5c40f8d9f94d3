"""Mass networks and their losses (plain PyTorch; Ray and storage live elsewhere).

* :class:`ArchitectureConfig`: every width, depth and latent size (``paper`` / ``small``).
* :func:`build_network` -> :class:`MassNetwork`: encoder (inception CNN for images, deep MLP for
  catalogues), estimator from S to the stellar-mass bin logits, decoder for contrastive models.
* :func:`scl_loss`, :func:`mi_loss` and the individual loss terms.
"""

from galpipe.models.catalogue import CatalogueDecoder, CatalogueEncoder, LeakyMLP
from galpipe.models.config import INPUT_KINDS, ArchitectureConfig
from galpipe.models.heads import MassEstimator
from galpipe.models.image import ImageDecoder, ImageEncoder, InceptionBlock
from galpipe.models.losses import (
    LossWeights,
    cross_entropy_terms,
    latent_contrast,
    mi_loss,
    output_agreement,
    reconstruction,
    rms_distance,
    scl_loss,
)
from galpipe.models.network import TRAINING_KINDS, MassNetwork, build_network, network_from_spec

__all__ = [
    "INPUT_KINDS",
    "TRAINING_KINDS",
    "ArchitectureConfig",
    "CatalogueDecoder",
    "CatalogueEncoder",
    "ImageDecoder",
    "ImageEncoder",
    "InceptionBlock",
    "LeakyMLP",
    "LossWeights",
    "MassEstimator",
    "MassNetwork",
    "build_network",
    "cross_entropy_terms",
    "latent_contrast",
    "mi_loss",
    "network_from_spec",
    "output_agreement",
    "reconstruction",
    "rms_distance",
    "scl_loss",
]
