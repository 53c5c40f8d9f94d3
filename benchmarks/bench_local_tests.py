"""Benchmark of the local causal tests with B permutations per galaxy.

Baseline (measured in the same run, same B): the straightforward approach of the paper's
reference code extended to B permutations: a Python loop over galaxies and, for each, over
permutations, shuffling the query with ``rng.permutation`` and recomputing r (``np.corrcoef``)
and PE (``np.polyfit``) on the galaxy's neighbours. Contender: the vectorised kernel
``local_test_statistics`` on blocks of galaxies. Both compute the unconditional and the
conditional tests.

    python benchmarks/bench_local_tests.py            # about a minute
    python benchmarks/bench_local_tests.py --quick    # seconds
    python benchmarks/bench_local_tests.py --full     # adds 10^6 galaxies x k=100, B=100 on Ray

``--full`` streams 10^6 galaxies through ``run_local_tests`` (2 actors, blocks of 2,000 galaxies)
and reports galaxies/s and peak memory of the driver and of each actor.
"""

from __future__ import annotations

import argparse
import os
import resource
import threading
import time
import warnings
from pathlib import Path

import numpy as np

from galpipe.causal import block_rng, local_test_statistics, run_local_tests


def _neighbourhoods(n_galaxies: int, k: int, seed: int) -> tuple[np.ndarray, ...]:
    """(mass, query, condition) (G, K) with a few NaNs: mass depends on query and condition."""
    rng = np.random.default_rng(seed)
    condition = rng.normal(size=(n_galaxies, k))
    query = 0.5 * condition + rng.uniform(0.2, 1.0, size=(n_galaxies, k))
    mass = rng.normal(10, 0.5, size=(n_galaxies, 1)) + 0.05 * query + 0.2 * condition
    mass += rng.normal(scale=0.2, size=(n_galaxies, k))
    query[rng.random(query.shape) < 0.02] = np.nan
    return mass, query, condition


def _correlation(mass: np.ndarray, query: np.ndarray) -> float:
    return float(np.corrcoef(mass, query)[0, 1])


def _efficiency(mass: np.ndarray, query: np.ndarray) -> float:
    residual = mass - np.polyval(np.polyfit(query, mass, 2), query)
    return float(1.0 - residual.var() / mass.var())


def _shuffle_loop(mass: np.ndarray, query: np.ndarray, n_permutations: int,
                  rng: np.random.Generator) -> tuple[float, float, float, float]:
    """r, its p-value, PE, its p-value for one galaxy by shuffling in a Python loop."""
    r, pe = _correlation(mass, query), _efficiency(mass, query)
    r_hits = pe_hits = 0
    for _ in range(n_permutations):
        shuffled = rng.permutation(query)
        r_hits += abs(_correlation(mass, shuffled)) >= abs(r)
        pe_hits += _efficiency(mass, shuffled) >= pe
    scale = n_permutations + 1
    return r, (1 + r_hits) / scale, pe, (1 + pe_hits) / scale


def baseline(mass: np.ndarray, query: np.ndarray, condition: np.ndarray, n_permutations: int,
             seed: int) -> dict[str, np.ndarray]:
    """Per-galaxy, per-permutation Python loop (the baseline); unconditional and conditional."""
    rng = np.random.default_rng(seed)
    results = []
    for g in range(mass.shape[0]):
        valid = np.isfinite(mass[g]) & np.isfinite(query[g]) & np.isfinite(condition[g])
        m, x, c = mass[g, valid], query[g, valid], condition[g, valid]
        unconditional = _shuffle_loop(m, x, n_permutations, rng)
        m_res = m - np.polyval(np.polyfit(c, m, 2), c)
        x_res = x - np.polyval(np.polyfit(c, x, 2), c)
        results.append(unconditional + _shuffle_loop(m_res, x_res, n_permutations, rng))
    names = ("r", "r_pvalue", "pe", "pe_pvalue",
             "r_cond", "r_cond_pvalue", "pe_cond", "pe_cond_pvalue")
    return {name: np.array([row[i] for row in results]) for i, name in enumerate(names)}


def vectorised(mass: np.ndarray, query: np.ndarray, condition: np.ndarray, n_permutations: int,
               seed: int, block_size: int) -> dict[str, np.ndarray]:
    """The kernel over blocks of ``block_size`` galaxies, concatenated."""
    parts = [
        local_test_statistics(mass[i:i + block_size], query[i:i + block_size],
                              condition[i:i + block_size], n_permutations=n_permutations,
                              rng=block_rng(seed, i // block_size))
        for i in range(0, mass.shape[0], block_size)
    ]
    return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}


def _peak_mb() -> float:
    """Peak resident memory of this process, in MB (ru_maxrss is in KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class _ActorMemory(threading.Thread):
    """Samples the peak RSS (VmHWM) of Ray worker processes running LocalTestBlockWorker."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peaks_mb: dict[int, float] = {}
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.wait(0.5):
            for process in Path("/proc").glob("[0-9]*"):
                try:
                    command = (process / "cmdline").read_bytes().decode(errors="ignore")
                    text = (process / "status").read_text() if "ray::LocalTest" in command else ""
                except OSError:
                    continue
                for line in text.splitlines():
                    if line.startswith("VmHWM:"):
                        self.peaks_mb[int(process.name)] = int(line.split()[1]) / 1024

    def stop(self) -> None:
        self._stop_event.set()
        self.join()


def full_run(n_galaxies: int, k: int, n_permutations: int, block_size: int,
             n_train: int = 400_000) -> tuple[float, float, dict[int, float]]:
    """Stream ``n_galaxies`` through run_local_tests on Ray; (galaxies/s, seconds, actor MB)."""
    import ray

    for name, value in (("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0"), ("RAY_AUTH_MODE", "disabled"),
                        ("RAY_USAGE_STATS_ENABLED", "0")):
        os.environ.setdefault(name, value)
    ray.init(num_cpus=2, object_store_memory=256 * 1024**2, include_dashboard=False,
             log_to_driver=False)
    rng = np.random.default_rng(0)
    train_ids = np.arange(n_train, dtype=np.int64) * 3 + 17
    train_condition = rng.normal(size=n_train)
    train_query = 0.5 * train_condition + rng.uniform(0.2, 1.0, size=n_train)
    train_mass = 10 + 0.3 * train_query + rng.normal(scale=0.3, size=n_train)

    def blocks():
        block_rng_ = np.random.default_rng(1)
        for start in range(0, n_galaxies, block_size):
            size = min(block_size, n_galaxies - start)
            yield (np.arange(start, start + size, dtype=np.int64),
                   train_ids[block_rng_.integers(0, n_train, size=(size, k))])

    monitor = _ActorMemory()
    monitor.start()
    started = time.perf_counter()
    n_rows = 0
    for batch in run_local_tests(blocks(), train_ids, train_mass, train_query, train_condition,
                                 run_id="bench", model="bench", query_name="query",
                                 condition_name="condition", n_permutations=n_permutations,
                                 num_actors=2, max_in_flight=4):
        n_rows += batch.num_rows
    elapsed = time.perf_counter() - started
    monitor.stop()
    ray.shutdown()
    assert n_rows == n_galaxies
    return n_galaxies / elapsed, elapsed, monitor.peaks_mb


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, a few seconds")
    parser.add_argument("--full", action="store_true",
                        help="also 10^6 galaxies x k=100, B=100 through run_local_tests on Ray")
    parser.add_argument("--full-galaxies", type=int, default=1_000_000)
    args = parser.parse_args()
    warnings.simplefilter("ignore", np.exceptions.RankWarning)

    k, n_permutations = 100, 100
    n_baseline, n_vectorised = (20, 2_000) if args.quick else (200, 20_000)
    mass, query, condition = _neighbourhoods(n_vectorised, k, seed=0)
    print(f"local tests, k={k}, B={n_permutations}, unconditional + conditional")

    started = time.perf_counter()
    slow = baseline(mass[:n_baseline], query[:n_baseline], condition[:n_baseline],
                    n_permutations, seed=1)
    baseline_rate = n_baseline / (time.perf_counter() - started)
    print(f"baseline (per-galaxy shuffle loop): {n_baseline} galaxies, "
          f"{baseline_rate:,.1f} galaxies/s")

    started = time.perf_counter()
    fast = vectorised(mass, query, condition, n_permutations, seed=1, block_size=2_000)
    vectorised_rate = n_vectorised / (time.perf_counter() - started)
    print(f"vectorised kernel: {n_vectorised} galaxies in blocks of 2,000, "
          f"{vectorised_rate:,.0f} galaxies/s (one process)")

    for name in ("r", "pe", "r_cond", "pe_cond"):
        gap = np.max(np.abs(fast[name][:n_baseline] - slow[name]))
        print(f"  {name}: max |vectorised - baseline| = {gap:.1e} over {n_baseline} galaxies")
    p_gap = np.mean(np.abs(fast["r_cond_pvalue"][:n_baseline] - slow["r_cond_pvalue"]))
    print(f"  r_cond_pvalue: mean {np.mean(slow['r_cond_pvalue']):.2f}, mean |vectorised - "
          f"baseline| = {p_gap:.3f}")
    print("  (independent permutations, so p-values differ by Monte Carlo noise only)")
    ratio = vectorised_rate / baseline_rate
    print(f"speed-up over the baseline: {ratio:,.0f}x")
    peak_mb = _peak_mb()
    print(f"peak memory (driver, ru_maxrss): {peak_mb:,.0f} MB")
    galaxies_per_s = vectorised_rate

    if args.full:
        n_full = args.full_galaxies
        rate, elapsed, actor_mb = full_run(n_full, k, n_permutations, block_size=2_000)
        print(f"run_local_tests on Ray, 2 actors: {n_full:,} galaxies x k={k}, "
              f"B={n_permutations} in {elapsed:,.0f} s: {rate:,.0f} galaxies/s")
        print(f"peak memory: driver {_peak_mb():,.0f} MB, actors "
              + ", ".join(f"{mb:,.0f} MB" for mb in actor_mb.values()))
        peak_mb = _peak_mb() + sum(actor_mb.values())
        galaxies_per_s = rate

    print(f"BENCH local_tests ratio={ratio:.0f} peak_mb={peak_mb:.0f} "
          f"galaxies_per_s={galaxies_per_s:.0f}")


if __name__ == "__main__":
    main()
