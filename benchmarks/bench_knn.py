"""Benchmark exact KNN in S: Ray actor pool vs one process vs the per-galaxy reference loop.

All three search the same random latent vectors in the same run:

* single: one process, the index built once, :meth:`ExactKnnIndex.search` over the same query
  blocks and chunking as the actors use, run twice: BLAS threads on every core (numpy's
  default) and one BLAS thread (threadpoolctl); the faster is the baseline of ``ratio``;
* ray: :func:`knn_ray` with 2 actors of one BLAS thread each, end to end (index put into the
  object store, actors started, every block searched); "warm" excludes the pool's start-up;
* loop: :func:`knn_reference_loop` (one numpy distance vector and a sort per galaxy) on a
  subsample, its rate extrapolated.

Results of ray and single are compared block by block. Peak memory: the driver's peak resident
set (ru_maxrss over the whole run, and the high-water mark of each phase where Linux lets us
reset it) and each actor's ru_maxrss.

    python benchmarks/bench_knn.py            # 10^5 x 16 index, 2x10^4 queries, k=100
    python benchmarks/bench_knn.py --quick    # small, for a smoke test
    python benchmarks/bench_knn.py --full     # 4x10^5 x 16 index; 10^5 and 10^6 queries

Ends with ``BENCH knn ratio=<ray/single> peak_mb=<driver> vs_loop=<ray/loop> queries_per_s=<ray>``.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from galpipe.neighbours.knn import (  # noqa: E402
    ExactKnnIndex,
    KnnActorPool,
    knn_reference_loop,
    peak_rss_mb,
)

DIM = 16
BLOCK = 1024
SEED = 20250923


def query_blocks(n_queries: int, n_index: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Query blocks made on the fly (seeded per block), so the driver never holds them all."""
    for start in range(0, n_queries, BLOCK):
        size = min(BLOCK, n_queries - start)
        rng = np.random.default_rng((SEED, start))
        ids = np.arange(start, start + size, dtype=np.int64)
        # Every other block queries training galaxies themselves (self-exclusion in play).
        if (start // BLOCK) % 2 == 0:
            ids = ids % n_index
        vectors = rng.standard_normal((size, DIM)).astype(np.float32)
        yield ids, vectors


def make_index(n_index: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(SEED)
    return np.arange(n_index, dtype=np.int64), rng.standard_normal((n_index, DIM)).astype(
        np.float32
    )


#: Largest driver high-water mark seen before any reset, MiB (a reset also lowers ru_maxrss).
_DRIVER_PEAK_MB = [0.0]


def reset_peak() -> bool:
    """Reset the kernel's resident-set high-water mark of this process (Linux only)."""
    _DRIVER_PEAK_MB[0] = max(_DRIVER_PEAK_MB[0], peak_rss_mb())
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def phase_peak_mb() -> float:
    """High-water mark of resident memory since the last reset (VmHWM), MiB; NaN if unknown."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def digest(ids: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(ids).tobytes()).hexdigest()


def run_single(
    index: ExactKnnIndex, n_queries: int, k: int, blas_threads: int | None
) -> tuple[float, list[str], float]:
    """One process over every block; ``blas_threads`` caps BLAS threads (None: library default)."""
    if blas_threads is not None:
        from threadpoolctl import threadpool_limits

        with threadpool_limits(limits=blas_threads, user_api="blas"):
            return run_single(index, n_queries, k, None)
    reset_peak()
    started = time.perf_counter()
    digests = []
    for ids, vectors in query_blocks(n_queries, index.size):
        neighbour_ids, _ = index.search(ids, vectors, k, exclude_self=True)
        digests.append(digest(neighbour_ids))
    return time.perf_counter() - started, digests, phase_peak_mb()


def run_ray(
    index_ids: np.ndarray,
    vectors: np.ndarray,
    n_queries: int,
    k: int,
    num_actors: int,
) -> dict[str, object]:
    reset_peak()
    started = time.perf_counter()
    pool = KnnActorPool(
        index_ids, vectors, k=k, run_id="bench", model="random", num_actors=num_actors
    )
    try:
        digests = []
        first_block_at = None
        for batch in pool.map(query_blocks(n_queries, len(index_ids)), max_in_flight=4):
            if first_block_at is None:
                first_block_at = time.perf_counter()
            ids = batch.column("neighbour_ids").values.to_numpy().reshape(-1, k)
            digests.append(digest(ids))
        elapsed = time.perf_counter() - started
        # Warm throughput: the blocks after the first, timed from the first one's arrival.
        warm_rate = (n_queries - min(BLOCK, n_queries)) / max(
            time.perf_counter() - first_block_at, 1e-9
        )
        actor_peaks = pool.peak_rss_mb()
    finally:
        pool.close()
    return {
        "seconds": elapsed,
        "digests": digests,
        "warm_rate": warm_rate,
        "driver_peak_mb": phase_peak_mb(),
        "actor_peaks_mb": actor_peaks,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="small sizes (smoke test)")
    size.add_argument("--full", action="store_true", help="4e5 index; 1e5 and 1e6 queries")
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--actors", type=int, default=2)
    args = parser.parse_args()

    if args.quick:
        n_index, query_sizes, n_loop = 20_000, [4_096], 50
    elif args.full:
        n_index, query_sizes, n_loop = 400_000, [100_000, 1_000_000], 40
    else:
        n_index, query_sizes, n_loop = 100_000, [20_480], 100

    for name, value in {
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
        "RAY_AUTH_MODE": "disabled",
        "RAY_USAGE_STATS_ENABLED": "0",
    }.items():
        os.environ.setdefault(name, value)
    import ray

    cores = os.cpu_count() or 2
    ray.init(
        num_cpus=cores,
        object_store_memory=512 * 1024**2,
        include_dashboard=False,
        log_to_driver=False,
    )
    print(f"index {n_index} x {DIM} float32, k={args.k}, blocks of {BLOCK}, {cores} cores")

    index_ids, vectors = make_index(n_index)
    index = ExactKnnIndex(index_ids, vectors)
    print(f"query rows per chunk {index.rows_per_chunk(args.k)} (128 MiB budget)")

    loop_ids, loop_vectors = next(query_blocks(n_loop, n_index))
    started = time.perf_counter()
    loop_result = knn_reference_loop(
        loop_ids[:n_loop], loop_vectors[:n_loop], index_ids, vectors, args.k
    )
    loop_rate = n_loop / (time.perf_counter() - started)
    kernel_result = index.search(loop_ids[:n_loop], loop_vectors[:n_loop], args.k)
    assert np.array_equal(loop_result[0], kernel_result[0]), "loop and kernel disagree"
    print(f"loop      {loop_rate:10.1f} queries/s  (on {n_loop} queries, extrapolated)")

    summary = {}
    for n_queries in query_sizes:
        # One process is timed only where it finishes in reasonable time (not at 10^6 queries).
        # Both ways of running one process on the same cores: BLAS threads on every core
        # (numpy's default) and one BLAS thread; the faster one is the baseline.
        single = None
        if n_queries <= 200_000:
            # At --full sizes only the one-thread run (the faster on a shared 2-core machine).
            configs = (("single1", 1),) if args.full else (("single", None), ("single1", 1))
            for label, threads in configs:
                single_s, single_digests, single_peak = run_single(
                    index, n_queries, args.k, threads
                )
                rate = n_queries / single_s
                single = max(single or 0.0, rate)
                print(
                    f"[{n_queries:>8} queries] {label:7s}{rate:10.1f} queries/s  "
                    f"{single_s:7.1f} s  driver phase peak {single_peak:7.0f} MiB"
                )
        result = run_ray(index_ids, vectors, n_queries, args.k, args.actors)
        rate = n_queries / result["seconds"]
        print(
            f"[{n_queries:>8} queries] ray    {rate:10.1f} queries/s  "
            f"{result['seconds']:7.1f} s  warm {result['warm_rate']:.1f} queries/s  "
            f"driver phase peak {result['driver_peak_mb']:.0f} MiB  actors "
            + ", ".join(f"{p:.0f}" for p in result["actor_peaks_mb"])
            + " MiB"
        )
        if single is not None:
            assert result["digests"] == single_digests, "ray and single-process results differ"
            print(
                f"[{n_queries:>8} queries] ray/single {rate / single:.2f} "
                f"(warm {result['warm_rate'] / single:.2f}); identical neighbours: yes"
            )
        if not summary or single is not None:
            summary = {
                "ratio": rate / single if single else float("nan"),
                "ratio_warm": result["warm_rate"] / single if single else float("nan"),
                "vs_loop": rate / loop_rate,
                "queries_per_s": rate,
                "actor_peak_mb": max(result["actor_peaks_mb"]),
            }

    ray.shutdown()
    driver_peak = max(_DRIVER_PEAK_MB[0], peak_rss_mb())
    print(
        f"BENCH knn ratio={summary['ratio']:.2f} peak_mb={driver_peak:.0f} "
        f"vs_loop={summary['vs_loop']:.1f} queries_per_s={summary['queries_per_s']:.0f} "
        f"ratio_warm={summary['ratio_warm']:.2f} actor_peak_mb={summary['actor_peak_mb']:.0f}"
    )


if __name__ == "__main__":
    main()
