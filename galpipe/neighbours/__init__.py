"""Neighbours in the latent space S: exact KNN kernels and their Ray actor pool."""

from galpipe.neighbours.knn import (
    ExactKnnIndex,
    KnnActorPool,
    knn_block,
    knn_ray,
    knn_reference_loop,
    merge_topk,
    neighbours_record_batch,
)

__all__ = [
    "ExactKnnIndex",
    "KnnActorPool",
    "knn_block",
    "knn_ray",
    "knn_reference_loop",
    "merge_topk",
    "neighbours_record_batch",
]
