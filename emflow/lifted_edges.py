"""Lifted edges: long-range node pairs with costs, the evidence of a lifted multicut.

A lifted edge joins two nodes of the region adjacency graph that need not touch; its cost is paid
when the two end up in different segments (:mod:`emflow.multicut`). Conventions as there: ``(L, 2)``
``uint64`` pairs with ``u < v``, sorted and unique; ``float64`` costs, positive = attractive.
"""

from __future__ import annotations

import numpy as np
from bioimage_cpp.graph import lifted_multicut as bic_lifted

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
