"""Region adjacency graph of supervoxels and its boundary features.

The graph can be built blockwise (:func:`block_edge_statistics` per block,
then :func:`merge_edges` and :func:`merge_edge_features`) or in memory
(:func:`in_core_graph_features`); both give identical edges and features.

Nodes are supervoxel ids ``0..max_id``; id 0 is background (masked out) and
has no edges. Edges are ``(E, 2)`` ``uint64`` rows ``(u, v)`` with
``u < v``, sorted lexicographically. The feature of a voxel pair across an
edge is the mean of the two voxels' boundary values.

Edges know their orientation: ``z_size`` counts the voxel pairs of an edge
that cross between sections (z-neighbours), ``size - z_size`` the in-plane
ones. With supervoxels computed per section (2D), an edge is either a z-edge
(all its pairs cross) or an in-plane edge (none does); serial-section data
needs the two weighted apart (:mod:`emflow.costs`), because a z-edge is the
overlap area of two sections' regions and an in-plane edge a line of contact.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
from bioimage_cpp import graph as bic_graph
from bioimage_cpp.graph import distributed
from bioimage_cpp.graph.features import COMPLEX_EDGE_FEATURE_NAMES, edge_map_features_complex
from bioimage_cpp.utils import UnionFind

from .blocking import Box

FEATURE_NAMES = ("mean", "std", "min", "max", "size", "z_size")
"""Columns of the edge feature arrays; ``size`` is the number of voxel pairs,
``z_size`` the number of those between z-neighbours (axis 0)."""

STATISTICS_COLUMNS = ("count", "mean", "M2", "min", "max", "z_count")
"""Columns of the per-block partial statistics of :func:`block_edge_statistics`."""

# Offset of the voxel pairs that cross between sections: from a voxel to the next along z, so that
# the pair belongs to its first voxel, as the boundary-map statistics' pairs do.
_Z_OFFSET = (1, 0, 0)

_IN_CORE_COLUMNS = [COMPLEX_EDGE_FEATURE_NAMES.index(name) for name in FEATURE_NAMES[:5]]


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
    background, and ``(n, 6)`` ``float64`` statistics
    :data:`STATISTICS_COLUMNS` ``[count, mean, M2, min, max, z_count]`` (M2:
    sum of squared deviations from the mean; z_count: pairs between
    z-neighbours), to be combined by :func:`merge_edge_features`.
    Single-threaded, because workflows parallelise over blocks.
    """
    supervoxels = np.asarray(supervoxels, dtype=np.uint64)
    edges, stats = distributed.block_edge_map_stats(supervoxels, boundaries, own_box.begin, own_box.shape, number_of_threads=1)
    z_counts = _z_pair_counts(supervoxels, own_box.begin, own_box.shape, edges)
    foreground = edges[:, 0] != 0
    return edges[foreground], np.column_stack([stats, z_counts])[foreground]


def _z_pair_counts(supervoxels: np.ndarray, own_begin, own_shape, edges: np.ndarray) -> np.ndarray:
    """``(len(edges),)`` ``float64``: how many of each edge's owned voxel pairs are z-neighbours.

    ``edges`` are the sorted edges of the same owned box (:func:`block_edge_statistics`); the
    z-pairs' edges are a subset of them. bioimage-cpp's affinity statistics with the single
    offset (1, 0, 0) and affinity 1 count exactly those pairs: 4 ms on a 64x128x128 block of the
    dev cube's supervoxels (1,661 edges), beside 12 ms for the boundary-map statistics; numpy's
    unique over the block's z-pairs took about 15 times as long as the affinity statistics.
    """
    ones = np.ones((1,) + supervoxels.shape, dtype=np.float64)
    z_edges, z_stats = distributed.block_affinity_stats(supervoxels, ones, [_Z_OFFSET], own_begin, own_shape, number_of_threads=1)
    counts = np.zeros(len(edges), dtype=np.float64)
    if len(z_edges):
        counts[edge_rows(edges, z_edges)] = z_stats[:, 0]
    return counts


def edge_rows(edges: np.ndarray, subset: np.ndarray) -> np.ndarray:
    """Row index in ``(E, 2)`` ``edges`` (sorted, unique) of each row of ``(n, 2)`` ``subset``, all of
    which must be in ``edges`` (ValueError otherwise: a bug of the caller)."""
    # Node ids compacted to 0..n-1 make each edge one int64 key, sorted as the edges are.
    nodes = np.unique(edges)
    width = np.int64(len(nodes))
    keys = np.searchsorted(nodes, edges[:, 0]).astype(np.int64) * width + np.searchsorted(nodes, edges[:, 1])
    subset_keys = np.searchsorted(nodes, subset[:, 0]).astype(np.int64) * width + np.searchsorted(nodes, subset[:, 1])
    rows = np.searchsorted(keys, subset_keys)
    if not (rows < len(keys)).all() or not np.array_equal(keys[rows], subset_keys):
        raise ValueError("edges that are not in the edge list; this is a bug")
    return rows


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

    Returns ``(E, 6)`` ``float64`` features with columns :data:`FEATURE_NAMES`
    (``std`` is the population standard deviation).
    """
    graph = undirected_graph(number_of_nodes, edges)
    stats = distributed.empty_edge_stats(graph.number_of_edges)
    z_sizes = np.zeros(graph.number_of_edges, dtype=np.float64)
    for block_edges, block_stats in block_results:
        block_stats = np.asarray(block_stats, dtype=np.float64)
        if block_stats.ndim != 2 or block_stats.shape[1] != len(STATISTICS_COLUMNS):
            raise ValueError(f"block statistics must have shape (n, {len(STATISTICS_COLUMNS)}), got {block_stats.shape}")
        distributed.merge_block_edge_stats(graph, stats, block_edges, np.ascontiguousarray(block_stats[:, :5]))
        if len(block_edges):
            # Every block edge is a graph edge (merge_edges made the graph from them), and a block
            # lists an edge once, so a fancy-indexed += adds every row; counts are integers, so the
            # sum is exact. O(block edges): a bincount over all edges per block made the merge
            # O(blocks x edges), 40 of its 65 ms at 512 blocks (benchmarks/reprocessing.py).
            edge_ids = graph.find_edges(np.asarray(block_edges, dtype=np.uint64))
            z_sizes[edge_ids] += block_stats[:, 5]
    features = distributed.finalize_edge_features(stats, compute_complex_features=True)
    return np.column_stack([features, z_sizes])


def in_core_graph_features(
    supervoxels: np.ndarray,
    boundaries: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, int]:
    """Graph and edge features of a whole volume held in memory.

    ``supervoxels`` are ``uint64`` ids, ``boundaries`` a float map of the
    same shape. Returns ``(edges, features, number_of_nodes)``: ``(E, 2)``
    ``uint64`` edges without background, ``(E, 6)`` ``float64`` features
    with columns :data:`FEATURE_NAMES`, and ``max id + 1``.
    """
    supervoxels = np.asarray(supervoxels, dtype=np.uint64)
    rag = bic_graph.region_adjacency_graph(supervoxels)
    edges = rag.uv_ids()
    features = edge_map_features_complex(rag, supervoxels, boundaries)[:, _IN_CORE_COLUMNS]
    z_sizes = _z_pair_counts(supervoxels, (0,) * supervoxels.ndim, supervoxels.shape, edges)
    foreground = edges[:, 0] != 0
    return edges[foreground], np.column_stack([features, z_sizes])[foreground], int(rag.number_of_nodes)


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


def connected_components(number_of_nodes: int, edges: np.ndarray) -> np.ndarray:
    """Component of each node of the graph on nodes ``0..number_of_nodes - 1`` with ``edges``.

    ``edges``: ``(E, 2)`` non-negative integer node pairs, in any order, repeats and self-loops
    allowed. Returns ``(number_of_nodes,)`` ``int64`` labels ``0..K-1``, components numbered by
    their smallest node (as ``scipy.sparse.csgraph.connected_components`` numbers them; scipy is
    not imported for it, which saves a run's every process 0.2 to 0.3 s).
    """
    edges = np.ascontiguousarray(edges, dtype=np.uint64).reshape(-1, 2)
    if edges.size and int(edges.max()) >= number_of_nodes:
        raise ValueError(f"edges reference node {int(edges.max())} >= number_of_nodes {number_of_nodes}")
    union_find = UnionFind(number_of_nodes)
    union_find.merge(edges)
    roots, first_nodes, components = np.unique(union_find.element_labeling(), return_index=True, return_inverse=True)
    rank = np.empty(len(roots), dtype=np.int64)
    rank[np.argsort(first_nodes)] = np.arange(len(roots))
    return rank[components.reshape(-1)]
