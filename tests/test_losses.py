"""Loss terms of the mass networks against hand computations on tiny tensors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from galpipe.models import (
    ArchitectureConfig,
    LossWeights,
    build_network,
    cross_entropy_terms,
    latent_contrast,
    mi_loss,
    output_agreement,
    reconstruction,
    scl_loss,
)

torch.set_num_threads(1)


def _log_softmax_rows(logits: np.ndarray) -> np.ndarray:
    """Row-wise log softmax written out with a loop over galaxies."""
    out = np.empty_like(logits, dtype=np.float64)
    for i, row in enumerate(logits.astype(np.float64)):
        total = sum(math.exp(v) for v in row)
        out[i] = [v - math.log(total) for v in row]
    return out


def _hand_cross_entropy(views: list[np.ndarray], bins: np.ndarray) -> float:
    total = 0.0
    for logits in views:
        log_p = _log_softmax_rows(logits)
        total += -sum(log_p[i, b] for i, b in enumerate(bins)) / len(bins)
    return total


def _hand_agreement(views: list[np.ndarray]) -> float:
    log_ps = [_log_softmax_rows(v) for v in views]
    total = 0.0
    for a, log_pa in enumerate(log_ps):
        for b, log_pb in enumerate(log_ps):
            if a == b:
                continue
            per_galaxy = []
            for i in range(log_pa.shape[0]):
                per_galaxy.append(-sum(math.exp(log_pb[i, k]) * log_pa[i, k]
                                       for k in range(log_pa.shape[1])))
            total += sum(per_galaxy) / len(per_galaxy)
    return total


def _rms(u: np.ndarray, v: np.ndarray) -> float:
    return math.sqrt(sum((x - y) ** 2 for x, y in zip(u, v)) / len(u))


def _hand_contrast(positive_pairs: list[tuple[np.ndarray, np.ndarray]], s_a: np.ndarray,
                   s_b: np.ndarray) -> float:
    positive = [_rms(u[i], v[i]) for u, v in positive_pairs for i in range(len(u))]
    negative = [_rms(a, b) for a in s_a for b in s_b]
    p = math.exp(-sum(positive) / len(positive))
    n = math.exp(-sum(negative) / len(negative))
    return -math.log(p / (p + n))


def _hand_mse(pairs: list[tuple[np.ndarray, np.ndarray]]) -> float:
    return sum(float(np.mean((np.asarray(r, np.float64) - t) ** 2)) for r, t in pairs)


def test_cross_entropy_terms_sums_the_mean_cross_entropy_of_every_view():
    rng = np.random.default_rng(1)
    views = [rng.normal(size=(3, 5)).astype(np.float32) for _ in range(3)]
    bins = np.array([0, 4, 2])

    value = cross_entropy_terms([torch.from_numpy(v) for v in views], torch.from_numpy(bins))

    assert value.item() == pytest.approx(_hand_cross_entropy(views, bins), rel=1e-5)


def test_cross_entropy_rejects_missing_mass_bins():
    with pytest.raises(ValueError, match="drop galaxies without a stellar mass"):
        cross_entropy_terms([torch.zeros(2, 4)], torch.tensor([1, -1]))


def test_reconstruction_is_the_sum_of_mean_squared_errors():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(2, 3)).astype(np.float32)
    x1, x2 = x + 0.5, x * 2.0

    value = reconstruction([torch.from_numpy(x1), torch.from_numpy(x2)],
                           [torch.from_numpy(x), torch.from_numpy(x)])

    expected = sum((x1[i, j] - x[i, j]) ** 2 for i in range(2) for j in range(3)) / 6
    expected += sum((x2[i, j] - x[i, j]) ** 2 for i in range(2) for j in range(3)) / 6
    assert value.item() == pytest.approx(float(expected), rel=1e-5)


def test_output_agreement_matches_symmetric_soft_label_cross_entropy():
    rng = np.random.default_rng(3)
    views = [rng.normal(size=(4, 6)).astype(np.float32) for _ in range(3)]

    value = output_agreement([torch.from_numpy(v) for v in views])

    assert value.item() == pytest.approx(_hand_agreement(views), rel=1e-5)


def test_output_agreement_with_detached_targets_pulls_each_view_towards_the_other():
    # With constant targets, d/dl1 of [-p2.log p1 - p1.log p2] is (p1 - p2) / N: only the
    # first ordered pair depends on l1.
    rng = np.random.default_rng(4)
    l1 = torch.tensor(rng.normal(size=(2, 5)), requires_grad=True)
    l2 = torch.tensor(rng.normal(size=(2, 5)), requires_grad=True)

    output_agreement([l1, l2], detach_targets=True).backward()

    p1 = np.exp(_log_softmax_rows(l1.detach().numpy()))
    p2 = np.exp(_log_softmax_rows(l2.detach().numpy()))
    np.testing.assert_allclose(l1.grad.numpy(), (p1 - p2) / 2, atol=1e-10)
    np.testing.assert_allclose(l2.grad.numpy(), (p2 - p1) / 2, atol=1e-10)


def test_output_agreement_without_detach_differs_in_gradient_not_value():
    rng = np.random.default_rng(5)
    raw = [rng.normal(size=(2, 5)) for _ in range(2)]
    grads = []
    for detach in (True, False):
        logits = [torch.tensor(r, requires_grad=True) for r in raw]
        value = output_agreement(logits, detach_targets=detach)
        value.backward()
        grads.append((value.item(), logits[0].grad.numpy().copy()))

    assert grads[0][0] == pytest.approx(grads[1][0])
    assert not np.allclose(grads[0][1], grads[1][1])


def test_latent_contrast_matches_hand_computation_on_built_s_vectors():
    # Sub-batch A: two galaxies, B: one galaxy; S has 2 dimensions.
    s1 = np.array([[0.0, 0.0], [1.0, 1.0], [3.0, -1.0]])
    s2 = np.array([[0.1, 0.0], [1.0, 1.2], [3.0, -1.0]])
    sa = np.array([[0.0, 0.3], [0.9, 1.0], [2.5, -1.0]])
    pairs = [(s1, s2), (s1, sa)]

    value = latent_contrast([(torch.tensor(u), torch.tensor(v)) for u, v in pairs],
                            torch.tensor(s1[:2]), torch.tensor(s1[2:]))

    # Spelled out: positive RMS distances are 0.1, 0.2, 0 (z1 vs z2) and 0.3, 0.1, 0.5
    # (z1 vs za), each divided by sqrt(2); negatives are (g0, g2) = sqrt(5) and (g1, g2) = 2.
    mean_positive = (0.1 + 0.2 + 0.0 + 0.3 + 0.1 + 0.5) / 6 / math.sqrt(2)
    mean_negative = (math.sqrt(5) + 2.0) / 2
    p, n = math.exp(-mean_positive), math.exp(-mean_negative)
    assert value.item() == pytest.approx(-math.log(p / (p + n)), rel=1e-6)
    assert value.item() == pytest.approx(_hand_contrast(pairs, s1[:2], s1[2:]), rel=1e-6)


def test_latent_contrast_gradient_is_finite_for_identical_views():
    s1 = torch.tensor([[1.0, 2.0], [0.0, 0.0]], requires_grad=True)
    s2 = s1.detach().clone()

    latent_contrast([(s1, s2)], s1[:1], s1[1:]).backward()

    assert torch.isfinite(s1.grad).all()


def test_latent_contrast_is_log_two_when_positives_are_as_far_as_negatives():
    s_a = torch.tensor([[0.0, 0.0]])
    s_b = torch.tensor([[2.0, 2.0]])
    pair = (torch.tensor([[0.0, 0.0]]), torch.tensor([[2.0, 2.0]]))

    assert latent_contrast([pair], s_a, s_b).item() == pytest.approx(math.log(2.0), rel=1e-5)


def test_latent_contrast_stays_finite_for_huge_distances():
    # P = exp(-2000) and N = exp(-1000) underflow to 0 in a naive ratio; the loss is
    # log(1 + exp(1000)) = 1000 nats.
    s_a = torch.tensor([[0.0]], dtype=torch.float64)
    s_b = torch.tensor([[1000.0]], dtype=torch.float64)
    pair = (torch.tensor([[0.0]], dtype=torch.float64), torch.tensor([[2000.0]],
                                                                     dtype=torch.float64))

    value = latent_contrast([pair], s_a, s_b)

    assert value.item() == pytest.approx(1000.0, rel=1e-9)


def _tiny_image_arch() -> ArchitectureConfig:
    return ArchitectureConfig.small("image").with_changes(
        image_size=16, decoder_channels=(8, 4), inception_channels=(8, 8), stem_channels=8,
        extra_latent_dim=6, latent_s_dim=4, n_bins=7, estimator_hidden=(8,),
    )


def _tiny_catalogue_arch() -> ArchitectureConfig:
    return ArchitectureConfig.small("catalogue").with_changes(
        latent_s_dim=3, extra_latent_dim=2, n_bins=6, mlp_depth=3, mlp_width=8,
        decoder_depth=2, decoder_width=8, estimator_hidden=(8,),
    )


def _hand_scl_terms(network, x_a, e_a, b_a, x_b, e_b, b_b, aug_a=None, aug_b=None):
    """Run the cycle sub-batch by sub-batch (not concatenated) and evaluate the formulas."""
    with torch.no_grad():
        parts = {}
        for name, x, e, aug in (("a", x_a, e_a, aug_a), ("b", x_b, e_b, aug_b)):
            z1 = network.encode(x, e)
            x1 = network.decode(z1)
            z2 = network.encode(x1, e)
            x2 = network.decode(z2)
            views = [z1, z2]
            recon = [(x1.numpy(), x.numpy()), (x2.numpy(), x.numpy())]
            if aug is not None:
                za = network.encode(aug, e)
                views.append(za)
                recon.append((network.decode(za).numpy(), aug.numpy()))
            parts[name] = (views, recon)

    n_views = len(parts["a"][0])
    joined = [torch.cat([parts["a"][0][v], parts["b"][0][v]]) for v in range(n_views)]
    logits = [network.logits(z).detach().numpy() for z in joined]
    s = [network.latent_s(z).detach().numpy() for z in joined]
    bins = np.concatenate([b_a.numpy(), b_b.numpy()])
    n_a = len(x_a)

    recon_pairs = [(np.concatenate([ra[0], rb[0]]), np.concatenate([ra[1], rb[1]]))
                   for ra, rb in zip(parts["a"][1], parts["b"][1])]
    return {
        "cross_entropy": _hand_cross_entropy(logits, bins),
        "reconstruction": _hand_mse(recon_pairs),
        "agreement": _hand_agreement(logits),
        "contrast": _hand_contrast([(s[0], sv) for sv in s[1:]], s[0][:n_a], s[0][n_a:]),
    }


def test_scl_loss_catalogue_terms_match_hand_cycle_and_total_is_weighted_sum():
    torch.manual_seed(0)
    network = build_network("catalogue", "scl", 5, 2, _tiny_catalogue_arch()).double()
    x_a, x_b = torch.randn(3, 5, dtype=torch.float64), torch.randn(2, 5, dtype=torch.float64)
    e_a, e_b = torch.randn(3, 2, dtype=torch.float64), torch.randn(2, 2, dtype=torch.float64)
    b_a, b_b = torch.tensor([0, 5, 2]), torch.tensor([1, 1])
    weights = LossWeights(cross_entropy=0.7, reconstruction=3.0, agreement=0.2, contrast=5.0)

    total, terms = scl_loss(network, x_a, e_a, b_a, x_b, e_b, b_b, weights=weights)

    expected = _hand_scl_terms(network, x_a, e_a, b_a, x_b, e_b, b_b)
    for name, value in expected.items():
        assert terms[name].item() == pytest.approx(value, rel=1e-8), name
    weighted = (0.7 * expected["cross_entropy"] + 3.0 * expected["reconstruction"]
                + 0.2 * expected["agreement"] + 5.0 * expected["contrast"])
    assert total.item() == pytest.approx(weighted, rel=1e-8)


def test_scl_loss_image_with_augmented_copies_matches_hand_cycle():
    torch.manual_seed(1)
    network = build_network("image", "scl", 2, 1, _tiny_image_arch()).double()
    x = torch.randn(4, 2, 16, 16, dtype=torch.float64)
    aug = torch.rot90(x, 1, dims=(2, 3))
    extra = torch.randn(4, 1, dtype=torch.float64)
    bins = torch.tensor([0, 6, 3, 3])

    total, terms = scl_loss(network, x[:2], extra[:2], bins[:2], x[2:], extra[2:], bins[2:],
                            aug[:2], aug[2:])

    expected = _hand_scl_terms(network, x[:2], extra[:2], bins[:2], x[2:], extra[2:], bins[2:],
                               aug[:2], aug[2:])
    for name, value in expected.items():
        assert terms[name].item() == pytest.approx(value, rel=1e-8), name
    # Default image weights: reconstruction counts 100 times.
    assert total.item() == pytest.approx(
        expected["cross_entropy"] + 100 * expected["reconstruction"] + expected["agreement"]
        + expected["contrast"], rel=1e-8)


@pytest.mark.parametrize("input_kind", ["image", "catalogue"])
def test_scl_loss_gradients_reach_encoder_decoder_and_estimator(input_kind):
    torch.manual_seed(2)
    if input_kind == "image":
        network = build_network("image", "scl", 2, 3, _tiny_image_arch())
        x = torch.randn(4, 2, 16, 16)
        aug_a, aug_b = torch.flip(x[:2], dims=(3,)), torch.flip(x[2:], dims=(3,))
    else:
        network = build_network("catalogue", "scl", 5, 3, _tiny_catalogue_arch())
        x = torch.randn(4, 5)
        aug_a = aug_b = None
    extra = torch.randn(4, 3)
    bins = torch.tensor([0, 1, 2, 3])

    total, _ = scl_loss(network, x[:2], extra[:2], bins[:2], x[2:], extra[2:], bins[2:],
                        aug_a, aug_b)
    total.backward()

    for part in ("encoder", "decoder", "estimator"):
        for name, parameter in getattr(network, part).named_parameters():
            assert parameter.grad is not None, f"{part}.{name} got no gradient"
            assert parameter.grad.abs().sum() > 0, f"{part}.{name} got a zero gradient"


def test_scl_loss_rejects_information_networks_and_lone_augmented_copy():
    mi_network = build_network("catalogue", "mi", 5, 0, _tiny_catalogue_arch())
    x, bins = torch.randn(2, 5), torch.tensor([0, 1])
    with pytest.raises(ValueError, match="training_kind='scl'"):
        scl_loss(mi_network, x, None, bins, x, None, bins)

    scl_network = build_network("catalogue", "scl", 5, 0, _tiny_catalogue_arch())
    with pytest.raises(ValueError, match="both sub-batches"):
        scl_loss(scl_network, x, None, bins, x, None, bins, x_aug_a=x)


def test_mi_loss_is_mean_cross_entropy_of_the_true_bin():
    torch.manual_seed(3)
    network = build_network("catalogue", "mi", 4, 1, _tiny_catalogue_arch()).double()
    x, extra = torch.randn(5, 4, dtype=torch.float64), torch.randn(5, 1, dtype=torch.float64)
    bins = torch.tensor([0, 1, 5, 5, 2])

    value = mi_loss(network, x, extra, bins)

    logits = network(x, extra)["logits"].detach().numpy()
    assert value.item() == pytest.approx(_hand_cross_entropy([logits], bins.numpy()), rel=1e-10)


def test_loss_weights_paper_values_and_round_trip():
    assert LossWeights.for_input("image").reconstruction == 100.0
    assert LossWeights.for_input("catalogue").reconstruction == 1.0
    weights = LossWeights.for_input("image", contrast=0.5, detach_agreement_targets=False)
    assert LossWeights.from_dict(weights.to_dict()) == weights
    with pytest.raises(ValueError, match="unknown loss weight fields"):
        LossWeights.from_dict({"contrastt": 1.0})


def test_soft_bin_targets_are_normalised_gaussians_around_the_true_bin():
    from galpipe.models.losses import soft_bin_targets

    bins = torch.tensor([0, 5, 9])
    targets = soft_bin_targets(bins, 10, 2.0).numpy()
    for row, centre in zip(targets, [0, 5, 9]):
        expected = np.exp(-0.5 * ((np.arange(10) - centre) / 2.0) ** 2)
        np.testing.assert_allclose(row, expected / expected.sum(), rtol=1e-6)


def test_smoothed_cross_entropy_equals_hand_computation_and_zero_width_is_hard():
    from galpipe.models.losses import cross_entropy_terms, soft_bin_targets

    torch.manual_seed(0)
    logits = torch.randn(4, 12)
    bins = torch.tensor([1, 4, 7, 11])
    targets = soft_bin_targets(bins, 12, 1.5)
    log_p = torch.log_softmax(logits, dim=1)
    expected = -(targets * log_p).sum(dim=1).mean()
    assert torch.isclose(cross_entropy_terms([logits], bins, 1.5), expected)
    hard = -log_p[torch.arange(4), bins].mean()
    assert torch.isclose(cross_entropy_terms([logits], bins, 0.0), hard)
