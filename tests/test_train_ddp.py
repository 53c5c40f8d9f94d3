"""Distributed data parallel training: two gloo workers behave like one worker on the union."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from galpipe.config import ModelSpec
from galpipe.models import ArchitectureConfig, build_network
from galpipe.storage import Storage
from test_pipeline_data import synthetic_survey
from test_train import tiny_config

pytestmark = pytest.mark.timeout(600)

NETWORK = {"input_kind": "catalogue", "training_kind": "mi", "n_inputs": 2, "n_extra": 1,
           "arch": ArchitectureConfig.small("catalogue").with_changes(n_bins=20).to_dict()}


def global_batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """16 galaxies: main features (16, 2), extra inputs (16, 1), bins (16,)."""
    rng = np.random.default_rng(11)
    features = torch.from_numpy(rng.normal(size=(16, 3)).astype(np.float32))
    bins = torch.from_numpy(rng.integers(0, 20, size=16).astype(np.int64))
    return features[:, :2], features[:, 2:], bins


def one_step(objective, x, extra, bins) -> tuple[dict, dict]:
    """One SGD step of the training loop's step function: (gradients, updated weights)."""
    from galpipe.train.loop import train_step

    optimizer = torch.optim.SGD(objective.parameters(), lr=0.1)
    train_step(objective, optimizer, torch.amp.GradScaler("cpu", enabled=False), x, extra, bins)
    network = objective.module.network if hasattr(objective, "module") else objective.network
    grads = {n: p.grad.detach().clone() for n, p in network.named_parameters()}
    weights = {n: p.detach().clone() for n, p in network.named_parameters()}
    return grads, weights


def ddp_worker(config: dict) -> None:
    """Ray Train worker: DDP-wrap the network, step on this rank's half of the global batch."""
    import ray.train
    import ray.train.torch

    from galpipe.train.loop import Objective

    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    torch.manual_seed(0)
    objective = ray.train.torch.prepare_model(Objective(build_network(**config["network"])))
    assert isinstance(objective, torch.nn.parallel.DistributedDataParallel)
    x, extra, bins = global_batch()
    half = slice(rank * 16 // world, (rank + 1) * 16 // world)
    grads, weights = one_step(objective, x[half], extra[half], bins[half])
    torch.save({"grads": grads, "weights": weights}, f"{config['out']}/rank{rank}.pt")


def test_two_gloo_workers_average_gradients_like_one_worker_on_the_whole_batch(ray_local,
                                                                               tmp_path):
    import ray.cloudpickle
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from galpipe.train.loop import Objective

    # The worker function lives in this test module, which Ray workers cannot import by name.
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    TorchTrainer(
        ddp_worker, train_loop_config={"network": NETWORK, "out": str(tmp_path)},
        scaling_config=ScalingConfig(num_workers=2, resources_per_worker={"CPU": 0.5}),
        torch_config=TorchConfig(backend="gloo"),
        run_config=RunConfig(name="ddp-gradients", storage_path=str(tmp_path / "ray")),
    ).fit()

    torch.manual_seed(0)
    x, extra, bins = global_batch()
    whole_grads, whole_weights = one_step(Objective(build_network(**NETWORK)), x, extra, bins)
    torch.manual_seed(0)
    half_grads, _ = one_step(Objective(build_network(**NETWORK)), x[:8], extra[:8], bins[:8])
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]
    for name, expected in whole_grads.items():
        for rank in ranks:
            torch.testing.assert_close(rank["grads"][name], expected, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(rank["weights"][name], whole_weights[name], rtol=1e-5,
                                       atol=1e-6)
    # The check can fail: one worker's own half-batch gradient is not the global one.
    differences = [float((half_grads[n] - whole_grads[n]).abs().max()) for n in whole_grads]
    assert max(differences) > 1e-3


def test_two_worker_training_validates_on_every_galaxy_once(ray_local, tmp_path):
    from galpipe.train import load_model, train_model

    storage = Storage(tmp_path / "store")
    survey = synthetic_survey(storage, n=150, seed=4)
    config = tiny_config(steps=6, batch_size=16, num_workers=2, cpus_per_worker=0.5,
                         validate_every=6, checkpoint_every=6)
    spec = ModelSpec("mi:optical", "optical", "mi")
    result = train_model(config, spec, storage, galaxies_key=survey["key"], cutouts_key=None,
                         key="ddp2", run_id="test-run", tracking_uri=None)
    assert result.steps == 6

    # Recompute the mean validation cross-entropy in this process from the saved model.
    model = load_model(storage, result.model_uri)
    validation = (survey["split"] == "validation") & np.isfinite(survey["stellar_mass"])
    raw = {"galaxy_id": survey["galaxy_id"][validation],
           "stellar_mass": survey["stellar_mass"][validation],
           **{c: survey[c][validation] for c in ("mag_b", "mag_v", "pixel_scale")}}
    batch = model.preprocess(raw)
    log_probs = model.predict(batch)["log_probs"]
    cross_entropy = -log_probs[np.arange(len(batch["bin"])), batch["bin"]].mean()
    assert result.n_validation == validation.sum()
    assert result.validation_cross_entropy == pytest.approx(float(cross_entropy), rel=1e-5)
