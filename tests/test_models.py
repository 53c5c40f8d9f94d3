"""Shapes, wiring and configuration of the mass networks."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from galpipe.models import (
    ArchitectureConfig,
    LeakyMLP,
    MassNetwork,
    build_network,
    mi_loss,
    network_from_spec,
)

torch.set_num_threads(1)


def _small_image_arch(**changes) -> ArchitectureConfig:
    """Small profile at 32 x 32 to keep the tests fast; same code paths as 64 x 64."""
    return ArchitectureConfig.small("image").with_changes(image_size=32, **changes)


def test_paper_profiles_carry_the_published_sizes():
    image = ArchitectureConfig.paper("image")
    catalogue = ArchitectureConfig.paper("catalogue")

    assert (image.n_bins, image.latent_s_dim, image.extra_latent_dim) == (520, 16, 512)
    assert (catalogue.latent_s_dim, catalogue.extra_latent_dim) == (8, 8)
    assert (catalogue.mlp_depth, catalogue.mlp_width) == (20, 128)


def test_architecture_round_trips_through_json_and_rejects_unknown_fields():
    arch = ArchitectureConfig.small("image")

    assert ArchitectureConfig.from_dict(json.loads(json.dumps(arch.to_dict()))) == arch
    with pytest.raises(ValueError, match="unknown architecture fields"):
        ArchitectureConfig.from_dict({"kind": "image", "latent_dims": 3})


def test_architecture_rejects_image_size_the_decoder_cannot_reach():
    with pytest.raises(ValueError, match="divisible"):
        ArchitectureConfig.small("image").with_changes(image_size=36)


@pytest.mark.parametrize("n_channels, n_extra", [(1, 0), (5, 0), (3, 4)])
@pytest.mark.parametrize("training_kind", ["scl", "mi"])
def test_image_network_shapes(n_channels, n_extra, training_kind):
    arch = _small_image_arch()
    network = build_network("image", training_kind, n_channels, n_extra, arch)
    x = torch.randn(3, n_channels, 32, 32)
    extra = torch.randn(3, n_extra) if n_extra else None

    out = network(x, extra)

    latent_dim = 16 + 64 if training_kind == "scl" else 16
    assert out["latent"].shape == (3, latent_dim)
    assert out["logits"].shape == (3, 520)
    assert network.latent_s(out["latent"]).shape == (3, 16)
    if training_kind == "scl":
        assert network.decode(out["latent"]).shape == (3, n_channels, 32, 32)
    else:
        with pytest.raises(ValueError, match="no decoder"):
            network.decode(out["latent"])


@pytest.mark.parametrize("n_extra", [0, 2])
@pytest.mark.parametrize("training_kind", ["scl", "mi"])
def test_catalogue_network_shapes(n_extra, training_kind):
    network = build_network("catalogue", training_kind, 7, n_extra)
    x = torch.randn(4, 7)
    extra = torch.randn(4, n_extra) if n_extra else None

    out = network(x, extra)

    assert out["latent"].shape == (4, 16 if training_kind == "scl" else 8)
    assert out["logits"].shape == (4, 520)
    if training_kind == "scl":
        assert network.decode(out["latent"]).shape == (4, 7)


def test_paper_catalogue_encoder_has_twenty_hidden_layers_of_128():
    network = build_network("catalogue", "mi", 7, 1, ArchitectureConfig.paper("catalogue"))
    linears = [m for m in network.encoder.modules() if isinstance(m, torch.nn.Linear)]

    assert [(m.in_features, m.out_features) for m in linears] == (
        [(8, 128)] + [(128, 128)] * 19 + [(128, 8)])


def test_image_network_at_default_64_pixels():
    network = build_network("image", "scl", 3, 1, ArchitectureConfig.small("image"))
    latent = network.encode(torch.randn(2, 3, 64, 64), torch.randn(2, 1))

    assert network.decode(latent).shape == (2, 3, 64, 64)


def test_additional_inputs_add_a_per_channel_bias_after_the_first_convolution():
    torch.manual_seed(0)
    network = build_network("image", "mi", 2, 3, _small_image_arch())
    encoder = network.encoder
    x = torch.randn(2, 2, 32, 32)
    extra = torch.tensor([[1.0, -2.0, 0.5], [0.0, 3.0, 1.0]])

    with torch.no_grad():
        shift = encoder.first_layer(x, extra) - encoder.first_layer(x, torch.zeros_like(extra))

    # The shift is the dense layer without its bias, W @ extra, identical at every pixel.
    weight = encoder.extra_bias.weight.detach().numpy()
    expected = extra.numpy() @ weight.T
    assert shift.shape == (2, 16, 16, 16)
    np.testing.assert_allclose(shift.numpy(), np.broadcast_to(expected[:, :, None, None],
                                                              shift.shape), atol=1e-5)
    assert np.ptp(expected[0]) > 1e-3  # a bias that differs between channels
    with torch.no_grad():
        assert not torch.allclose(network.encode(x, extra), network.encode(x, extra * 0))


def test_encoding_is_independent_of_batch_composition():
    # scl_loss encodes both sub-batches as one batch; that is only valid without batch coupling.
    torch.manual_seed(1)
    network = build_network("image", "scl", 3, 1, _small_image_arch())
    x, extra = torch.randn(5, 3, 32, 32), torch.randn(5, 1)

    with torch.no_grad():
        together = network.encode(x, extra)
        apart = torch.cat([network.encode(x[:2], extra[:2]), network.encode(x[2:], extra[2:])])

    torch.testing.assert_close(together, apart, rtol=1e-5, atol=1e-5)


def test_wrong_input_shapes_raise_readable_errors():
    network = build_network("image", "scl", 3, 2, _small_image_arch())
    with pytest.raises(ValueError, match=r"\(N, 3, 32, 32\)"):
        network.encode(torch.randn(1, 4, 32, 32), torch.randn(1, 2))
    with pytest.raises(ValueError, match="additional inputs of shape"):
        network.encode(torch.randn(1, 3, 32, 32), None)
    with pytest.raises(ValueError, match="reconstructs 32x32"):
        network.encode(torch.randn(1, 3, 64, 64), torch.randn(1, 2))
    with pytest.raises(ValueError, match="architecture is for 'image'"):
        build_network("catalogue", "mi", 3, 0, ArchitectureConfig.small("image"))


def test_network_rebuilt_from_spec_reproduces_outputs():
    network = build_network("catalogue", "scl", 6, 1)
    rebuilt = network_from_spec(json.loads(json.dumps(network.spec())))
    rebuilt.load_state_dict(network.state_dict())
    x, extra = torch.randn(3, 6), torch.randn(3, 1)

    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x, extra)["logits"], network(x, extra)["logits"])
    assert isinstance(rebuilt, MassNetwork)


def test_residual_mlp_matches_its_formula():
    torch.manual_seed(2)
    mlp = LeakyMLP(3, [4, 4, 4], 2, negative_slope=0.2, residual=True).double()
    x = torch.randn(5, 3, dtype=torch.float64)

    def leaky(v):
        return np.where(v > 0, v, 0.2 * v)

    layers = [(m.weight.detach().numpy(), m.bias.detach().numpy()) for m in mlp.hidden]
    h = leaky(x.numpy() @ layers[0][0].T + layers[0][1])
    for w, b in layers[1:]:
        h = h + leaky(h @ w.T + b)
    expected = h @ mlp.output.weight.detach().numpy().T + mlp.output.bias.detach().numpy()

    np.testing.assert_allclose(mlp(x).detach().numpy(), expected, rtol=1e-10)


def test_information_network_learns_a_mass_that_depends_on_its_input():
    # Bin = a deterministic function of the first feature; cross-entropy must fall well below
    # the uniform log(n_bins).
    torch.manual_seed(3)
    arch = ArchitectureConfig.small("catalogue").with_changes(n_bins=10)
    network = build_network("catalogue", "mi", 3, 0, arch)
    x = torch.randn(256, 3)
    bins = torch.clamp(((x[:, 0] + 2.5) * 2).long(), 0, 9)
    optimiser = torch.optim.Adam(network.parameters(), lr=3e-3)

    for _ in range(200):
        loss = mi_loss(network, x, None, bins)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()

    assert mi_loss(network, x, None, bins).item() < 0.3 * np.log(10)
