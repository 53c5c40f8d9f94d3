"""Training throughput through Ray Data + Ray Train against a plain PyTorch loop.

Both train the same image information model (``ArchitectureConfig.small``, gri 64 x 64
cutouts, batch 64, Adam) on one worker with the same number of torch threads. The plain loop
iterates preprocessed tensors already in memory; the Ray path reads the cutouts from Parquet,
looks up their catalogue rows, preprocesses and augments them in Ray Data and trains in a Ray
Train worker (:func:`galpipe.train.train_model`). Throughput is measured after the first step of
each (start-up excluded). The plain loop runs before and after the Ray run and its mean is the
baseline, so that load changes on a shared machine affect both sides alike. Ray starts its
workers at nice 15 by default, which on a machine shared with other users' nice-0 processes
starves the training worker (measured here: ratio 0.42 at nice 15); this benchmark therefore
starts Ray with ``RAY_worker_niceness=0``, the priority of the baseline (``--nice 15`` restores
Ray's default).

Wall-clock throughput on a machine shared with other users mostly measures their load, so the
benchmark also reports ``cpu_ratio``: galaxies per CPU second of the training process (its data
iterator threads included, Ray Data's own processes not) against the plain loop's.

Usage: ``python benchmarks/bench_train.py [--quick] [--galaxies N] [--steps N]``. Ends with
``BENCH train ratio=<ray/plain> peak_mb=<max RSS> galaxies_per_s=<ray> cpu_ratio=<x>``.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

for name, value in (("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0"), ("RAY_AUTH_MODE", "disabled"),
                    ("RAY_USAGE_STATS_ENABLED", "0"), ("RAY_DATA_DISABLE_PROGRESS_BARS", "1"),
                    ("MLFLOW_DISABLE_TELEMETRY", "true")):
    os.environ.setdefault(name, value)
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import torch  # noqa: E402

from galpipe.config import ModelSpec, from_dict  # noqa: E402
from galpipe.contracts import load_contract  # noqa: E402
from galpipe.storage import Provenance, Storage  # noqa: E402

BATCH = 64
SIZE = 64


def write_survey(storage: Storage, n: int, seed: int = 0) -> str:
    """A survey of ``n`` galaxies with gri uint8 cutouts whose brightness follows the mass."""
    rng = np.random.default_rng(seed)
    galaxy_id = rng.permutation(n).astype(np.int64) + 1
    split = np.array(["train", "validation", "test"])[rng.choice(3, n, p=[0.7, 0.15, 0.15])]
    stellar_mass = rng.uniform(8.0, 11.5, n)
    galaxies = pa.table({
        "galaxy_id": galaxy_id, "name": [f"G{i}" for i in galaxy_id],
        "ra": rng.uniform(0, 360, n), "dec": rng.uniform(-30, 60, n),
        "redshift": rng.uniform(0.001, 0.05, n), "stellar_mass": stellar_mass,
        "stellar_mass_source": ["mock"] * n, "class": ["spiral"] * n, "split": split,
        "pixel_scale": rng.uniform(0.5, 3.0, n),
    })
    provenance = Provenance(run_id="bench", config_hash="bench")
    storage.write_table("galaxies", galaxies, key="bench", provenance=provenance)

    yy, xx = np.mgrid[:SIZE, :SIZE] - (SIZE - 1) / 2
    blob = np.exp(-(yy**2 + xx**2) / 60.0)
    contract = load_contract("cutouts")
    metadata = dict(zip((k.encode() for k in contract.metadata_keys),
                        (b"g,r,i", f"3,{SIZE},{SIZE}".encode(), b"colour_uint8")))
    schema = pa.schema([pa.field("galaxy_id", pa.int64(), nullable=False),
                        pa.field("image", pa.list_(pa.uint8(), 3 * SIZE * SIZE),
                                 nullable=False)], metadata=metadata)

    def batches():
        for start in range(0, n, 256):
            ids = galaxy_id[start:start + 256]
            amplitude = (stellar_mass[start:start + 256] - 7.0) * 40
            images = amplitude[:, None, None, None] * blob * np.ones((3, 1, 1))
            images = images + rng.normal(0, 8, (len(ids), 3, SIZE, SIZE)) + 20
            pixels = np.clip(images, 0, 255).astype(np.uint8).reshape(-1)
            yield pa.RecordBatch.from_arrays(
                [pa.array(ids), pa.FixedSizeListArray.from_arrays(pa.array(pixels),
                                                                  3 * SIZE * SIZE)],
                schema=schema)

    storage.write_table("cutouts", batches(), key="bench", provenance=provenance)
    return "bench"


def plain_loop(network_args: dict, images: torch.Tensor, extra: torch.Tensor,
               bins: torch.Tensor, steps: int, threads: int) -> tuple[float, float]:
    """(galaxies per wall second, galaxies per CPU second of this process) of a plain PyTorch
    loop over in-memory tensors, after its first step."""
    from galpipe.models import build_network, mi_loss

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    network = build_network(**network_args)
    optimizer = torch.optim.Adam(network.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(0)
    start = None
    for step in range(steps):
        order = torch.randint(0, images.shape[0], (BATCH,), generator=generator)
        optimizer.zero_grad(set_to_none=True)
        loss = mi_loss(network, images[order], extra[order], bins[order])
        loss.backward()
        optimizer.step()
        if step == 0:
            start, cpu_start = time.perf_counter(), time.process_time()
    galaxies = (steps - 1) * BATCH
    return (galaxies / (time.perf_counter() - start),
            galaxies / (time.process_time() - cpu_start))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (about a minute)")
    parser.add_argument("--galaxies", type=int, default=None)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per trainer")
    parser.add_argument("--nice", type=int, default=0, help="niceness of Ray's workers")
    args = parser.parse_args()
    os.environ["RAY_worker_niceness"] = str(args.nice)
    n = args.galaxies or (400 if args.quick else 1200)
    steps = args.steps or (25 if args.quick else 150)

    import ray

    from galpipe.data.pipeline import fit_preprocessor, galaxy_dataset
    from galpipe.train import train_model
    from galpipe.train.inputs import network_arguments, network_inputs

    ray.init(num_cpus=2, object_store_memory=512 * 1024**2, include_dashboard=False,
             log_to_driver=False)
    storage = Storage(tempfile.mkdtemp(prefix="bench-train-"))
    key = write_survey(storage, n)
    config = from_dict({
        "feature_sets": {"gri": {"bands": ["g", "r", "i"], "extra": ["pixel_scale"]}},
        "imodels": [],
        "training": {"steps": steps, "batch_size": BATCH, "checkpoint_every": steps,
                     "validate_every": steps, "log_every": steps, "num_workers": 1,
                     "cpus_per_worker": float(args.threads), "architecture": "small"},
    })
    spec = ModelSpec("mi:gri", "gri", "mi")

    # In-memory tensors for the baseline, preprocessed by the same kernels (no augmentation).
    feature_set = config.feature_set("gri")
    preprocessor = fit_preprocessor(storage, key, feature_set, key)
    rows = galaxy_dataset(storage, key, key, feature_set, config.bins, preprocessor,
                          splits=("train",), training=False, seed=0, require_mass=True)
    batch = {k: np.concatenate(v) for k, v in
             _columns(rows.iter_batches(batch_size=None, batch_format="numpy")).items()}
    images, extra = network_inputs(batch, "image", 3)
    bins = torch.from_numpy(batch["bin"])
    network_args = network_arguments(preprocessor, "mi", "small", config.bins.n_bins)

    before = plain_loop(network_args, images, extra, bins, steps, args.threads)
    started = time.perf_counter()
    result = train_model(config, spec, storage, galaxies_key=key, cutouts_key=key, key="bench",
                         run_id="bench", tracking_uri=None)
    wall = time.perf_counter() - started
    after = plain_loop(network_args, images, extra, bins, steps, args.threads)
    baseline = 0.5 * (before[0] + after[0])
    ratio = result.galaxies_per_second / baseline

    from galpipe.train import load_model

    metrics = load_model(storage, result.model_uri).metrics
    worker_peak = metrics.get("worker_peak_mb", 0.0)
    driver_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    peak = max(driver_peak, worker_peak)
    print(f"galaxies: {n} ({result.n_train} training), steps: {steps}, batch: {BATCH}, "
          f"torch threads: {args.threads}, Ray worker niceness: {args.nice}")
    print(f"plain PyTorch, in-memory tensors: {before[0]:.1f} / {after[0]:.1f} galaxies/s "
          f"(before / after)")
    # Per CPU second of the training process: insensitive to other users' load, but blind to
    # the CPU that Ray Data spends in its own processes.
    ray_cpu = (steps - 1) * BATCH / metrics["train_cpu_seconds"]
    cpu_ratio = ray_cpu / (0.5 * (before[1] + after[1]))
    print(f"Ray Data + Ray Train (1 worker):  {result.galaxies_per_second:.1f} galaxies/s; "
          f"whole train_model call {wall:.1f} s")
    print(f"  of which waiting for data: {metrics['data_wait_seconds']:.1f} s of "
          f"{metrics['train_loop_seconds']:.1f} s in the loop")
    print(f"  per CPU second of the trainer process: Ray {ray_cpu:.1f}, plain "
          f"{0.5 * (before[1] + after[1]):.1f} galaxies (ratio {cpu_ratio:.3f})")
    print(f"peak RSS: driver {driver_peak:.0f} MB, training worker {worker_peak:.0f} MB")
    ray.shutdown()
    print(f"BENCH train ratio={ratio:.3f} peak_mb={peak:.0f} "
          f"galaxies_per_s={result.galaxies_per_second:.1f} cpu_ratio={cpu_ratio:.3f}")


def _columns(batches) -> dict[str, list[np.ndarray]]:
    columns: dict[str, list[np.ndarray]] = {}
    for batch in batches:
        for name, values in batch.items():
            columns.setdefault(name, []).append(values)
    return columns


if __name__ == "__main__":
    main()
