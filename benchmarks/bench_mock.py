"""Benchmark: peak memory and speed of generating and writing the mock survey.

Generates the mock at a small and a large size and writes both tables with
``pyarrow.parquet.ParquetWriter`` (one row group per chunk). Each size runs in a fresh child
process so that its peak resident memory (``ru_maxrss``, minus the child's resident memory
after imports) is its own. Memory flat in the number of galaxies means ratio ~ 1.

    python benchmarks/bench_mock.py            # 10^4 vs 10^5 galaxies, written to a temp dir
    python benchmarks/bench_mock.py --quick    # 10^3 vs 10^4
    python benchmarks/bench_mock.py --full     # 10^5 vs 10^6, bytes encoded then discarded

A 64 x 64 x 5 float32 mock holds 82 kB of pixels per galaxy (82 GB at 10^6), more than the
disk of a development machine, so ``--full`` (or ``--discard``) encodes and compresses every
row group exactly as a file write would, but sends the bytes to a sink that only counts them.

Ends with ``BENCH mock ratio=<peak large / peak small> peak_mb=<large> galaxies_per_s=<large>``.
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


class _CountingSink:
    """A write-only file object that counts bytes and keeps none of them."""

    def __init__(self) -> None:
        self.bytes_written = 0
        self.closed = False

    def write(self, data) -> int:
        self.bytes_written += len(data)
        return len(data)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True

    def writable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.bytes_written


def _run(n: int, chunk_size: int, image_size: int, discard: bool, folder: str) -> dict:
    """Child process: generate and write n galaxies; report time, peak RSS growth and bytes."""
    import resource

    import pyarrow as pa
    import pyarrow.parquet as pq

    from galpipe.ingest.mock import mock_survey

    # Warm the imports and the distance grid so the baseline holds everything but the data.
    for _ in mock_survey(2, seed=0, chunk_size=2, image_size=image_size):
        pass
    baseline_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    start = time.perf_counter()
    writers: dict[str, pq.ParquetWriter] = {}
    sinks = {}
    for galaxies, cutouts in mock_survey(n, seed=1, chunk_size=chunk_size,
                                         image_size=image_size):
        for name, batch in (("galaxies", galaxies), ("cutouts", cutouts)):
            if name not in writers:
                target = (pa.PythonFile(_CountingSink(), mode="w") if discard
                          else str(Path(folder) / f"{name}.parquet"))
                sinks[name] = target
                writers[name] = pq.ParquetWriter(target, batch.schema, compression="zstd")
            writers[name].write_batch(batch, row_group_size=batch.num_rows)
        # Release this chunk before the generator renders the next one.
        del galaxies, cutouts, batch
    for writer in writers.values():
        writer.close()
    seconds = time.perf_counter() - start

    if discard:
        written = sum(s.tell() for s in sinks.values())
    else:
        written = sum((Path(folder) / f"{k}.parquet").stat().st_size for k in writers)
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"n": n, "seconds": seconds, "peak_mb": (peak_kb - baseline_kb) / 1024,
            "rss_mb": peak_kb / 1024, "written_gb": written / 1e9}


def _measure(n: int, args: argparse.Namespace) -> dict:
    context = multiprocessing.get_context("spawn")
    with tempfile.TemporaryDirectory(prefix="bench_mock_") as folder:
        with context.Pool(1) as pool:
            result = pool.apply(_run, (n, args.chunk_size, args.image_size, args.discard, folder))
    print(f"n={result['n']:>8d}  {result['seconds']:8.1f} s  "
          f"{result['n'] / result['seconds']:8.0f} galaxies/s  peak growth "
          f"{result['peak_mb']:7.0f} MB (RSS {result['rss_mb']:.0f} MB)  "
          f"written {result['written_gb']:.2f} GB", flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10^3 vs 10^4 galaxies")
    parser.add_argument("--full", action="store_true", help="10^5 vs 10^6 galaxies (discarded)")
    parser.add_argument("--discard", action="store_true", help="count bytes, write no files")
    parser.add_argument("--chunk-size", type=int, default=None,
                        help="galaxies per chunk (default: a fifth of the small size, at most "
                             "10,000, so both sizes run several chunks)")
    parser.add_argument("--image-size", type=int, default=64)
    args = parser.parse_args()
    if args.quick:
        small, large = 1_000, 10_000
    elif args.full:
        small, large = 100_000, 1_000_000
        args.discard = True
    else:
        small, large = 10_000, 100_000
    # The first chunk runs before the Parquet writer has allocated its buffers, so a run of
    # one chunk under-reports the steady state: give the small size several chunks.
    args.chunk_size = args.chunk_size or min(10_000, small // 5)
    print(f"mock survey: {small} vs {large} galaxies, chunk {args.chunk_size}, "
          f"{args.image_size}x{args.image_size} px, "
          f"{'discarding sink' if args.discard else 'Parquet files in a temp dir'}", flush=True)

    baseline = _measure(small, args)
    scaled = _measure(large, args)
    ratio = scaled["peak_mb"] / max(baseline["peak_mb"], 1.0)
    rate = scaled["n"] / scaled["seconds"]
    print(f"time per galaxy: {1e3 * scaled['seconds'] / scaled['n']:.2f} ms at n={large} vs "
          f"{1e3 * baseline['seconds'] / baseline['n']:.2f} ms at n={small}")
    print(f"BENCH mock ratio={ratio:.2f} peak_mb={scaled['peak_mb']:.0f} "
          f"galaxies_per_s={rate:.0f}")


if __name__ == "__main__":
    main()
