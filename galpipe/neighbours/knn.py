"""Exact k-nearest neighbours in the latent space S, and the Ray edge that maps it over blocks.

For every query galaxy the local causal tests need its k nearest *training* galaxies in S
(Euclidean; paper: k = 100, kept up to 2000). The search here is exact and deterministic:

1. Candidates come from squared distances computed in float32 with the BLAS identity
   ``||q - x||^2 = ||q||^2 - 2 q.x + ||x||^2`` (one matrix product per block of queries).
2. Every index vector whose approximate squared distance lies within a rigorous rounding bound of
   the k-th smallest is kept as a candidate, so the candidates always contain the true k nearest
   (and everything tied with the k-th).
3. Candidates are re-ranked by squared distances recomputed directly in float64, summed over the
   dimensions in a fixed order, and sorted by (distance, neighbour id). Ties are therefore broken
   by the smaller galaxy id, and results do not depend on block sizes or on how many actors ran.

Self-exclusion: with ``exclude_self=True`` (the default) a query whose galaxy id is also in the
index does not get itself as a neighbour, so a training galaxy gets k *other* training galaxies.
Only the entry with the same id is dropped; a different galaxy with an identical vector stays (at
distance 0).

Memory: a block of ``c`` queries against ``N`` index vectors holds about ``10 c N`` bytes
(float32 distances, one partitioned copy and a mask), so queries are processed in chunks of rows
that keep ``c N`` under ``memory_budget_mb``. No query x index float64 matrix is ever built.

Limitation: the index is held whole in every actor (about 26 MB for 4x10^5 x 16 float32). At
10^7 training galaxies (640 MB at d = 16) the index should be sharded across actors as well, each
shard searched with :meth:`ExactKnnIndex.search` (float64 distances) and the partial results
combined with :func:`merge_topk`; the Ray edge here shards only the queries.
"""

from __future__ import annotations

import logging
import resource
import sys
import time
from collections import deque
from collections.abc import Iterable, Iterator

import numpy as np
import pyarrow as pa

logger = logging.getLogger(__name__)

#: Unit roundoff of float32 (round to nearest).
_FLOAT32_UNIT_ROUNDOFF = 2.0**-24
#: Bytes held per (query, index vector) entry of the candidate stage: the float32 approximate
#: distances, one float32 partitioned copy, a bool mask, and slack for temporaries.
_BYTES_PER_ENTRY = 10
#: Safety factor on the float32 rounding bound; a wider margin only adds candidates.
_BOUND_SAFETY = 4.0


def _as_ids(values: np.ndarray, what: str) -> np.ndarray:
    """Galaxy ids as a 1-D int64 array."""
    ids = np.asarray(values)
    if ids.ndim != 1:
        raise ValueError(f"{what} must be a 1-D array of galaxy ids, got shape {ids.shape}")
    if ids.size and not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"{what} must hold integer galaxy ids, got dtype {ids.dtype}")
    return ids.astype(np.int64, copy=False)


def _as_vectors(values: np.ndarray, what: str, ids: np.ndarray) -> np.ndarray:
    """Latent vectors as a C-contiguous (n, d) float32 array with finite entries."""
    vectors = np.asarray(values)
    if vectors.ndim != 2:
        raise ValueError(f"{what} must be a 2-D array (galaxies, latent dims), got {vectors.shape}")
    if vectors.shape[0] != ids.shape[0]:
        raise ValueError(
            f"{what} has {vectors.shape[0]} rows but there are {ids.shape[0]} galaxy ids"
        )
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    finite = np.isfinite(vectors).all(axis=1)
    if not finite.all():
        bad = ids[~finite][:5].tolist()
        raise ValueError(
            f"{what} has non-finite values for {int((~finite).sum())} galaxies (ids {bad}...); "
            "latent vectors must be finite"
        )
    return vectors


class ExactKnnIndex:
    """An exact Euclidean KNN index over latent vectors of training galaxies.

    Parameters
    ----------
    index_ids:
        Shape (N,), unique integer galaxy ids of the index (training) galaxies.
    index_vectors:
        Shape (N, d), their latent vectors S (float32; other floats are cast to float32 and the
        distances are those of the float32 values). Kept by reference, never modified, so a
        read-only array from Ray's object store is used without a copy.
    memory_budget_mb:
        Upper bound, in MiB, on the working memory of one search chunk.
    """

    def __init__(
        self,
        index_ids: np.ndarray,
        index_vectors: np.ndarray,
        *,
        memory_budget_mb: float = 128.0,
    ) -> None:
        ids = _as_ids(index_ids, "index_ids")
        vectors = _as_vectors(index_vectors, "index_vectors", ids)
        if ids.size == 0:
            raise ValueError("the KNN index is empty: index_ids has no galaxies")
        if memory_budget_mb <= 0:
            raise ValueError(f"memory_budget_mb must be positive, got {memory_budget_mb}")

        order = np.argsort(ids, kind="stable")
        sorted_ids = ids[order]
        repeated = sorted_ids[1:] == sorted_ids[:-1]
        if repeated.any():
            dup = np.unique(sorted_ids[1:][repeated])[:5].tolist()
            raise ValueError(f"index_ids must be unique; repeated galaxy ids {dup}...")

        self.ids = ids
        self.vectors = vectors
        self.memory_budget_bytes = int(memory_budget_mb * 1024**2)
        self._sorted_ids = sorted_ids
        self._sorted_positions = order
        sq_norms = np.einsum("ij,ij->i", vectors, vectors, dtype=np.float64)
        self._sq_norms32 = sq_norms.astype(np.float32)
        self._max_norm = float(np.sqrt(sq_norms.max()))

    @property
    def size(self) -> int:
        """Number of galaxies in the index."""
        return int(self.ids.shape[0])

    @property
    def dim(self) -> int:
        """Dimension d of the latent vectors."""
        return int(self.vectors.shape[1])

    def self_positions(self, query_ids: np.ndarray) -> np.ndarray:
        """Row of each query galaxy in the index, shape (G,) int64; -1 where it is absent."""
        pos = np.searchsorted(self._sorted_ids, query_ids)
        pos = np.minimum(pos, self.size - 1)
        found = self._sorted_ids[pos] == query_ids
        return np.where(found, self._sorted_positions[pos], -1)

    def max_k(self, query_ids: np.ndarray, exclude_self: bool) -> int:
        """Largest k these queries allow: N, less one if any query is excluded from the index."""
        if exclude_self and (self.self_positions(query_ids) >= 0).any():
            return self.size - 1
        return self.size

    def rows_per_chunk(self, k: int) -> int:
        """Query rows per chunk so that the chunk's working memory stays within the budget."""
        by_index = self.memory_budget_bytes // (_BYTES_PER_ENTRY * self.size)
        # The exact re-ranking holds about 2k candidates per row: float64 vectors and sort keys.
        by_candidates = self.memory_budget_bytes // (2 * k * (16 * self.dim + 64))
        return int(max(1, min(by_index, by_candidates)))

    def search(
        self,
        query_ids: np.ndarray,
        query_vectors: np.ndarray,
        k: int,
        *,
        exclude_self: bool = True,
    ) -> tuple[np.ndarray, np.ndarray]:
        """The k nearest index galaxies of each query, exact, ties broken by smaller id.

        Parameters
        ----------
        query_ids:
            Shape (G,), integer galaxy ids of the queries (used for ``exclude_self``).
        query_vectors:
            Shape (G, d), latent vectors of the queries.
        k:
            Number of neighbours, 1 <= k <= N (N - 1 when a query is in the index and
            ``exclude_self``).
        exclude_self:
            Drop the index entry whose id equals the query's id.

        Returns
        -------
        neighbour_ids:
            Shape (G, k) int64, neighbour galaxy ids ordered by (distance, id).
        distances:
            Shape (G, k) float64, Euclidean distances in S units, non-decreasing along rows.
        """
        qids = _as_ids(query_ids, "query_ids")
        queries = _as_vectors(query_vectors, "query_vectors", qids)
        if queries.shape[1] != self.dim:
            raise ValueError(
                f"query_vectors have {queries.shape[1]} latent dims but the index has {self.dim}"
            )
        k = int(k)
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        limit = self.max_k(qids, exclude_self)
        if k > limit:
            raise ValueError(
                f"k={k} exceeds the {limit} index galaxies available to each query "
                f"(index size {self.size}, exclude_self={exclude_self})"
            )

        n_queries = qids.shape[0]
        neighbour_ids = np.empty((n_queries, k), dtype=np.int64)
        distances = np.empty((n_queries, k), dtype=np.float64)
        step = self.rows_per_chunk(k)
        for start in range(0, n_queries, step):
            stop = min(start + step, n_queries)
            chunk_ids, chunk_dist = self._search_chunk(
                qids[start:stop], queries[start:stop], k, exclude_self
            )
            neighbour_ids[start:stop] = chunk_ids
            distances[start:stop] = chunk_dist
        return neighbour_ids, distances

    def _search_chunk(
        self, qids: np.ndarray, queries: np.ndarray, k: int, exclude_self: bool
    ) -> tuple[np.ndarray, np.ndarray]:
        """Exact search for one chunk of queries small enough for the memory budget."""
        n_rows = qids.shape[0]

        # ||q||^2 is constant along a row, so it is left out: candidate selection is per row.
        # Scaling the queries by -2 is exact in binary floating point.
        approx = (queries * np.float32(-2.0)) @ self.vectors.T
        approx += self._sq_norms32
        if exclude_self:
            self_pos = self.self_positions(qids)
            has_self = np.flatnonzero(self_pos >= 0)
            approx[has_self, self_pos[has_self]] = np.inf

        # Rounding bound of the float32 path: each of the d products, the dot-product sum and
        # the two additions err by at most unit roundoff times (|q| + max|x|)^2.
        query_norms = np.sqrt(np.einsum("ij,ij->i", queries, queries, dtype=np.float64))
        bound = (
            _BOUND_SAFETY
            * (self.dim + 4)
            * _FLOAT32_UNIT_ROUNDOFF
            * (query_norms + self._max_norm) ** 2
        )
        kth = np.partition(approx, k - 1, axis=1)[:, k - 1].astype(np.float64)
        # A true neighbour lies within one bound above the exact k-th distance, which itself lies
        # within one bound of the approximate k-th: two bounds cover every true neighbour.
        threshold = np.nextafter((kth + 2.0 * bound).astype(np.float32), np.float32(np.inf))

        flat = np.flatnonzero(approx <= threshold[:, None])
        del approx
        rows = flat // self.size
        cols = flat - rows * self.size

        # Exact squared distances, summed over dims in a fixed order so that the same pair
        # always gets the same float64 value whatever the chunking.
        gathered = self.vectors[cols].astype(np.float64)
        queries64 = queries.astype(np.float64)
        sq_dist = np.zeros(rows.shape[0], dtype=np.float64)
        for dim in range(self.dim):
            diff = queries64[rows, dim] - gathered[:, dim]
            sq_dist += diff * diff
        cand_ids = self.ids[cols]

        order = np.lexsort((cand_ids, sq_dist, rows))
        counts = np.bincount(rows, minlength=n_rows)
        if (counts < k).any():
            # Cannot happen if the rounding bound holds; fail loudly rather than return wrong ids.
            raise RuntimeError(
                f"KNN candidate selection kept fewer than k={k} candidates for some queries"
            )
        starts = np.cumsum(counts) - counts
        take = order[starts[:, None] + np.arange(k)]
        logger.debug(
            "knn chunk: %d queries, %d candidates (%.1f per query, k=%d)",
            n_rows, rows.shape[0], rows.shape[0] / max(n_rows, 1), k,
        )
        return cand_ids[take], np.sqrt(sq_dist[take])


def knn_block(
    query_ids: np.ndarray,
    query_vectors: np.ndarray,
    index_ids: np.ndarray,
    index_vectors: np.ndarray,
    k: int,
    exclude_self: bool = True,
    *,
    memory_budget_mb: float = 128.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact k nearest index galaxies of a block of query galaxies in the latent space S.

    Parameters
    ----------
    query_ids, query_vectors:
        Shapes (G,) and (G, d): query galaxy ids and latent vectors.
    index_ids, index_vectors:
        Shapes (N,) and (N, d): unique training galaxy ids and their latent vectors.
    k:
        Neighbours per query (paper: 100, up to 2000).
    exclude_self:
        A query that is itself in the index does not count as its own neighbour.
    memory_budget_mb:
        Working memory bound of one chunk of queries, MiB.

    Returns
    -------
    neighbour_ids:
        Shape (G, k) int64, ordered by (distance, id).
    distances:
        Shape (G, k) float32, Euclidean distances in S units.
    """
    index = ExactKnnIndex(index_ids, index_vectors, memory_budget_mb=memory_budget_mb)
    neighbour_ids, distances = index.search(query_ids, query_vectors, k, exclude_self=exclude_self)
    return neighbour_ids, distances.astype(np.float32)


def knn_reference_loop(
    query_ids: np.ndarray,
    query_vectors: np.ndarray,
    index_ids: np.ndarray,
    index_vectors: np.ndarray,
    k: int,
    exclude_self: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-galaxy Python loop: all distances with numpy, then a sort (the reference's approach).

    Same inputs and outputs as :func:`knn_block`; kept as the slow baseline of the benchmark and
    as an independent check in the tests. Distances are computed in float64.
    """
    qids = _as_ids(query_ids, "query_ids")
    ids = _as_ids(index_ids, "index_ids")
    queries = np.asarray(query_vectors, dtype=np.float64)
    vectors = np.asarray(index_vectors, dtype=np.float64)
    neighbour_ids = np.empty((qids.shape[0], k), dtype=np.int64)
    distances = np.empty((qids.shape[0], k), dtype=np.float32)
    for row in range(qids.shape[0]):
        dist = np.sqrt(((vectors - queries[row]) ** 2).sum(axis=1))
        if exclude_self:
            dist[ids == qids[row]] = np.inf
        order = np.lexsort((ids, dist))[:k]
        neighbour_ids[row] = ids[order]
        distances[row] = dist[order]
    return neighbour_ids, distances


def merge_topk(
    ids_a: np.ndarray,
    distances_a: np.ndarray,
    ids_b: np.ndarray,
    distances_b: np.ndarray,
    k: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Merge the neighbour lists of the same queries searched against two disjoint index shards.

    Parameters
    ----------
    ids_a, distances_a:
        Shape (G, ka): neighbours of each query in shard A.
    ids_b, distances_b:
        Shape (G, kb): neighbours of each query in shard B (no id in common with shard A).
    k:
        Neighbours to keep, k <= ka + kb.

    Returns
    -------
    (ids, distances), shape (G, k), ordered by (distance, id) with the input dtypes.

    The merge equals a search of the union index when the distances are the float64 values of
    :meth:`ExactKnnIndex.search`; with float32 distances two neighbours whose float64 distances
    round to the same float32 may come out in id order instead of distance order.
    """
    ids = np.concatenate([ids_a, ids_b], axis=1)
    distances = np.concatenate([distances_a, distances_b], axis=1)
    if not 1 <= k <= ids.shape[1]:
        raise ValueError(f"k={k} must lie in [1, {ids.shape[1]}] (the two shards' neighbours)")
    order = np.lexsort((ids, distances), axis=1)[:, :k]
    return np.take_along_axis(ids, order, axis=1), np.take_along_axis(distances, order, axis=1)


def neighbours_record_batch(
    run_id: str,
    model: str,
    galaxy_ids: np.ndarray,
    neighbour_ids: np.ndarray,
    distances: np.ndarray,
) -> pa.RecordBatch:
    """One record batch of the ``neighbours`` table (schemas/neighbours.yaml).

    ``neighbour_ids`` (G, k) int64 and ``distances`` (G, k) become fixed-size lists of length k.
    """
    n_rows, k = neighbour_ids.shape
    if distances.shape != (n_rows, k) or galaxy_ids.shape != (n_rows,):
        raise ValueError(
            f"neighbour arrays disagree: galaxy_ids {galaxy_ids.shape}, neighbour_ids "
            f"{neighbour_ids.shape}, distances {distances.shape}"
        )
    ids_values = pa.array(np.ascontiguousarray(neighbour_ids, dtype=np.int64).reshape(-1))
    dist_values = pa.array(np.ascontiguousarray(distances, dtype=np.float32).reshape(-1))
    schema = pa.schema(
        [
            pa.field("run_id", pa.string(), nullable=False),
            pa.field("model", pa.string(), nullable=False),
            pa.field("galaxy_id", pa.int64(), nullable=False),
            pa.field("neighbour_ids", pa.list_(pa.int64(), k), nullable=False),
            pa.field("distances", pa.list_(pa.float32(), k), nullable=False),
            pa.field("k", pa.int32(), nullable=False),
        ]
    )
    return pa.RecordBatch.from_arrays(
        [
            pa.array([run_id] * n_rows, type=pa.string()),
            pa.array([model] * n_rows, type=pa.string()),
            pa.array(np.asarray(galaxy_ids, dtype=np.int64)),
            pa.FixedSizeListArray.from_arrays(ids_values, k),
            pa.FixedSizeListArray.from_arrays(dist_values, k),
            pa.array(np.full(n_rows, k, dtype=np.int32)),
        ],
        schema=schema,
    )


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, MiB (ru_maxrss)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports KiB, macOS bytes.
    return peak / 1024**2 if sys.platform == "darwin" else peak / 1024


class _KnnWorker:
    """Body of one KNN actor: holds the index once and answers blocks of queries."""

    def __init__(
        self,
        index_ids: np.ndarray,
        index_vectors: np.ndarray,
        k: int,
        exclude_self: bool,
        run_id: str,
        model: str,
        memory_budget_mb: float,
    ) -> None:
        self._index = ExactKnnIndex(index_ids, index_vectors, memory_budget_mb=memory_budget_mb)
        self._k = k
        self._exclude_self = exclude_self
        self._run_id = run_id
        self._model = model

    def search(self, query_ids: np.ndarray, query_vectors: np.ndarray) -> pa.RecordBatch:
        neighbour_ids, distances = self._index.search(
            query_ids, query_vectors, self._k, exclude_self=self._exclude_self
        )
        return neighbours_record_batch(
            self._run_id, self._model, np.asarray(query_ids), neighbour_ids, distances
        )

    def peak_rss_mb(self) -> float:
        return peak_rss_mb()


def _check_block(block: tuple[np.ndarray, np.ndarray], position: int, dim: int) -> None:
    """Shape checks on one query block, on the driver, so mistakes surface before any actor."""
    try:
        query_ids, query_vectors = block
    except (TypeError, ValueError) as exc:
        raise ValueError(
            f"query block {position} must be a pair (query_ids, query_vectors)"
        ) from exc
    query_ids = np.asarray(query_ids)
    query_vectors = np.asarray(query_vectors)
    if query_ids.ndim != 1 or query_vectors.shape != (query_ids.shape[0], dim):
        raise ValueError(
            f"query block {position}: expected ids (G,) and vectors (G, {dim}), got "
            f"{query_ids.shape} and {query_vectors.shape}"
        )


class KnnActorPool:
    """Ray actors that each hold the training index once and search blocks of queries.

    The index arrays are put into Ray's object store once; every actor maps them without a copy
    (read-only numpy views of shared memory). Ray must already be initialised by the caller.

    Parameters
    ----------
    index_ids, index_vectors:
        Shapes (N,) and (N, d): the training galaxies.
    k, exclude_self:
        As in :func:`knn_block`.
    run_id, model:
        Written into every output row.
    num_actors:
        Actors, each searching a share of the query blocks.
    num_cpus_per_actor:
        Ray CPUs reserved per actor; fractional so that a pool never starves the tasks that
        feed it on a small machine.
    memory_budget_mb:
        Working memory bound per actor search chunk, MiB.
    """

    def __init__(
        self,
        index_ids: np.ndarray,
        index_vectors: np.ndarray,
        *,
        k: int,
        exclude_self: bool = True,
        run_id: str,
        model: str,
        num_actors: int = 2,
        num_cpus_per_actor: float = 0.5,
        memory_budget_mb: float = 128.0,
    ) -> None:
        import ray

        if not ray.is_initialized():
            raise RuntimeError("KnnActorPool needs a running Ray: call ray.init(...) first")
        if num_actors < 1:
            raise ValueError(f"num_actors must be at least 1, got {num_actors}")
        index = ExactKnnIndex(index_ids, index_vectors, memory_budget_mb=memory_budget_mb)
        if not 1 <= k <= index.size:
            raise ValueError(f"k={k} must lie in [1, {index.size}] (the index size)")
        self.dim = index.dim
        ids_ref = ray.put(index.ids)
        vectors_ref = ray.put(index.vectors)
        del index

        actor_class = ray.remote(num_cpus=num_cpus_per_actor)(_KnnWorker)
        self._actors = [
            actor_class.remote(
                ids_ref, vectors_ref, k, exclude_self, run_id, model, memory_budget_mb
            )
            for _ in range(num_actors)
        ]
        logger.info(
            "KNN actor pool: %d actors x %.2f CPU, index %d x %d, k=%d",
            num_actors, num_cpus_per_actor, len(index_ids), self.dim, k,
        )

    def map(
        self,
        query_blocks: Iterable[tuple[np.ndarray, np.ndarray]],
        *,
        max_in_flight: int = 4,
    ) -> Iterator[pa.RecordBatch]:
        """Search every block; yield one ``neighbours`` record batch per block, in input order.

        Blocks go round-robin to the actors; at most ``max_in_flight`` are submitted and not yet
        yielded, which bounds the driver's and the object store's memory.
        """
        import ray

        if max_in_flight < 1:
            raise ValueError(f"max_in_flight must be at least 1, got {max_in_flight}")
        if max_in_flight < len(self._actors):
            logger.warning(
                "max_in_flight=%d < %d actors: some actors will sit idle",
                max_in_flight, len(self._actors),
            )
        pending: deque = deque()
        started = time.perf_counter()
        n_rows = 0
        for position, block in enumerate(query_blocks):
            _check_block(block, position, self.dim)
            actor = self._actors[position % len(self._actors)]
            pending.append(actor.search.remote(*block))
            if len(pending) >= max_in_flight:
                batch = ray.get(pending.popleft())
                n_rows += batch.num_rows
                yield batch
        while pending:
            batch = ray.get(pending.popleft())
            n_rows += batch.num_rows
            yield batch
        logger.info(
            "KNN: %d query galaxies in %.1f s", n_rows, time.perf_counter() - started
        )

    def peak_rss_mb(self) -> list[float]:
        """Peak resident memory of each actor process, MiB."""
        import ray

        return ray.get([actor.peak_rss_mb.remote() for actor in self._actors])

    def close(self) -> None:
        """End the actors (idempotent)."""
        import ray

        for actor in self._actors:
            ray.kill(actor)
        self._actors = []

    def __enter__(self) -> KnnActorPool:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def knn_ray(
    query_blocks: Iterable[tuple[np.ndarray, np.ndarray]],
    index_ids: np.ndarray,
    index_vectors: np.ndarray,
    *,
    k: int,
    exclude_self: bool = True,
    run_id: str,
    model: str,
    num_actors: int = 2,
    max_in_flight: int = 4,
    num_cpus_per_actor: float = 0.5,
    memory_budget_mb: float = 128.0,
) -> Iterator[pa.RecordBatch]:
    """Exact KNN of a stream of query blocks on a pool of Ray actors.

    Parameters
    ----------
    query_blocks:
        Iterable of (query_ids (G,), query_vectors (G, d)); consumed lazily.
    index_ids, index_vectors, k, exclude_self:
        As in :func:`knn_block`.
    run_id, model:
        Written into every row.
    num_actors, num_cpus_per_actor, memory_budget_mb:
        As in :class:`KnnActorPool`.
    max_in_flight:
        Blocks submitted but not yet yielded.

    Returns
    -------
    Iterator of ``neighbours`` record batches (schemas/neighbours.yaml), one per input block, in
    input order. Results equal :func:`knn_block` whatever the number of actors or block sizes.
    The actors are created on the first ``next()`` and ended when the iterator is exhausted or
    closed.
    """
    import ray

    if not ray.is_initialized():
        raise RuntimeError("knn_ray needs a running Ray: call ray.init(...) first")
    if max_in_flight < 1:
        raise ValueError(f"max_in_flight must be at least 1, got {max_in_flight}")
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")

    def stream() -> Iterator[pa.RecordBatch]:
        with KnnActorPool(
            index_ids,
            index_vectors,
            k=k,
            exclude_self=exclude_self,
            run_id=run_id,
            model=model,
            num_actors=num_actors,
            num_cpus_per_actor=num_cpus_per_actor,
            memory_budget_mb=memory_budget_mb,
        ) as pool:
            yield from pool.map(query_blocks, max_in_flight=max_in_flight)

    return stream()
