"""GPU checks: CUDA training through Ray Train, GPU inference throughput, GPU exact KNN.

On a machine with CUDA (about 2-3 minutes on one H200):

1. training: :func:`galpipe.train.train_model` with ``use_gpu`` and mixed precision (NCCL
   backend, torch.autocast float16 + GradScaler) on a synthetic gri survey; checks that the
   worker really ran on CUDA with mixed precision and that the validation cross-entropy is
   finite;
2. inference: :meth:`TrainedModel.predict` throughput on the GPU against the CPU, and the two
   give the same S up to float32 rounding (inference runs in float32, without autocast);
3. KNN: exact k nearest neighbours by ``torch.cdist`` + ``topk`` on the GPU (float32, blocks of
   queries) against an exact float64 numpy brute force on a subsample of queries: the same
   neighbour ids (up to distance ties) and distances.

Without CUDA it prints that no GPU is present and exits 0. Exit status 1 when a check fails.
Usage: ``python benchmarks/gpu_check.py [--quick]``.
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
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402


def check_training(n: int, steps: int) -> tuple[object, object, dict]:
    """Train an image MI model on the GPU; return (storage, result, metrics)."""
    from bench_train import write_survey

    from galpipe.config import ModelSpec, from_dict
    from galpipe.storage import Storage
    from galpipe.train import load_model, train_model

    storage = Storage(tempfile.mkdtemp(prefix="gpu-check-"))
    key = write_survey(storage, n)
    config = from_dict({
        "feature_sets": {"gri": {"bands": ["g", "r", "i"], "extra": ["pixel_scale"]}},
        "imodels": [],
        "training": {"steps": steps, "batch_size": 128, "checkpoint_every": steps,
                     "validate_every": steps, "log_every": 10, "num_workers": 1,
                     "use_gpu": True, "mixed_precision": True, "cpus_per_worker": 4.0,
                     "architecture": "paper"},
    })
    result = train_model(config, ModelSpec("mi:gri", "gri", "mi"), storage, galaxies_key=key,
                         cutouts_key=key, key="gpu", run_id="gpu-check", tracking_uri=None)
    metrics = load_model(storage, result.model_uri).metrics
    return storage, result, metrics


def check_inference(storage, model_uri: str, n: int) -> tuple[float, float, float]:
    """(GPU galaxies/s, CPU galaxies/s, max |S_gpu - S_cpu|) of predict on n galaxies."""
    from galpipe.train import load_model

    gpu, cpu = load_model(storage, model_uri, "cuda"), load_model(storage, model_uri, "cpu")
    c, h, w = gpu.preprocessor.image_shape
    rng = np.random.default_rng(0)
    batch = {"image": rng.normal(size=(n, c, h, w)).astype(np.float32),
             "features": rng.normal(size=(n, gpu.preprocessor.n_features)).astype(np.float32)}

    def throughput(model, rows: int, chunk: int) -> tuple[float, np.ndarray]:
        latents = []
        model.predict({k: v[:chunk] for k, v in batch.items()})  # warm-up (kernels, caches)
        if model.device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for first in range(0, rows, chunk):
            part = {k: v[first:first + chunk] for k, v in batch.items()}
            latents.append(model.predict(part)["latent_s"])
        return rows / (time.perf_counter() - start), np.concatenate(latents)

    gpu_rate, gpu_s = throughput(gpu, n, 2048)
    cpu_rows = min(n, 1024)
    cpu_rate, cpu_s = throughput(cpu, cpu_rows, 256)
    return gpu_rate, cpu_rate, float(np.abs(gpu_s[:cpu_rows] - cpu_s).max())


def gpu_knn(index: torch.Tensor, queries: torch.Tensor, k: int,
            block: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact k nearest neighbours (Euclidean) by blocks of queries: (distances, ids)."""
    distances, ids = [], []
    for first in range(0, queries.shape[0], block):
        d = torch.cdist(queries[first:first + block], index)
        top = torch.topk(d, k, dim=1, largest=False, sorted=True)
        distances.append(top.values)
        ids.append(top.indices)
    return torch.cat(distances), torch.cat(ids)


def numpy_knn(index: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact float64 brute force, one query at a time (the slow, obvious reference)."""
    distances = np.empty((len(queries), k))
    ids = np.empty((len(queries), k), dtype=np.int64)
    for i, query in enumerate(queries):
        d = np.sqrt(((index - query) ** 2).sum(axis=1))
        order = np.argsort(d, kind="stable")[:k]
        distances[i], ids[i] = d[order], order
    return distances, ids


def check_knn(n_index: int, n_queries: int, k: int, n_reference: int) -> tuple[float, float]:
    """(GPU queries/s, share of neighbour ids equal to the exact reference)."""
    rng = np.random.default_rng(1)
    index = rng.normal(size=(n_index, 16)).astype(np.float32)
    queries = rng.normal(size=(n_queries, 16)).astype(np.float32)
    index_gpu, queries_gpu = torch.from_numpy(index).cuda(), torch.from_numpy(queries).cuda()
    gpu_knn(index_gpu, queries_gpu[:256], k)
    torch.cuda.synchronize()
    start = time.perf_counter()
    distances, ids = gpu_knn(index_gpu, queries_gpu, k)
    torch.cuda.synchronize()
    rate = n_queries / (time.perf_counter() - start)

    chosen = rng.choice(n_queries, n_reference, replace=False)
    ref_d, ref_ids = numpy_knn(index.astype(np.float64), queries[chosen].astype(np.float64), k)
    got_d, got_ids = distances[chosen].cpu().numpy(), ids[chosen].cpu().numpy()
    np.testing.assert_allclose(got_d, ref_d, rtol=1e-4, atol=1e-4)
    # Ids may differ only where two candidates lie within float32 rounding of each other: the
    # exact distance of the id returned at each rank must then equal the reference distance.
    differ = got_ids != ref_ids
    exact = np.sqrt(((index.astype(np.float64)[got_ids]
                      - queries[chosen].astype(np.float64)[:, None]) ** 2).sum(-1))
    tie = np.isclose(exact, ref_d, rtol=1e-5, atol=1e-6)
    if np.any(differ & ~tie):
        raise AssertionError(f"{int((differ & ~tie).sum())} neighbour ids differ from the exact "
                             "reference beyond distance ties")
    return rate, float(1.0 - differ.mean())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("no GPU present (torch.cuda.is_available() is False): GPU checks skipped")
        return 0

    import ray

    sizes = {"galaxies": 1500, "steps": 60, "infer": 20_000, "index": 200_000,
             "queries": 50_000, "reference": 200}
    if args.quick:
        sizes.update(galaxies=600, steps=20, infer=5_000, index=50_000, queries=10_000,
                     reference=50)
    print(f"GPU: {torch.cuda.get_device_name(0)}; sizes {sizes}")
    ray.init(num_cpus=min(8, os.cpu_count() or 2), num_gpus=1,
             object_store_memory=2 * 1024**3, include_dashboard=False, log_to_driver=False)
    failures = []

    started = time.perf_counter()
    storage, result, metrics = check_training(sizes["galaxies"], sizes["steps"])
    print(f"training: {result.steps} steps in {time.perf_counter() - started:.1f} s, "
          f"{result.galaxies_per_second:.0f} galaxies/s, validation CE "
          f"{result.validation_cross_entropy:.3f} nats (prior {result.prior_entropy:.3f}), "
          f"cuda={metrics.get('cuda')}, mixed_precision={metrics.get('mixed_precision')}")
    if metrics.get("cuda") != 1.0 or metrics.get("mixed_precision") != 1.0:
        failures.append("training did not run on CUDA with mixed precision")
    if not np.isfinite(result.validation_cross_entropy):
        failures.append("validation cross-entropy is not finite")

    gpu_rate, cpu_rate, gap = check_inference(storage, result.model_uri, sizes["infer"])
    print(f"inference: GPU {gpu_rate:.0f} galaxies/s, CPU {cpu_rate:.0f} galaxies/s "
          f"(x{gpu_rate / cpu_rate:.1f}); max |S_gpu - S_cpu| = {gap:.2e}")
    if gap > 1e-2:
        failures.append(f"GPU and CPU latents differ by {gap}")

    try:
        knn_rate, agree = check_knn(sizes["index"], sizes["queries"], 100, sizes["reference"])
        print(f"KNN: {knn_rate:.0f} queries/s against {sizes['index']} x 16 (k=100); "
              f"{agree:.4%} of ids equal to exact numpy, the rest distance ties")
    except AssertionError as exc:
        failures.append(f"KNN: {exc}")

    ray.shutdown()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS {peak:.0f} MB, GPU peak {torch.cuda.max_memory_allocated() / 2**20:.0f} MB")
    for failure in failures:
        print(f"FAILED: {failure}")
    print("GPU checks passed" if not failures else f"{len(failures)} GPU check(s) failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
