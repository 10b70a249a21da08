"""Region adjacency graph of supervoxels and its boundary features.

The graph can be built blockwise (:func:`block_edge_statistics` per block,
then :func:`merge_edges` and :func:`merge_edge_features`) or in memory
(:func:`in_core_graph_features`); both give identical edges and features.

Nodes are supervoxel ids ``0..max_id``; id 0 is background (masked out) and
has no edges. Edges are ``(E, 2)`` ``uint64`` rows ``(u, v)`` with
``u < v``, sorted lexicographically. The feature of a voxel pair across an
edge is the mean of the two voxels' boundary values.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
from bioimage_cpp import graph as bic_graph
from bioimage_cpp.graph import distributed
from bioimage_cpp.graph.features import COMPLEX_EDGE_FEATURE_NAMES, edge_map_features_complex

from .blocking import Box

FEATURE_NAMES = ("mean", "std", "min", "max", "size")
"""Columns of the edge feature arrays; ``size`` is the number of voxel pairs."""

_IN_CORE_COLUMNS = [COMPLEX_EDGE_FEATURE_NAMES.index(name) for name in FEATURE_NAMES]


def block_edge_statistics(
    supervoxels: np.ndarray,
    boundaries: np.ndarray,
    own_box: Box,
) -> tuple[np.ndarray, np.ndarray]:
    """Partial edge statistics of the voxel pairs one block owns.

    ``supervoxels`` is the block's ``uint64`` ids read with a halo of at least
    one voxel on the forward faces, ``boundaries`` the float boundary map of
    the same shape, and ``own_box`` the block's inner box in the coordinates
    of that haloed array. A block owns the pairs whose first voxel lies in
    ``own_box``, so the inner boxes of a blocking count every pair once.

    Returns ``(edges, stats)``: ``(n, 2)`` ``uint64`` edges without
    background, and ``(n, 5)`` ``float64`` statistics
    ``[count, mean, M2, min, max]`` (M2: sum of squared deviations from the
    mean), to be combined by :func:`merge_edge_features`. Single-threaded,
    because workflows parallelise over blocks.
    """
    supervoxels = np.asarray(supervoxels, dtype=np.uint64)
    edges, stats = distributed.block_edge_map_stats(
        supervoxels, boundaries, own_box.begin, own_box.shape, number_of_threads=1
    )
    foreground = edges[:, 0] != 0
    return edges[foreground], stats[foreground]


def merge_edges(block_edges: Sequence[np.ndarray]) -> np.ndarray:
    """Union of per-block ``(n_i, 2)`` edge arrays: sorted unique ``(E, 2)`` ``uint64``."""
    return distributed.merge_edges(block_edges)


def merge_edge_features(
    number_of_nodes: int,
    edges: np.ndarray,
    block_results: Iterable[Sequence[np.ndarray]],
) -> np.ndarray:
    """Combine per-block statistics into edge features.

    ``edges`` is the merged ``(E, 2)`` edge array (:func:`merge_edges`),
    ``number_of_nodes`` exceeds the largest node id, and ``block_results``
    yields the ``(edges, stats)`` pairs of :func:`block_edge_statistics`; it
    is consumed once, so blocks can be streamed from storage.

    Returns ``(E, 5)`` ``float64`` features with columns :data:`FEATURE_NAMES`
    (``std`` is the population standard deviation).
    """
    graph = undirected_graph(number_of_nodes, edges)
    stats = distributed.empty_edge_stats(graph.number_of_edges)
    for block_edges, block_stats in block_results:
        distributed.merge_block_edge_stats(graph, stats, block_edges, block_stats)
    return distributed.finalize_edge_features(stats, compute_complex_features=True)


def in_core_graph_features(
    supervoxels: np.ndarray,
    boundaries: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, int]:
    """Graph and edge features of a whole volume held in memory.

    ``supervoxels`` are ``uint64`` ids, ``boundaries`` a float map of the
    same shape. Returns ``(edges, features, number_of_nodes)``: ``(E, 2)``
    ``uint64`` edges without background, ``(E, 5)`` ``float64`` features
    with columns :data:`FEATURE_NAMES`, and ``max id + 1``.
    """
    supervoxels = np.asarray(supervoxels, dtype=np.uint64)
    rag = bic_graph.region_adjacency_graph(supervoxels)
    edges = rag.uv_ids()
    features = edge_map_features_complex(rag, supervoxels, boundaries)[:, _IN_CORE_COLUMNS]
    foreground = edges[:, 0] != 0
    return edges[foreground], features[foreground], int(rag.number_of_nodes)


def undirected_graph(number_of_nodes: int, edges: np.ndarray) -> bic_graph.UndirectedGraph:
    """Graph on nodes ``0..number_of_nodes - 1``; row ``i`` of ``edges`` becomes edge id ``i``.

    ``edges`` must be ``(E, 2)`` with ``u < v``, sorted lexicographically
    and unique, as returned by :func:`merge_edges`.
    """
    edges = np.asarray(edges, dtype=np.uint64)
    if edges.size == 0:
        edges = edges.reshape(0, 2)
    if edges.ndim != 2 or edges.shape[1] != 2:
        raise ValueError(f"edges must have shape (E, 2), got {edges.shape}")
    u, v = edges[:, 0], edges[:, 1]
    # Sorted with u < v implies unique, which from_unique_edges trusts blindly.
    increasing = (u[1:] > u[:-1]) | ((u[1:] == u[:-1]) & (v[1:] > v[:-1]))
    if not ((u < v).all() and increasing.all()):
        raise ValueError("edges must have u < v and be sorted lexicographically without duplicates")
    if edges.size and int(v.max()) >= number_of_nodes:
        raise ValueError(f"edges reference node {int(v.max())} >= number_of_nodes {number_of_nodes}")
    return bic_graph.UndirectedGraph.from_unique_edges(number_of_nodes, edges)
