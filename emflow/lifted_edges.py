"""Lifted edges: long-range node pairs with costs, the evidence of a lifted multicut.

A lifted edge joins two nodes of the region adjacency graph that need not touch; its cost is paid
when the two end up in different segments (:mod:`emflow.multicut`). Conventions as there: ``(L, 2)``
``uint64`` pairs with ``u < v``, sorted and unique; ``float64`` costs, positive = attractive.
"""

from __future__ import annotations

import numpy as np
from bioimage_cpp.graph import lifted_multicut as bic_lifted

from .affinity_statistics import PairStatistics
from .costs import probabilities_to_costs
from .graph import undirected_graph
from .multicut import as_edges_and_costs, check_edges


def lifted_edges_from_node_labels(
    number_of_nodes: int,
    edges: np.ndarray,
    node_labels: np.ndarray,
    *,
    graph_depth: int,
    weight: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Lifted edges carrying the evidence of a labelling of the nodes.

    Every pair of nodes 2 to ``graph_depth`` hops apart in the graph of ``edges`` whose
    ``node_labels`` are both non-zero gets a lifted edge, with cost ``+weight`` (attractive) when
    the labels agree and ``-weight`` (repulsive) when they differ. ``node_labels`` is
    ``(number_of_nodes,)`` integer, 0 = no evidence (as for node 0). Returns ``(L, 2)`` ``uint64``
    lifted edges (sorted, unique) and their ``(L,)`` ``float64`` costs.
    """
    if graph_depth < 2:
        raise ValueError(f"graph_depth must be at least 2 (neighbours are local edges), got {graph_depth}")
    node_labels = np.asarray(node_labels, dtype=np.uint64)
    if node_labels.shape != (number_of_nodes,):
        raise ValueError(f"node_labels must have shape ({number_of_nodes},), got {node_labels.shape}")
    edges, _ = as_edges_and_costs(edges, np.zeros(len(edges)))
    check_edges(edges, number_of_nodes)
    graph = undirected_graph(number_of_nodes, edges)
    lifted_edges = np.asarray(
        bic_lifted.lifted_edges_from_node_labels(graph, node_labels, graph_depth, mode="all", ignore_label=0, number_of_threads=1),
        dtype=np.uint64,
    ).reshape(-1, 2)
    lifted_edges = np.unique(np.sort(lifted_edges, axis=1), axis=0).reshape(-1, 2)
    same = node_labels[lifted_edges[:, 0]] == node_labels[lifted_edges[:, 1]]
    return lifted_edges, np.where(same, float(weight), -float(weight))


def lifted_edges_from_affinities(
    number_of_nodes: int,
    edges: np.ndarray,
    long_range: PairStatistics,
    *,
    beta: float = 0.5,
    weighting: str = "none",
) -> tuple[np.ndarray, np.ndarray]:
    """Lifted edges carrying the evidence of a CNN's long-range affinities (Lee et al. 2017).

    ``long_range`` are the statistics of the long-range channels' voxel pairs
    (:func:`emflow.affinity_statistics.block_pair_statistics` with
    :func:`~emflow.affinity_statistics.long_range_channels`, merged over blocks): every pair of
    supervoxels ``(u, v)`` that some voxel pair ``(p, p + offset)`` joins, with the sum and count
    of those affinities. ``edges`` are the local edges ``(E, 2)`` (sorted, unique, ``u < v``) on
    nodes ``0..number_of_nodes - 1``.

    A pair that is also a local edge gets no lifted edge: its evidence is the local edge, whose
    cost comes from the nearest-neighbour affinities (or the boundary map) of the contact itself,
    and adding the long-range affinities across the same contact would count that pair twice.
    The lifted edges are therefore those of bioimage-cpp's ``lifted_edges_from_affinities``.

    Costs are :func:`emflow.costs.probabilities_to_costs` of the cut probability ``1 - mean
    long-range affinity`` with ``beta``; ``weighting="size"`` scales them by the voxel-pair counts
    over the largest count. Returns ``(L, 2)`` ``uint64`` lifted edges (sorted, unique, ``u < v``)
    and their ``(L,)`` ``float64`` costs (positive = attractive).
    """
    edges, _ = as_edges_and_costs(edges, np.zeros(len(edges)))
    check_edges(edges, number_of_nodes)
    pairs = np.asarray(long_range.pairs, dtype=np.uint64).reshape(-1, 2)
    check_edges(pairs, number_of_nodes, "long-range pairs")
    local = undirected_graph(number_of_nodes, edges).find_edges(pairs) >= 0
    lifted = long_range.select(~local)
    costs = probabilities_to_costs(1.0 - lifted.mean(), beta=beta, edge_sizes=lifted.counts, weighting=weighting)
    return lifted.pairs, costs
