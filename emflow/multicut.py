"""Multicut partitioning of the supervoxel graph.

Convention: the energy of a node labeling is the sum of the costs of the
cut edges (edges whose endpoints have different labels); solvers minimise
it. With :mod:`emflow.costs`, positive costs are attractive, so cutting
them raises the energy. This equals
``bioimage_cpp.graph.multicut.MulticutObjective.energy``.
"""

from __future__ import annotations

import numpy as np
from bioimage_cpp.graph import multicut as bic_multicut

from .graph import undirected_graph

SOLVERS = ("greedy-additive", "kernighan-lin", "fusion-moves")


def solve_multicut(
    number_of_nodes: int,
    edges: np.ndarray,
    edge_costs: np.ndarray,
    *,
    solver: str = "kernighan-lin",
    seed: int = 0,
) -> np.ndarray:
    """Partition the graph into segments by (approximately) minimising the multicut energy.

    ``edges`` are ``(E, 2)`` node pairs of nodes ``0..number_of_nodes - 1``
    in the form of :func:`emflow.graph.merge_edges` (``u < v``, sorted,
    unique), ``edge_costs`` the ``(E,)`` costs (positive = attractive).
    Node 0 is background: edges touching it are ignored, so it is never
    merged.

    Solvers: ``"greedy-additive"`` (greedy additive edge contraction),
    ``"kernighan-lin"`` (greedy additive, then Kernighan-Lin moves) and
    ``"fusion-moves"`` (greedy additive, then fusion moves over noisy greedy
    additive proposals drawn with ``seed``, then Kernighan-Lin). All are
    deterministic for a given input and seed.

    Returns ``(number_of_nodes,)`` ``uint64`` segment ids: 0 for node 0,
    ``1..k`` for the rest, numbered in the order of each segment's smallest
    node id.
    """
    if solver not in SOLVERS:
        raise ValueError(f"unknown multicut solver {solver!r}, expected one of {SOLVERS}")
    edges, edge_costs = _as_problem(edges, edge_costs)
    if number_of_nodes < 1:
        raise ValueError(f"number_of_nodes must be at least 1 (the background), got {number_of_nodes}")

    foreground = (edges != 0).all(axis=1)
    graph = undirected_graph(number_of_nodes, edges[foreground])
    objective = bic_multicut.MulticutObjective(graph, edge_costs[foreground])
    solution = _solver(solver, seed).optimize(objective)
    return canonical_labels(solution)


def multicut_energy(edges: np.ndarray, edge_costs: np.ndarray, node_labels: np.ndarray) -> float:
    """Sum of the costs of the edges whose endpoints have different ``node_labels``.

    ``edges`` ``(E, 2)`` integer, ``edge_costs`` ``(E,)``, ``node_labels``
    ``(N,)`` integer. Lower is better (see module docstring).
    """
    edges, edge_costs = _as_problem(edges, edge_costs)
    node_labels = np.asarray(node_labels)
    cut = node_labels[edges[:, 0]] != node_labels[edges[:, 1]]
    return float(edge_costs[cut].sum())


def _as_problem(edges, edge_costs, names=("edges", "edge_costs")) -> tuple[np.ndarray, np.ndarray]:
    edges_name, costs_name = names
    edges = np.asarray(edges, dtype=np.uint64)
    if edges.size == 0:
        edges = edges.reshape(0, 2)
    if edges.ndim != 2 or edges.shape[1] != 2:
        raise ValueError(f"{edges_name} must have shape (E, 2), got {edges.shape}")
    edge_costs = np.asarray(edge_costs, dtype=np.float64)
    if edge_costs.shape != (len(edges),):
        raise ValueError(f"{costs_name} must have shape ({len(edges)},), got {edge_costs.shape}")
    if not np.isfinite(edge_costs).all():
        raise ValueError(f"{costs_name} contain NaN or infinite values")
    return edges, edge_costs


def _check_edges(edges: np.ndarray, number_of_nodes: int, name: str = "edges") -> None:
    # The form of merge_edges: u < v, sorted lexicographically, unique, nodes < number_of_nodes.
    u, v = edges[:, 0], edges[:, 1]
    increasing = (u[1:] > u[:-1]) | ((u[1:] == u[:-1]) & (v[1:] > v[:-1]))
    if not ((u < v).all() and increasing.all()):
        raise ValueError(f"{name} must have u < v and be sorted lexicographically without duplicates")
    if edges.size and int(v.max()) >= number_of_nodes:
        raise ValueError(f"{name} reference node {int(v.max())} >= number_of_nodes {number_of_nodes}")


def _solver(name: str, seed: int) -> bic_multicut.MulticutSolver:
    greedy = bic_multicut.GreedyAdditiveMulticut()
    kernighan_lin = bic_multicut.KernighanLinMulticut()
    if name == "greedy-additive":
        return greedy
    if name == "kernighan-lin":
        return bic_multicut.ChainedMulticutSolvers([greedy, kernighan_lin])
    fusion_moves = bic_multicut.FusionMoveMulticut(
        proposal_generator=bic_multicut.GreedyAdditiveProposalGenerator(seed=seed),
        number_of_threads=1,
    )
    return bic_multicut.ChainedMulticutSolvers([greedy, fusion_moves, kernighan_lin])


def canonical_labels(solution: np.ndarray) -> np.ndarray:
    """Renumber a node labeling so that it depends only on the partition it encodes.

    ``solution`` is an ``(N,)`` integer labeling (any label values). Returns
    ``(N,)`` ``uint64``: 0 for node 0 (background, whatever its input label),
    ``1..k`` for the segments of nodes ``1..N - 1``, numbered in the order of
    each segment's smallest node. Solver label values are arbitrary; this
    makes results comparable and deterministic.
    """
    solution = np.asarray(solution)
    labels = np.zeros(len(solution), dtype=np.uint64)
    _, first_node, inverse = np.unique(solution[1:], return_index=True, return_inverse=True)
    rank = np.empty(len(first_node), dtype=np.uint64)
    rank[np.argsort(first_node)] = np.arange(1, len(first_node) + 1, dtype=np.uint64)
    labels[1:] = rank[inverse]
    return labels
