"""Training with Ray Train: resume after a crash, idempotent reruns, MLflow and S3 storage."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from galpipe.config import ModelSpec, from_dict
from galpipe.storage import Storage
from test_pipeline_data import synthetic_survey

pytestmark = pytest.mark.timeout(600)


def tiny_config(**training) -> "Config":  # noqa: F821
    """Two feature sets over the synthetic survey, 52 mass bins, a few small steps."""
    schedule = {"steps": 8, "batch_size": 16, "checkpoint_every": 4, "validate_every": 4,
                "log_every": 2, "learning_rate": 3e-3, "seed": 0}
    schedule.update(training)
    return from_dict({
        "bins": {"low": 6.0, "high": 12.5, "n_bins": 52},
        "feature_sets": {"optical": {"columns": ["mag_b", "mag_v"], "extra": ["pixel_scale"]},
                         "gri": {"bands": ["g", "r", "i"], "extra": ["pixel_scale"]}},
        "imodels": ["optical", "gri"],
        "training": schedule,
        "tracking": {"experiment": "galpipe-tests"},
    })


def test_torch_symmetries_match_the_numpy_augmentation():
    from galpipe.data.preprocess import apply_dihedral
    from galpipe.train.inputs import dihedral

    images = np.random.default_rng(0).normal(size=(16, 2, 5, 5)).astype(np.float32)
    codes = np.arange(16) % 8
    expected = apply_dihedral(images, codes % 4, codes >= 4)
    got = dihedral(torch.from_numpy(images), torch.from_numpy(codes)).numpy()
    np.testing.assert_array_equal(got, expected)
    assert not np.array_equal(got[1:8], images[1:8])


def test_learning_rate_drops_after_its_share_of_the_steps():
    from galpipe.train.loop import learning_rate

    rates = [learning_rate(step, 30, 1e-3, 1 / 3, 5.0) for step in range(1, 31)]
    assert rates[:10] == [1e-3] * 10 and rates[10:] == [2e-4] * 20


@pytest.fixture(scope="module")
def s3_uri_module(s3_server):
    import uuid

    return f"s3://galpipe/test-train-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def resumed_run(ray_local, s3_uri_module, mlflow_server):
    """An image contrastive model on SeaweedFS storage, tracked by a real MLflow server, whose
    first run crashes right after its step-3 checkpoint and whose second run resumes."""
    from galpipe.train import train_model

    storage = Storage(s3_uri_module)
    survey = synthetic_survey(storage, n=100, pixel_kind="colour_uint8", seed=2)
    config = tiny_config(steps=6, checkpoint_every=3, validate_every=3)
    spec = ModelSpec("scl:gri", "gri", "scl")
    kwargs = {"galaxies_key": survey["key"], "cutouts_key": survey["key"], "key": "s3run",
              "run_id": "test-run", "tracking_uri": mlflow_server.tracking_uri}
    with pytest.raises(Exception, match="simulated crash") as crash:
        train_model(config, spec, storage, fail_at_step=3, **kwargs)
    crashed_with_model = storage.exists("models/scl_gri/s3run/model.pt")
    result = train_model(config, spec, storage, **kwargs)
    return {"storage": storage, "survey": survey, "spec": spec, "result": result,
            "config": config, "kwargs": kwargs, "crash": crash.value,
            "crashed_with_model": crashed_with_model}


def test_killed_run_resumes_from_its_checkpoint(resumed_run):
    storage, spec, result = resumed_run["storage"], resumed_run["spec"], resumed_run["result"]
    assert "simulated crash after step 3" in str(resumed_run["crash"])
    assert not resumed_run["crashed_with_model"]
    assert result.resumed_from_step == 3
    assert result.steps == 6
    assert np.isfinite(result.validation_cross_entropy)
    survey = resumed_run["survey"]
    assert result.n_train == np.sum((survey["split"] == "train") & survey["with_cutout"])


def test_rerun_with_the_same_key_returns_the_artifact_without_training(resumed_run):
    from galpipe.train import train_model

    started = time.perf_counter()
    again = train_model(resumed_run["config"], resumed_run["spec"], resumed_run["storage"],
                        **resumed_run["kwargs"])
    assert again == resumed_run["result"]
    assert time.perf_counter() - started < 5


def test_mlflow_run_holds_params_metrics_and_the_model(resumed_run, mlflow_server, tmp_path):
    from mlflow.tracking import MlflowClient

    storage, result = resumed_run["storage"], resumed_run["result"]
    client = MlflowClient(tracking_uri=mlflow_server.tracking_uri)
    run = client.get_run(result.mlflow_run_id)
    assert run.data.params["training.steps"] == "6"
    assert run.data.params["model"] == "scl:gri"
    assert run.data.tags["galpipe.run_id"] == "test-run"
    # Step 2 was logged before the crash, steps 4 and 6 after resuming, into the same run.
    losses = client.get_metric_history(result.mlflow_run_id, "train_loss")
    assert sorted(m.step for m in losses) == [2, 4, 6]
    validation = client.get_metric_history(result.mlflow_run_id, "validation_cross_entropy")
    assert sorted(m.step for m in validation) == [3, 6]
    assert max(validation, key=lambda m: m.step).value == pytest.approx(
        result.validation_cross_entropy)
    assert run.data.metrics["prior_entropy"] == pytest.approx(result.prior_entropy)
    assert run.info.status == "FINISHED"

    local = client.download_artifacts(result.mlflow_run_id, "model/model.pt", str(tmp_path))
    with open(local, "rb") as handle:
        assert handle.read() == storage.read_bytes(result.model_uri)


def test_s3_storage_holds_checkpoints_and_a_loadable_model(resumed_run):
    from galpipe.train import load_model

    storage, spec, result = resumed_run["storage"], resumed_run["spec"], resumed_run["result"]
    survey = resumed_run["survey"]
    assert storage.is_s3
    for step in (3, 6):
        assert storage.exists(f"checkpoints/{spec.slug}-s3run/checkpoint-{step:08d}/state.pt")
    assert result.model_uri == "models/scl_gri/s3run/model.pt"

    model = load_model(storage, result.model_uri)
    assert model.network.training_kind == "scl" and not model.network.training
    n = 5
    raw = {"galaxy_id": survey["galaxy_id"][:n], "stellar_mass": survey["stellar_mass"][:n],
           "pixel_scale": survey["pixel_scale"][:n], "image": survey["images"][:n]}
    batch = model.preprocess(raw)
    prediction = model.predict(batch)
    assert prediction["latent_s"].shape == (n, 16) and prediction["latent_s"].dtype == np.float32
    assert prediction["log_probs"].shape == (n, 52)
    np.testing.assert_allclose(np.exp(prediction["log_probs"]).sum(axis=1), 1.0, rtol=1e-5)
    # Preprocessing is deterministic at inference: the same galaxies give the same S.
    np.testing.assert_array_equal(model.predict(model.preprocess(raw))["latent_s"],
                                  prediction["latent_s"])
