"""Lifted multicut partitioning of the supervoxel graph.

A lifted multicut problem adds *lifted* edges to the multicut problem of
:mod:`emflow.multicut`: pairs of nodes that need not touch, each with a cost
that is paid when the two nodes end up in different segments. Lifted edges
change the energy but not which partitions are allowed: a segment must be
connected by local (base-graph) edges. Lifted edges therefore express
long-range evidence ("these two supervoxels belong to the same neuron")
without letting it merge nodes that do not touch.

Conventions as in :mod:`emflow.multicut`: local and lifted edges are
``(E, 2)`` / ``(L, 2)`` ``uint64`` node pairs with ``u < v``, sorted
lexicographically and unique; costs are ``float64``, positive = attractive;
the energy of a node labeling is the sum of the costs of the cut local and
lifted edges (minimised); node 0 is background and edges or lifted edges
touching it are ignored by the solvers. A lifted edge that coincides with a
local edge adds its cost to that local edge (the two are cut together). The
energy equals ``bioimage_cpp.graph.lifted_multicut.LiftedMulticutObjective.energy``.
"""

from __future__ import annotations

import numpy as np
from bioimage_cpp.graph import lifted_multicut as bic_lifted

from .affinity_statistics import PairStatistics
from .costs import probabilities_to_costs
from .graph import undirected_graph
from .multicut import SOLVERS, _as_problem, _check_edges, canonical_labels, multicut_energy


def solve_lifted_multicut(
    number_of_nodes: int,
    edges: np.ndarray,
    edge_costs: np.ndarray,
    lifted_edges: np.ndarray,
    lifted_costs: np.ndarray,
    *,
    solver: str = "kernighan-lin",
    seed: int = 0,
) -> np.ndarray:
    """Partition the graph by (approximately) minimising the lifted multicut energy.

    ``edges`` ``(E, 2)`` and ``lifted_edges`` ``(L, 2)`` are node pairs of
    nodes ``0..number_of_nodes - 1`` (``u < v``, sorted, unique, each array
    on its own; a lifted edge may coincide with a local edge and then adds
    its cost to it), ``edge_costs`` ``(E,)`` and ``lifted_costs`` ``(L,)``
    their costs (positive = attractive). Node 0 is background: local and
    lifted edges touching it are ignored, so it is never merged.

    Solvers, as for :func:`emflow.multicut.solve_multicut`:
    ``"greedy-additive"`` (lifted greedy additive edge contraction, which
    contracts only local edges and ranks them by local plus lifted costs),
    ``"kernighan-lin"`` (lifted greedy additive, then lifted Kernighan-Lin
    moves) and ``"fusion-moves"`` (lifted greedy additive, then fusion moves
    over noisy greedy additive proposals on the local graph drawn with
    ``seed``, then Kernighan-Lin). Kernighan-Lin is always warm-started with
    greedy additive: bioimage-cpp's lifted Kernighan-Lin improves pairs of
    neighbouring segments and skips pairs of two single nodes, so from the
    singleton labeling it makes no move at all. All are deterministic for a
    given input and seed.

    Returns ``(number_of_nodes,)`` ``uint64`` segment ids: 0 for node 0,
    ``1..k`` for the rest, numbered in the order of each segment's smallest
    node id.
    """
    if solver not in SOLVERS:
        raise ValueError(f"unknown lifted multicut solver {solver!r}, expected one of {SOLVERS}")
    edges, edge_costs, lifted_edges, lifted_costs = _as_lifted_problem(
        number_of_nodes, edges, edge_costs, lifted_edges, lifted_costs
    )
    foreground = (edges != 0).all(axis=1)
    lifted_foreground = (lifted_edges != 0).all(axis=1)
    graph = undirected_graph(number_of_nodes, edges[foreground])
    objective = bic_lifted.LiftedMulticutObjective(
        graph,
        edge_costs[foreground],
        lifted_uvs=lifted_edges[lifted_foreground],
        lifted_costs=lifted_costs[lifted_foreground],
    )
    solution = _lifted_solver(solver, seed).optimize(objective)
    return canonical_labels(solution)


def lifted_edges_from_node_labels(
    number_of_nodes: int,
    edges: np.ndarray,
    node_labels: np.ndarray,
    *,
    graph_depth: int,
    weight: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Lifted edges carrying the evidence of a labelling of the nodes.

    Every pair of nodes 2 to ``graph_depth`` hops apart in the graph of
    ``edges`` whose ``node_labels`` are both non-zero gets a lifted edge,
    with cost ``+weight`` (attractive) when the labels agree and
    ``-weight`` (repulsive) when they differ. ``node_labels`` is
    ``(number_of_nodes,)`` integer, 0 = no evidence (as for node 0).
    Returns ``(L, 2)`` ``uint64`` lifted edges (sorted, unique) and their
    ``(L,)`` ``float64`` costs.
    """
    if graph_depth < 2:
        raise ValueError(f"graph_depth must be at least 2 (neighbours are local edges), got {graph_depth}")
    node_labels = np.asarray(node_labels, dtype=np.uint64)
    if node_labels.shape != (number_of_nodes,):
        raise ValueError(f"node_labels must have shape ({number_of_nodes},), got {node_labels.shape}")
    edges, _ = _as_problem(edges, np.zeros(len(edges)))
    _check_edges(edges, number_of_nodes)
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
    edges, _ = _as_problem(edges, np.zeros(len(edges)))
    _check_edges(edges, number_of_nodes)
    pairs = np.asarray(long_range.pairs, dtype=np.uint64).reshape(-1, 2)
    _check_edges(pairs, number_of_nodes, "long-range pairs")
    local = undirected_graph(number_of_nodes, edges).find_edges(pairs) >= 0
    lifted = long_range.select(~local)
    costs = probabilities_to_costs(1.0 - lifted.mean(), beta=beta, edge_sizes=lifted.counts, weighting=weighting)
    return lifted.pairs, costs


def lifted_multicut_energy(
    edges: np.ndarray,
    edge_costs: np.ndarray,
    lifted_edges: np.ndarray,
    lifted_costs: np.ndarray,
    node_labels: np.ndarray,
) -> float:
    """Sum of the costs of the local and lifted edges whose endpoints have different ``node_labels``.

    ``edges`` ``(E, 2)`` and ``lifted_edges`` ``(L, 2)`` integer node pairs,
    ``edge_costs`` ``(E,)``, ``lifted_costs`` ``(L,)``, ``node_labels``
    ``(N,)`` integer. Lower is better. Like
    :func:`emflow.multicut.multicut_energy`, every edge counts, including
    those touching node 0.
    """
    return multicut_energy(edges, edge_costs, node_labels) + multicut_energy(
        lifted_edges, lifted_costs, node_labels
    )


def _as_lifted_problem(number_of_nodes, edges, edge_costs, lifted_edges, lifted_costs):
    if number_of_nodes < 1:
        raise ValueError(f"number_of_nodes must be at least 1 (the background), got {number_of_nodes}")
    edges, edge_costs = _as_problem(edges, edge_costs)
    lifted_edges, lifted_costs = _as_problem(lifted_edges, lifted_costs, ("lifted_edges", "lifted_costs"))
    _check_edges(edges, number_of_nodes, "edges")
    _check_edges(lifted_edges, number_of_nodes, "lifted_edges")
    return edges, edge_costs, lifted_edges, lifted_costs


def _lifted_solver(name: str, seed: int) -> bic_lifted.LiftedMulticutSolver:
    greedy = bic_lifted.LiftedGreedyAdditiveMulticut()
    kernighan_lin = bic_lifted.LiftedKernighanLinMulticut()
    if name == "greedy-additive":
        return greedy
    if name == "kernighan-lin":
        return bic_lifted.LiftedChainedSolvers([greedy, kernighan_lin])
    fusion_moves = bic_lifted.FusionMoveLiftedMulticut(
        proposal_generator=bic_lifted.GreedyAdditiveProposalGenerator(seed=seed),
        number_of_threads=1,
    )
    return bic_lifted.LiftedChainedSolvers([greedy, fusion_moves, kernighan_lin])
