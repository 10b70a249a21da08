"""Multicut and lifted multicut partitioning of the supervoxel graph: one problem type, one solver path.

A :class:`MulticutProblem` holds the region adjacency graph of nodes ``0..number_of_nodes - 1``
with one cost per edge and, for a *lifted* multicut, lifted edges with costs: pairs of nodes that
need not touch, whose cost is paid when the two end up in different segments. Lifted edges change
the energy, not which partitions are allowed: a segment must be connected by local edges. They
express long-range evidence ("these two supervoxels belong to the same neuron") without letting it
merge nodes that do not touch.

Conventions: edges and lifted edges are ``(E, 2)`` / ``(L, 2)`` ``uint64`` node pairs with
``u < v``, sorted lexicographically and unique (the form of :func:`emflow.graph.merge_edges`);
costs are ``float64``, positive = attractive; the energy of a node labeling is the sum of the
costs of the cut local and lifted edges (edges whose nodes have different labels), minimised by the
solvers; node 0 is the background and edges touching it are ignored by the solvers, so it is never
merged. A lifted edge that coincides with a local edge adds its cost to that local edge (the two
are cut together). The energy equals bioimage-cpp's ``MulticutObjective.energy`` and
``LiftedMulticutObjective.energy``.

Solvers are callables ``solver(problem) -> node_labels`` (:data:`Solver`), as in elf: the
hierarchical solver (:mod:`emflow.hierarchical_multicut`) and the workflow take one and never look
inside. :func:`multicut_solver` makes the built-in ones, which solve plain and lifted problems alike.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from bioimage_cpp.graph import lifted_multicut as bic_lifted
from bioimage_cpp.graph import multicut as bic_multicut

from .graph import undirected_graph

SOLVERS = ("greedy-additive", "kernighan-lin", "fusion-moves")


@dataclass(frozen=True, eq=False)
class MulticutProblem:
    """A (lifted) multicut problem; build it with :func:`multicut_problem`, which checks it.

    ``number_of_nodes``: nodes ``0..number_of_nodes - 1`` (node 0 the background). ``edges``
    ``(E, 2)`` ``uint64`` and ``edge_costs`` ``(E,)`` ``float64``: the local edges. ``lifted_edges``
    ``(L, 2)`` ``uint64`` and ``lifted_costs`` ``(L,)`` ``float64``, or both None for a plain
    multicut (an empty lifted part is still a lifted problem, solved by the lifted solvers).
    """

    number_of_nodes: int
    edges: np.ndarray
    edge_costs: np.ndarray
    lifted_edges: np.ndarray | None = None
    lifted_costs: np.ndarray | None = None

    @property
    def is_lifted(self) -> bool:
        return self.lifted_edges is not None

    def energy(self, node_labels: np.ndarray) -> float:
        """Sum of the costs of the local and lifted edges whose nodes have different ``node_labels``
        (``(N,)`` integer). Every edge counts, including those touching node 0."""
        energy = multicut_energy(self.edges, self.edge_costs, node_labels)
        if self.lifted_edges is not None:
            if self.lifted_costs is None:
                raise ValueError("lifted_edges without lifted_costs: build the problem with multicut_problem")
            energy += multicut_energy(self.lifted_edges, self.lifted_costs, node_labels)
        return energy


Solver = Callable[[MulticutProblem], np.ndarray]
"""``solver(problem) -> node_labels``: ``(number_of_nodes,)`` integer labels, node 0 at label 0."""


def multicut_problem(number_of_nodes: int, edges, edge_costs, lifted_edges=None, lifted_costs=None) -> MulticutProblem:
    """A checked :class:`MulticutProblem` (see the module docstring for the conventions).

    Raises ValueError for mismatched shapes, non-finite costs, edges that are not ``u < v``
    sorted unique, or nodes ``>= number_of_nodes``.
    """
    if number_of_nodes < 1:
        raise ValueError(f"number_of_nodes must be at least 1 (the background), got {number_of_nodes}")
    edges, edge_costs = as_edges_and_costs(edges, edge_costs)
    check_edges(edges, number_of_nodes)
    if (lifted_edges is None) != (lifted_costs is None):
        raise ValueError("lifted_edges and lifted_costs must be given together")
    if lifted_edges is not None:
        lifted_edges, lifted_costs = as_edges_and_costs(lifted_edges, lifted_costs, ("lifted_edges", "lifted_costs"))
        check_edges(lifted_edges, number_of_nodes, "lifted_edges")
    return MulticutProblem(int(number_of_nodes), edges, edge_costs, lifted_edges, lifted_costs)


def multicut_solver(solver: str = "kernighan-lin", *, seed: int = 0) -> Solver:
    """A built-in solver for plain and lifted problems.

    ``"greedy-additive"`` (greedy additive edge contraction; for lifted problems it contracts only
    local edges and ranks them by local plus lifted costs), ``"kernighan-lin"`` (greedy additive,
    then Kernighan-Lin moves) and ``"fusion-moves"`` (greedy additive, then fusion moves over noisy
    greedy additive proposals drawn with ``seed``, then Kernighan-Lin). Kernighan-Lin is always
    warm-started with greedy additive: bioimage-cpp's lifted Kernighan-Lin improves pairs of
    neighbouring segments and skips pairs of two single nodes, so from the singleton labeling it
    makes no move at all. All are deterministic for a given problem and seed.

    The solver returns ``(number_of_nodes,)`` ``uint64`` canonical segment ids
    (:func:`canonical_labels`).
    """
    if solver not in SOLVERS:
        raise ValueError(f"unknown multicut solver {solver!r}, expected one of {SOLVERS}")

    def solve(problem: MulticutProblem) -> np.ndarray:
        foreground = (problem.edges != 0).all(axis=1)
        graph = undirected_graph(problem.number_of_nodes, problem.edges[foreground])
        if problem.lifted_edges is None:
            objective = bic_multicut.MulticutObjective(graph, problem.edge_costs[foreground])
            chain = _solver_chain(bic_multicut, solver, seed)
        else:
            if problem.lifted_costs is None:
                raise ValueError("lifted_edges without lifted_costs: build the problem with multicut_problem")
            lifted_foreground = (problem.lifted_edges != 0).all(axis=1)
            objective = bic_lifted.LiftedMulticutObjective(
                graph,
                problem.edge_costs[foreground],
                lifted_uvs=problem.lifted_edges[lifted_foreground],
                lifted_costs=problem.lifted_costs[lifted_foreground],
            )
            chain = _solver_chain(bic_lifted, solver, seed)
        return canonical_labels(chain.optimize(objective))

    return solve


def _solver_chain(module, name: str, seed: int):
    # The plain and the lifted module of bioimage-cpp offer the same solvers under these names.
    lifted = module is bic_lifted
    greedy = module.LiftedGreedyAdditiveMulticut() if lifted else module.GreedyAdditiveMulticut()
    kernighan_lin = module.LiftedKernighanLinMulticut() if lifted else module.KernighanLinMulticut()
    chained = module.LiftedChainedSolvers if lifted else module.ChainedMulticutSolvers
    if name == "greedy-additive":
        return greedy
    if name == "kernighan-lin":
        return chained([greedy, kernighan_lin])
    fusion = module.FusionMoveLiftedMulticut if lifted else module.FusionMoveMulticut
    fusion_moves = fusion(proposal_generator=module.GreedyAdditiveProposalGenerator(seed=seed), number_of_threads=1)
    return chained([greedy, fusion_moves, kernighan_lin])


def solve_multicut(
    number_of_nodes: int, edges: np.ndarray, edge_costs: np.ndarray, *, solver: str = "kernighan-lin", seed: int = 0
) -> np.ndarray:
    """Segment ids of the plain multicut problem (``multicut_solver(solver, seed=seed)``).

    The signature of a multicut plugin (``[multicut] function``), of which this is the default.
    Returns ``(number_of_nodes,)`` ``uint64`` canonical segment ids.
    """
    return multicut_solver(solver, seed=seed)(multicut_problem(number_of_nodes, edges, edge_costs))


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
    """Segment ids of the lifted multicut problem (``multicut_solver(solver, seed=seed)``)."""
    return multicut_solver(solver, seed=seed)(multicut_problem(number_of_nodes, edges, edge_costs, lifted_edges, lifted_costs))


def plugin_solver(function: Callable[..., np.ndarray], parameters: dict, name: str) -> Solver:
    """A :data:`Solver` calling a plugin ``function(number_of_nodes, edges, edge_costs, **parameters)``.

    The plugin's result is checked (``(number_of_nodes,)`` integers, node 0 at 0) and made canonical;
    ``name`` names the plugin in the errors. Plugins solve plain problems only.
    """

    def solve(problem: MulticutProblem) -> np.ndarray:
        if problem.is_lifted:
            raise ValueError(f"{name} solves plain multicut problems; lifted problems need the built-in solvers")
        node_labels = np.asarray(function(problem.number_of_nodes, problem.edges, problem.edge_costs, **parameters))
        if node_labels.shape != (problem.number_of_nodes,) or not np.issubdtype(node_labels.dtype, np.integer):
            raise ValueError(
                f"{name} must return {problem.number_of_nodes} integer node labels, got {node_labels.dtype} of shape {node_labels.shape}"
            )
        if problem.number_of_nodes and node_labels[0] != 0:
            raise ValueError(f"{name} must keep node 0 (background) at label 0")
        return node_labels.astype(np.uint64)

    return solve


def multicut_energy(edges: np.ndarray, edge_costs: np.ndarray, node_labels: np.ndarray) -> float:
    """Sum of the costs of the edges whose endpoints have different ``node_labels``.

    ``edges`` ``(E, 2)`` integer, ``edge_costs`` ``(E,)``, ``node_labels`` ``(N,)`` integer. Lower
    is better (see the module docstring).
    """
    edges, edge_costs = as_edges_and_costs(edges, edge_costs)
    node_labels = np.asarray(node_labels)
    cut = node_labels[edges[:, 0]] != node_labels[edges[:, 1]]
    return float(edge_costs[cut].sum())


def as_edges_and_costs(edges, edge_costs, names=("edges", "edge_costs")) -> tuple[np.ndarray, np.ndarray]:
    """``edges`` as ``(E, 2)`` ``uint64`` and ``edge_costs`` as finite ``(E,)`` ``float64``; ValueError otherwise."""
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


def check_edges(edges: np.ndarray, number_of_nodes: int, name: str = "edges") -> None:
    """ValueError unless ``edges`` are in the form of :func:`emflow.graph.merge_edges`: ``u < v``,
    sorted lexicographically, unique, nodes ``< number_of_nodes``."""
    u, v = edges[:, 0], edges[:, 1]
    increasing = (u[1:] > u[:-1]) | ((u[1:] == u[:-1]) & (v[1:] > v[:-1]))
    if not ((u < v).all() and increasing.all()):
        raise ValueError(f"{name} must have u < v and be sorted lexicographically without duplicates")
    if edges.size and int(v.max()) >= number_of_nodes:
        raise ValueError(f"{name} reference node {int(v.max())} >= number_of_nodes {number_of_nodes}")


def canonical_labels(solution: np.ndarray) -> np.ndarray:
    """Renumber a node labeling so that it depends only on the partition it encodes.

    ``solution`` is an ``(N,)`` integer labeling (any label values). Returns ``(N,)`` ``uint64``:
    0 for node 0 (background, whatever its input label), ``1..k`` for the segments of nodes
    ``1..N - 1``, numbered in the order of each segment's smallest node. Solver label values are
    arbitrary; this makes results comparable and deterministic.
    """
    solution = np.asarray(solution)
    labels = np.zeros(len(solution), dtype=np.uint64)
    _, first_node, inverse = np.unique(solution[1:], return_index=True, return_inverse=True)
    rank = np.empty(len(first_node), dtype=np.uint64)
    rank[np.argsort(first_node)] = np.arange(1, len(first_node) + 1, dtype=np.uint64)
    labels[1:] = rank[inverse]
    return labels
