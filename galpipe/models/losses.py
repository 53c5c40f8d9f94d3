"""Training losses of the contrastive ("scl") and information ("mi") mass networks.

Every term of the contrastive loss is a separate function of tensors so that it can be tested
against a hand computation and logged on its own. All values are in nats (natural logarithms)
except the reconstruction term, which is a mean squared error in the units of the preprocessed
inputs.

The contrastive step (:func:`scl_loss`) on two sub-batches A and B of galaxies:

1. z1 = encode(x), x1 = decode(z1), z2 = encode(x1), x2 = decode(z2); images also get a second,
   differently rotated/flipped copy x_aug with za = encode(x_aug), xa = decode(za).
2. total = w_ce * cross_entropy + w_rec * reconstruction + w_agree * agreement
   + w_contrast * contrast.

Gradients flow through the whole encode/decode/re-encode cycle: the reconstruction x1 that is
re-encoded is not detached, so the decoder also learns to produce inputs that the encoder maps to
the same mass distribution.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
from torch.nn import functional as F

from galpipe.models.network import MassNetwork

# Keeps the RMS distance differentiable when two S vectors coincide exactly (sqrt'(0) = inf).
_DISTANCE_EPS = 1e-12


@dataclass(frozen=True)
class LossWeights:
    """Multipliers of the contrastive loss terms.

    The paper weights reconstruction by 100 for images and 1 for catalogues; the other weights
    are not stated and default to 1.

    Parameters
    ----------
    cross_entropy, reconstruction, agreement, contrast:
        Weight of each term in the total.
    detach_agreement_targets:
        If true (default), the soft labels softmax(b) of the agreement term are treated as
        constants, so each view is pulled towards the other without the target view being pushed
        to sharpen itself through its own log-probabilities; the cross-entropy terms already
        anchor every view to the true bin.
    """

    cross_entropy: float = 1.0
    reconstruction: float = 1.0
    agreement: float = 1.0
    contrast: float = 1.0
    detach_agreement_targets: bool = True
    label_smoothing_bins: float = 0.0

    @classmethod
    def for_input(cls, input_kind: str, **changes: Any) -> LossWeights:
        """Paper weights for ``"image"`` (reconstruction 100) or ``"catalogue"`` (1) inputs."""
        if input_kind not in ("image", "catalogue"):
            raise ValueError(f"input_kind must be 'image' or 'catalogue', got {input_kind!r}")
        reconstruction = 100.0 if input_kind == "image" else 1.0
        return cls(**{"reconstruction": reconstruction, **changes})

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for configs and tracking."""
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> LossWeights:
        """Inverse of :meth:`to_dict`; unknown keys raise ``ValueError`` naming them."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown loss weight fields {unknown}; expected some of "
                             f"{sorted(known)}")
        return cls(**values)


def _check_bins(bins: torch.Tensor, n_bins: int, n_galaxies: int) -> None:
    """Bins must be int64 of shape (N,) inside [0, n_bins): NaN masses (-1) must be dropped."""
    if bins.dtype != torch.int64 or bins.shape != (n_galaxies,):
        raise ValueError(f"true bins must be an int64 tensor of shape ({n_galaxies},), got "
                         f"{bins.dtype} of shape {tuple(bins.shape)}")
    if n_galaxies and (int(bins.min()) < 0 or int(bins.max()) >= n_bins):
        raise ValueError(f"true bins must lie in [0, {n_bins - 1}], got range "
                         f"[{int(bins.min())}, {int(bins.max())}]; drop galaxies without a "
                         "stellar mass (bin -1) before training")


def soft_bin_targets(bins: torch.Tensor, n_bins: int, width_bins: float) -> torch.Tensor:
    """Gaussian soft targets around each true bin, shape (N, n_bins), rows summing to 1.

    ``width_bins`` is the Gaussian's standard deviation in bins (0.1 dex = 8 bins of 0.0125 dex).
    Why: with a few thousand galaxies, hard targets over hundreds of 0.0125-dex bins make the
    network memorise the spiky training histogram; a width below the mass uncertainty keeps the
    ordinal neighbourhood of the truth plausible instead.
    """
    centres = torch.arange(n_bins, device=bins.device, dtype=torch.float32)
    distance = (centres[None, :] - bins[:, None].to(torch.float32)) / width_bins
    return torch.softmax(-0.5 * distance * distance, dim=1)


def _bin_cross_entropy(logits: torch.Tensor, bins: torch.Tensor,
                       smoothing_bins: float) -> torch.Tensor:
    if smoothing_bins > 0:
        targets = soft_bin_targets(bins, logits.shape[1], smoothing_bins)
        return F.cross_entropy(logits, targets.to(logits.dtype))
    return F.cross_entropy(logits, bins)


def cross_entropy_terms(logits: Sequence[torch.Tensor], bins: torch.Tensor,
                        smoothing_bins: float = 0.0) -> torch.Tensor:
    """Classification loss of every view against the true mass bin.

    Parameters
    ----------
    logits:
        One (N, n_bins) logit tensor per view (z1, z2 and, for images, za).
    bins:
        True bin of each galaxy, int64 (N,).
    smoothing_bins:
        If positive, the targets are Gaussian soft labels of this width in bins
        (:func:`soft_bin_targets`) instead of the one-hot true bin.

    Returns
    -------
    Scalar: the sum over views of the mean over galaxies of -log softmax(logits)[true bin], nats.
    """
    if not logits:
        raise ValueError("cross_entropy_terms needs at least one logits tensor")
    _check_bins(bins, logits[0].shape[1], logits[0].shape[0])
    return torch.stack([_bin_cross_entropy(view, bins, smoothing_bins)
                        for view in logits]).sum()


def reconstruction(reconstructions: Sequence[torch.Tensor],
                   targets: Sequence[torch.Tensor]) -> torch.Tensor:
    """Unweighted reconstruction error; the image/catalogue weight is applied in the total.

    Parameters
    ----------
    reconstructions, targets:
        Matched lists: x1 and x2 against x, and for images xa against x_aug. Any equal shapes.

    Returns
    -------
    Scalar: the sum over pairs of the mean squared difference over all elements (galaxies,
    channels, pixels or features), in squared units of the preprocessed inputs.
    """
    if len(reconstructions) != len(targets) or not targets:
        raise ValueError(f"reconstruction needs matched non-empty lists, got "
                         f"{len(reconstructions)} reconstructions and {len(targets)} targets")
    for produced, target in zip(reconstructions, targets):
        if produced.shape != target.shape:
            raise ValueError(f"reconstruction of shape {tuple(produced.shape)} does not match its "
                             f"target of shape {tuple(target.shape)}")
    return torch.stack([F.mse_loss(r, t) for r, t in zip(reconstructions, targets)]).sum()


def output_agreement(logits: Sequence[torch.Tensor],
                     detach_targets: bool = True) -> torch.Tensor:
    """Symmetric soft-label cross-entropy that makes the views' mass distributions agree.

    For every ordered pair of different views (a, b): the mean over galaxies of
    ``-sum_bins softmax(b) * log_softmax(a)``; the result is the sum over ordered pairs (2 pairs
    for z1, z2; 6 for z1, z2, za).

    Parameters
    ----------
    logits:
        One (N, n_bins) logit tensor per view; at least two.
    detach_targets:
        Treat softmax(b) as a constant (see :class:`LossWeights`).

    Returns
    -------
    Scalar in nats. Its minimum is not zero but the summed entropies of the views.
    """
    if len(logits) < 2:
        raise ValueError(f"output_agreement needs at least two views, got {len(logits)}")
    log_probs = [F.log_softmax(view, dim=1) for view in logits]
    terms = []
    for a, log_p_a in enumerate(log_probs):
        for b, log_p_b in enumerate(log_probs):
            if a == b:
                continue
            target = log_p_b.exp()
            if detach_targets:
                target = target.detach()
            terms.append(-(target * log_p_a).sum(dim=1).mean())
    return torch.stack(terms).sum()


def rms_distance(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Root-mean-square difference over the last dimension; broadcasts over leading dims."""
    return torch.sqrt(((u - v) ** 2).mean(dim=-1) + _DISTANCE_EPS)


def latent_contrast(positive_pairs: Sequence[tuple[torch.Tensor, torch.Tensor]],
                    latent_s_a: torch.Tensor, latent_s_b: torch.Tensor) -> torch.Tensor:
    """Contrast on S: views of one galaxy close, different galaxies far apart.

    With d(u, v) the RMS difference over the S dimensions:
    P = exp(-mean d over all positive pairs), N = exp(-mean d over every pair (i in A, j in B)),
    loss = -log(P / (P + N)) = softplus(mean_positive_d - mean_negative_d), evaluated in that
    log-sum-exp form so that large distances never underflow.

    Parameters
    ----------
    positive_pairs:
        Pairs of (M, d) S tensors whose rows are the same galaxy (z1 with z2, z1 with za);
        all pairs' distances are pooled into one mean.
    latent_s_a, latent_s_b:
        S of sub-batch A (n_a, d) and sub-batch B (n_b, d), both from the first encoding z1.

    Returns
    -------
    Scalar in nats; log 2 when positive and negative distances are equal on average.
    """
    if not positive_pairs:
        raise ValueError("latent_contrast needs at least one positive pair")
    positive = torch.cat([rms_distance(u, v) for u, v in positive_pairs])
    negative = rms_distance(latent_s_a[:, None, :], latent_s_b[None, :, :])
    return F.softplus(positive.mean() - negative.mean())


def _encode_decode(network: MassNetwork, x: torch.Tensor,
                   extra: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """One pass of the cycle: latent and its reconstruction."""
    latent = network.encode(x, extra)
    return latent, network.decode(latent)


def _concat_optional(a: torch.Tensor | None, b: torch.Tensor | None) -> torch.Tensor | None:
    """Concatenate two sub-batch tensors along galaxies, or None when neither exists."""
    if a is None and b is None:
        return None
    if a is None or b is None:
        raise ValueError("both sub-batches must have additional inputs, or neither")
    return torch.cat([a, b])


def scl_loss(
    network: MassNetwork,
    x_a: torch.Tensor,
    extra_a: torch.Tensor | None,
    bins_a: torch.Tensor,
    x_b: torch.Tensor,
    extra_b: torch.Tensor | None,
    bins_b: torch.Tensor,
    x_aug_a: torch.Tensor | None = None,
    x_aug_b: torch.Tensor | None = None,
    weights: LossWeights | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Contrastive loss of one training step on two sub-batches of galaxies.

    Parameters
    ----------
    network:
        A contrastive (``training_kind="scl"``) :class:`MassNetwork`.
    x_a, x_b:
        Preprocessed inputs of sub-batches A and B: images (n, C, H, W) or features (n, F).
    extra_a, extra_b:
        Additional inputs (n, n_extra), or ``None`` for networks without them.
    bins_a, bins_b:
        True stellar-mass bins, int64 (n,).
    x_aug_a, x_aug_b:
        For images: the same galaxies under a second, different rotation/flip (both or neither).
    weights:
        Term weights; default ``LossWeights.for_input(network.input_kind)``.

    Returns
    -------
    ``(total, terms)``: the scalar loss and a dict of the unweighted scalar terms
    ``cross_entropy``, ``reconstruction``, ``agreement``, ``contrast`` (nats, except the
    reconstruction MSE). ``total == sum(weight * term)``.

    The two sub-batches are encoded together as one batch (the networks have no batch-dependent
    layers, so this equals encoding them separately) and split again for the contrast.
    """
    if network.decoder is None:
        raise ValueError("scl_loss needs a contrastive network (training_kind='scl'), got "
                         f"{network.training_kind!r}")
    if (x_aug_a is None) != (x_aug_b is None):
        raise ValueError("give augmented copies for both sub-batches (x_aug_a, x_aug_b) or neither")
    if weights is None:
        weights = LossWeights.for_input(network.input_kind)
    n_a = x_a.shape[0]
    if n_a == 0 or x_b.shape[0] == 0:
        raise ValueError(f"both sub-batches need galaxies, got {n_a} and {x_b.shape[0]}")

    x = torch.cat([x_a, x_b])
    extra = _concat_optional(extra_a, extra_b)
    bins = torch.cat([bins_a, bins_b])

    z1, x1 = _encode_decode(network, x, extra)
    z2, x2 = _encode_decode(network, x1, extra)
    latents, reconstructions, targets = [z1, z2], [x1, x2], [x, x]
    if x_aug_a is not None:
        x_aug = torch.cat([x_aug_a, x_aug_b])
        za, xa = _encode_decode(network, x_aug, extra)
        latents.append(za)
        reconstructions.append(xa)
        targets.append(x_aug)

    logits = [network.logits(z) for z in latents]
    s1 = network.latent_s(z1)
    positive_pairs = [(s1, network.latent_s(z)) for z in latents[1:]]
    terms = {
        "cross_entropy": cross_entropy_terms(logits, bins, weights.label_smoothing_bins),
        "reconstruction": reconstruction(reconstructions, targets),
        "agreement": output_agreement(logits, weights.detach_agreement_targets),
        "contrast": latent_contrast(positive_pairs, s1[:n_a], s1[n_a:]),
    }
    total = (weights.cross_entropy * terms["cross_entropy"]
             + weights.reconstruction * terms["reconstruction"]
             + weights.agreement * terms["agreement"]
             + weights.contrast * terms["contrast"])
    return total, terms


def mi_loss(network: MassNetwork, x: torch.Tensor, extra: torch.Tensor | None,
            bins: torch.Tensor, smoothing_bins: float = 0.0) -> torch.Tensor:
    """Loss of an information ("mi") model: mean cross-entropy of the true bin, nats.

    Shapes: x (N, C, H, W) or (N, F); extra (N, n_extra) or None; bins int64 (N,).
    ``smoothing_bins`` > 0 trains on Gaussian soft labels (:func:`soft_bin_targets`); the
    pointwise information is still measured with the hard true-bin cross-entropy.
    """
    logits = network(x, extra)["logits"]
    _check_bins(bins, logits.shape[1], logits.shape[0])
    return _bin_cross_entropy(logits, bins, smoothing_bins)


__all__ = [
    "LossWeights",
    "cross_entropy_terms",
    "latent_contrast",
    "mi_loss",
    "output_agreement",
    "reconstruction",
    "rms_distance",
    "scl_loss",
    "soft_bin_targets",
]
