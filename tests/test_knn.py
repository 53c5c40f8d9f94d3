"""Exact KNN in the latent space S: kernel, reference loop, shard merge and the Ray actor pool."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from galpipe.contracts import validate
from galpipe.neighbours.knn import (
    ExactKnnIndex,
    knn_block,
    knn_ray,
    knn_reference_loop,
    merge_topk,
)


def brute_force(query_ids, queries, index_ids, vectors, k, exclude_self):
    """Full float64 distance matrix, then a sort by (distance, id) of every row."""
    diff = queries.astype(np.float64)[:, None, :] - vectors.astype(np.float64)[None, :, :]
    dist = np.sqrt((diff**2).sum(axis=2))
    if exclude_self:
        dist[query_ids[:, None] == index_ids[None, :]] = np.inf
    ids = np.broadcast_to(index_ids, dist.shape)
    order = np.lexsort((ids, dist), axis=1)[:, :k]
    return np.take_along_axis(ids, order, axis=1), np.take_along_axis(dist, order, axis=1)


def tied_data(rng, n_index=600, dim=4):
    """Integer coordinates (exact distances, many exact ties) plus duplicated vectors."""
    vectors = rng.integers(-2, 3, size=(n_index, dim)).astype(np.float32)
    vectors[n_index // 2 :] = vectors[: n_index - n_index // 2]
    index_ids = rng.permutation(10 * n_index)[:n_index].astype(np.int64)
    return index_ids, vectors


@pytest.mark.parametrize("exclude_self", [True, False])
@pytest.mark.parametrize("budget_mb", [0.01, 128.0])
def test_knn_block_equals_brute_force_with_ties_and_duplicates(exclude_self, budget_mb):
    rng = np.random.default_rng(7)
    index_ids, vectors = tied_data(rng)
    # Half the queries are index galaxies, half are new galaxies with fresh ids.
    query_ids = np.concatenate([index_ids[:40], np.arange(10**6, 10**6 + 40)])
    queries = np.concatenate([vectors[:40], rng.integers(-2, 3, (40, 4)).astype(np.float32)])

    got_ids, got_dist = knn_block(
        query_ids, queries, index_ids, vectors, 25, exclude_self, memory_budget_mb=budget_mb
    )
    want_ids, want_dist = brute_force(query_ids, queries, index_ids, vectors, 25, exclude_self)

    np.testing.assert_array_equal(got_ids, want_ids)
    np.testing.assert_allclose(got_dist, want_dist, rtol=1e-6)
    assert got_ids.dtype == np.int64 and got_dist.dtype == np.float32


def test_knn_block_equals_brute_force_on_continuous_data_far_from_origin():
    # A large common offset makes the float32 BLAS identity lose most digits to cancellation;
    # the rounding bound must still keep every true neighbour among the candidates.
    rng = np.random.default_rng(3)
    vectors = (rng.standard_normal((1500, 16)) * 0.05 + 300.0).astype(np.float32)
    index_ids = np.arange(1500, dtype=np.int64)
    query_ids, queries = index_ids[::10], vectors[::10]

    got_ids, got_dist = knn_block(query_ids, queries, index_ids, vectors, 100, True)
    want_ids, want_dist = brute_force(query_ids, queries, index_ids, vectors, 100, True)

    np.testing.assert_array_equal(got_ids, want_ids)
    np.testing.assert_allclose(got_dist, want_dist, rtol=1e-6)


def test_ties_go_to_the_smaller_id_and_self_is_dropped_but_its_twin_kept():
    vectors = np.array([[0, 0], [1, 0], [0, 1], [-1, 0], [0, 0]], dtype=np.float32)
    index_ids = np.array([50, 7, 3, 5, 9])
    query_ids = np.array([50])

    ids, dist = knn_block(query_ids, vectors[:1], index_ids, vectors, 4, exclude_self=True)
    np.testing.assert_array_equal(ids, [[9, 3, 5, 7]])
    np.testing.assert_allclose(dist, [[0, 1, 1, 1]])

    ids, _ = knn_block(query_ids, vectors[:1], index_ids, vectors, 4, exclude_self=False)
    np.testing.assert_array_equal(ids, [[9, 50, 3, 5]])


def test_k_up_to_2000_under_a_small_memory_budget():
    rng = np.random.default_rng(13)
    vectors = rng.standard_normal((2100, 8)).astype(np.float32)
    index_ids = rng.permutation(2100).astype(np.int64)
    query_ids, queries = index_ids[:30], vectors[:30]

    got_ids, got_dist = knn_block(
        query_ids, queries, index_ids, vectors, 2000, memory_budget_mb=1.0
    )
    want_ids, want_dist = brute_force(query_ids, queries, index_ids, vectors, 2000, True)

    np.testing.assert_array_equal(got_ids, want_ids)
    np.testing.assert_allclose(got_dist, want_dist, rtol=1e-6)


def test_results_do_not_depend_on_chunking():
    rng = np.random.default_rng(11)
    vectors = rng.standard_normal((2000, 8)).astype(np.float32)
    index_ids = np.arange(2000, dtype=np.int64) * 3
    query_ids, queries = index_ids[:300], vectors[:300]

    small = knn_block(query_ids, queries, index_ids, vectors, 50, memory_budget_mb=0.05)
    large = knn_block(query_ids, queries, index_ids, vectors, 50, memory_budget_mb=512)
    pieces = [
        knn_block(query_ids[s:s + 37], queries[s:s + 37], index_ids, vectors, 50)
        for s in range(0, 300, 37)
    ]

    assert ExactKnnIndex(index_ids, vectors, memory_budget_mb=0.05).rows_per_chunk(50) < 10
    for other in (large, tuple(np.concatenate(p) for p in zip(*pieces))):
        np.testing.assert_array_equal(small[0], other[0])
        np.testing.assert_array_equal(small[1], other[1])


def test_reference_loop_equals_kernel():
    rng = np.random.default_rng(5)
    index_ids, vectors = tied_data(rng, n_index=300)
    query_ids, queries = index_ids[:50], vectors[:50]

    loop = knn_reference_loop(query_ids, queries, index_ids, vectors, 30, True)
    kernel = knn_block(query_ids, queries, index_ids, vectors, 30, True)

    np.testing.assert_array_equal(loop[0], kernel[0])
    np.testing.assert_allclose(loop[1], kernel[1], rtol=1e-6)


def test_merge_of_two_index_shards_equals_search_of_the_whole_index():
    rng = np.random.default_rng(9)
    index_ids, vectors = tied_data(rng, n_index=400)
    query_ids, queries = index_ids[:60], vectors[:60]
    shard = rng.permutation(400) < 200
    k = 20

    whole = ExactKnnIndex(index_ids, vectors).search(query_ids, queries, k)
    part_a = ExactKnnIndex(index_ids[shard], vectors[shard]).search(query_ids, queries, k)
    part_b = ExactKnnIndex(index_ids[~shard], vectors[~shard]).search(query_ids, queries, k)
    merged = merge_topk(*part_a, *part_b, k)

    np.testing.assert_array_equal(merged[0], whole[0])
    np.testing.assert_array_equal(merged[1], whole[1])


def test_bad_inputs_raise_with_an_actionable_message():
    vectors = np.zeros((5, 2), dtype=np.float32)
    ids = np.arange(5)
    with pytest.raises(ValueError, match="exceeds the 4 index galaxies"):
        knn_block(ids[:1], vectors[:1], ids, vectors, 5, exclude_self=True)
    assert knn_block(ids[:1] + 100, vectors[:1], ids, vectors, 5)[0].shape == (1, 5)
    with pytest.raises(ValueError, match="repeated galaxy ids"):
        knn_block(ids[:1], vectors[:1], np.array([0, 1, 1, 2, 3]), vectors, 2)
    bad = vectors.copy()
    bad[3, 1] = np.nan
    with pytest.raises(ValueError, match=r"non-finite values .*ids \[3\]"):
        knn_block(ids[:1], vectors[:1], ids, bad, 2)
    with pytest.raises(ValueError, match="3 latent dims but the index has 2"):
        knn_block(ids[:1], np.zeros((1, 3), np.float32), ids, vectors, 2)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("num_actors,block_size", [(1, 64), (2, 17), (3, 100)])
def test_knn_ray_equals_knn_block_in_input_order(ray_local, num_actors, block_size):
    rng = np.random.default_rng(21)
    index_ids, vectors = tied_data(rng, n_index=500)
    query_ids = np.concatenate([index_ids[::3], np.arange(-50, 0)])
    queries = np.concatenate([vectors[::3], rng.integers(-2, 3, (50, 4)).astype(np.float32)])
    blocks = (
        (query_ids[s:s + block_size], queries[s:s + block_size])
        for s in range(0, len(query_ids), block_size)
    )

    batches = list(
        knn_ray(
            blocks, index_ids, vectors, k=12, run_id="run-1", model="scl_images",
            num_actors=num_actors, max_in_flight=3,
        )
    )
    table = pa.Table.from_batches(batches)
    want_ids, want_dist = knn_block(query_ids, queries, index_ids, vectors, 12)

    validate(table, "neighbours")
    assert table.column_names[0] == "run_id"
    assert [b.num_rows for b in batches][0] == min(block_size, len(query_ids))
    np.testing.assert_array_equal(table["galaxy_id"].to_numpy(), query_ids)
    got_ids = table["neighbour_ids"].combine_chunks().values.to_numpy().reshape(-1, 12)
    got_dist = table["distances"].combine_chunks().values.to_numpy().reshape(-1, 12)
    np.testing.assert_array_equal(got_ids, want_ids)
    np.testing.assert_array_equal(got_dist, want_dist)
    assert set(table["k"].to_pylist()) == {12}
    assert set(table["model"].to_pylist()) == {"scl_images"}
