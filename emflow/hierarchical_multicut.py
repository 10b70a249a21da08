"""Hierarchical (domain-decomposition) multicut, plain or lifted.

Pape et al. (2017), "Solving large multicut problems for connectomics via domain decomposition",
as cluster_tools' multicut workflow runs it: the volume's blocks define sub-problems; each
sub-problem (the nodes of one block and the edges between them, with the lifted edges between them
for a lifted problem) is solved on its own; every edge inside a block that its sub-problem does
not cut is contracted, which shrinks the problem; this repeats with blocks of twice the size per
axis, and the last reduced problem is solved globally. Plain and lifted problems take the same path
(:class:`emflow.multicut.MulticutProblem`), and the solver is a callable
(:data:`emflow.multicut.Solver`). The steps are separate functions so that a workflow can run them
as tasks (one per block for the sub-problems, one per scale for the reduction) and reproduce
:func:`hierarchical_multicut` exactly; this is its whole loop::

    for scale in range(n_scales):
        decomposition = decompose(problem, node_block_ids, number_of_blocks(scale))
        cut = concatenate([decomposition.block_edge_ids(b)[solve_subproblem(decomposition.subproblem(problem, b), solver)]
                           for b in blocks])         # one task per block
        problem, node_mapping, node_block_ids = next_scale(problem, cut, node_block_ids, blocks_per_axis, scale)
    labels = project_node_labels(solver(problem), node_mappings)

Blocks and nodes: blocks are those of :class:`emflow.blocking.Blocking`, numbered in C order over
the block grid ``blocks_per_axis``. At scale ``s`` a block is ``2**s`` base blocks per axis
(:func:`coarse_block_ids`). Every node lies in exactly one block (in emflow supervoxels never cross
a base block face), given by ``node_block_ids``, an ``(N,)`` integer array of block ids in the grid
of the current scale: base-block ids for the original problem, and after :func:`next_scale` the
ids in the grid of the next scale. Node 0 (background) and nodes with a negative block id belong to
no block: they are never contracted, and their edges are never inner edges.
``node_block_ids[0]`` is ignored.

An edge (local or lifted) is *inner* to a block when both its nodes lie in that block (and neither
is node 0); edges between blocks are never contracted at that scale, so sub-problems are
independent and their results do not depend on the order in which blocks are solved.

Conventions as in :mod:`emflow.multicut`: edges ``(E, 2)`` ``uint64`` with ``u < v``, sorted,
unique; costs ``float64``, positive = attractive; energy = sum of the costs of cut edges.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .graph import connected_components
from .multicut import MulticutProblem, Solver, canonical_labels, multicut_problem

# --- blocks at coarser scales -------------------------------------------------------------------


def coarse_blocks_per_axis(blocks_per_axis: Sequence[int], scale: int) -> tuple[int, ...]:
    """Shape of the block grid at ``scale``: ``ceil(blocks_per_axis / 2**scale)`` per axis.

    ``blocks_per_axis`` is the base grid (``Blocking.blocks_per_axis``); a
    block at ``scale`` covers ``2**scale`` base blocks per axis (fewer at the
    upper border).
    """
    blocks_per_axis = _as_grid(blocks_per_axis)
    scale = _as_scale(scale)
    return tuple(-(-blocks // 2**scale) for blocks in blocks_per_axis)


def coarse_block_ids(block_ids, blocks_per_axis: Sequence[int], scale: int) -> np.ndarray:
    """Ids of the blocks at ``scale`` that contain the given blocks.

    ``block_ids`` is an integer array (any shape) of ids in the C-order grid
    ``blocks_per_axis``; negative ids (no block) stay -1. Returns ``int64``
    ids of the same shape in the C-order grid
    :func:`coarse_blocks_per_axis` ``(blocks_per_axis, scale)``. Coarsening
    composes: coarsening by ``s`` and then by ``t`` (with the intermediate
    grid) equals coarsening by ``s + t``.
    """
    blocks_per_axis = _as_grid(blocks_per_axis)
    scale = _as_scale(scale)
    block_ids = np.asarray(block_ids)
    if block_ids.size and not np.issubdtype(block_ids.dtype, np.integer):
        raise TypeError(f"block_ids must have an integer dtype, got {block_ids.dtype}")
    block_ids = block_ids.astype(np.int64)
    number_of_blocks = math.prod(blocks_per_axis)
    if block_ids.size and block_ids.max() >= number_of_blocks:
        raise ValueError(f"block id {int(block_ids.max())} >= number of blocks {number_of_blocks}")
    valid = block_ids >= 0
    positions = np.unravel_index(block_ids[valid], blocks_per_axis)
    coarse = np.ravel_multi_index(tuple(position >> scale for position in positions), coarse_blocks_per_axis(blocks_per_axis, scale))
    result = np.full(block_ids.shape, -1, dtype=np.int64)
    result[valid] = coarse
    return result


# --- sub-problems -------------------------------------------------------------------------------


def node_block_ids_from_counts(counts) -> np.ndarray:
    """Base block of every node when block ``b`` holds the ``counts[b]`` ids after those of blocks ``< b``.

    That is emflow's numbering of supervoxels (:func:`emflow.labels.block_offsets`). ``counts`` is
    ``(B,)`` integer; returns ``(1 + sum(counts),)`` ``int64``, -1 for node 0 (background).
    """
    counts = np.asarray(counts, dtype=np.int64)
    return np.concatenate([[-1], np.repeat(np.arange(len(counts), dtype=np.int64), counts)])


def first_block_of_nodes(number_of_nodes: int, nodes_by_block) -> np.ndarray:
    """Base block of every node when nodes may span blocks (supervoxels given by the user).

    ``nodes_by_block`` yields, for blocks ``0, 1, ...`` in order, the integer ids of the nodes
    each block holds. A node is assigned to the first block that holds it. Returns
    ``(number_of_nodes,)`` ``int64``; -1 for node 0 and for nodes no block holds.
    """
    block_ids = np.full(number_of_nodes, -1, dtype=np.int64)
    for block_id, nodes in enumerate(nodes_by_block):
        nodes = np.asarray(nodes, dtype=np.int64)
        nodes = nodes[block_ids[nodes] < 0]
        block_ids[nodes] = block_id
    block_ids[0] = -1
    return block_ids


def inner_edge_ids_by_block(
    edges: np.ndarray,
    node_block_ids: np.ndarray,
    number_of_blocks: int,
) -> tuple[np.ndarray, np.ndarray]:
    """The inner edges of every block, in compressed (CSR) layout.

    ``edges`` ``(E, 2)`` (local or lifted), ``node_block_ids`` ``(N,)``
    block ids of the nodes (see the module docstring), ``number_of_blocks``
    the size of the block grid. Returns ``(edge_ids, offsets)``: ``int64``
    ``(n_inner,)`` edge indices grouped by block, and ``int64``
    ``(number_of_blocks + 1,)`` offsets; block ``b``'s inner edges are
    ``edge_ids[offsets[b]:offsets[b + 1]]``, ascending. Edges between blocks
    and edges touching node 0 appear in no block.
    """
    edges = _as_edges(edges)
    block_ids = _as_block_ids(node_block_ids, number_of_blocks)
    if edges.size and int(edges.max()) >= len(block_ids):
        raise ValueError(f"edges reference node {int(edges.max())} >= len(node_block_ids) {len(block_ids)}")
    edge_blocks = _inner_edge_blocks(edges, block_ids)
    inner = np.flatnonzero(edge_blocks >= 0)
    order = np.argsort(edge_blocks[inner], kind="stable")
    edge_ids = inner[order].astype(np.int64)
    counts = np.bincount(edge_blocks[inner], minlength=number_of_blocks)
    offsets = np.zeros(number_of_blocks + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    return edge_ids, offsets


@dataclass(frozen=True, eq=False)
class Decomposition:
    """The inner edges of every block at one scale, in compressed (CSR) layout.

    ``edge_ids`` ``(n_inner,)`` ``int64`` indices into the problem's edges, grouped by block and
    ascending within a block; block ``b``'s are ``edge_ids[offsets[b]:offsets[b + 1]]``
    (``offsets`` ``(number_of_blocks + 1,)`` ``int64``). ``lifted_edge_ids`` and
    ``lifted_offsets`` likewise for the lifted edges (None for a plain problem).
    """

    edge_ids: np.ndarray
    offsets: np.ndarray
    lifted_edge_ids: np.ndarray | None = None
    lifted_offsets: np.ndarray | None = None

    @property
    def number_of_blocks(self) -> int:
        return len(self.offsets) - 1

    def block_edge_ids(self, block_id: int) -> np.ndarray:
        """``int64`` indices of block ``block_id``'s inner edges into the problem's edges."""
        return self.edge_ids[self.offsets[block_id] : self.offsets[block_id + 1]]

    def block_lifted_edge_ids(self, block_id: int) -> np.ndarray:
        """``int64`` indices of block ``block_id``'s inner lifted edges (empty for a plain problem)."""
        if self.lifted_edge_ids is None or self.lifted_offsets is None:
            return np.zeros(0, dtype=np.int64)
        return self.lifted_edge_ids[self.lifted_offsets[block_id] : self.lifted_offsets[block_id + 1]]

    def subproblem(self, problem: MulticutProblem, block_id: int) -> Subproblem:
        """Block ``block_id``'s sub-problem: the rows of its inner (lifted) edges."""
        edge_ids = self.block_edge_ids(block_id)
        if problem.lifted_edges is None or problem.lifted_costs is None:
            return Subproblem(problem.edges[edge_ids], problem.edge_costs[edge_ids])
        lifted_ids = self.block_lifted_edge_ids(block_id)
        return Subproblem(
            problem.edges[edge_ids], problem.edge_costs[edge_ids], problem.lifted_edges[lifted_ids], problem.lifted_costs[lifted_ids]
        )


@dataclass(frozen=True, eq=False)
class Subproblem:
    """One block's sub-problem: its inner edges ``(n, 2)`` ``uint64`` with costs ``(n,)``, and for a
    lifted problem its inner lifted edges ``(m, 2)`` with costs ``(m,)`` (else None), in the nodes of
    the whole problem and in the order of the whole problem's rows (so sorted, ``u < v``)."""

    edges: np.ndarray
    edge_costs: np.ndarray
    lifted_edges: np.ndarray | None = None
    lifted_costs: np.ndarray | None = None


def decompose(problem: MulticutProblem, node_block_ids: np.ndarray, number_of_blocks: int) -> Decomposition:
    """The inner edges (and inner lifted edges) of every block; see :class:`Decomposition`."""
    edge_ids, offsets = inner_edge_ids_by_block(problem.edges, node_block_ids, number_of_blocks)
    if problem.lifted_edges is None:
        return Decomposition(edge_ids, offsets)
    lifted_ids, lifted_offsets = inner_edge_ids_by_block(problem.lifted_edges, node_block_ids, number_of_blocks)
    return Decomposition(edge_ids, offsets, lifted_ids, lifted_offsets)


def solve_subproblem(subproblem: Subproblem, solver: Solver) -> np.ndarray:
    """Which rows of a block's sub-problem its solution cuts: sorted ``int64`` indices into
    ``subproblem.edges``.

    The sub-problem is solved with ``solver`` on the block's nodes renumbered ``1..n`` in
    increasing order (a monotonic map, so the edges keep their sorted ``u < v`` form), so the result
    depends only on the block's own rows, and a task reading only them reproduces it. Inner edges
    must not touch node 0.
    """
    edges = np.asarray(subproblem.edges, dtype=np.uint64).reshape(-1, 2)
    if len(edges) == 0:
        return np.zeros(0, dtype=np.int64)
    if (edges == 0).any() or (subproblem.lifted_edges is not None and (np.asarray(subproblem.lifted_edges) == 0).any()):
        raise ValueError("a sub-problem's edges must not touch the background node 0")
    lifted_edges = None if subproblem.lifted_edges is None else np.asarray(subproblem.lifted_edges, dtype=np.uint64).reshape(-1, 2)
    nodes = np.unique(edges if lifted_edges is None else np.concatenate([edges.ravel(), lifted_edges.ravel()]))
    local = (np.searchsorted(nodes, edges) + 1).astype(np.uint64)
    local_lifted = None if lifted_edges is None else (np.searchsorted(nodes, lifted_edges) + 1).astype(np.uint64)
    labels = solver(multicut_problem(len(nodes) + 1, local, subproblem.edge_costs, local_lifted, subproblem.lifted_costs))
    return np.flatnonzero(labels[local[:, 0]] != labels[local[:, 1]]).astype(np.int64)


def solve_subproblems(problem: MulticutProblem, node_block_ids: np.ndarray, number_of_blocks: int, solver: Solver) -> np.ndarray:
    """:func:`solve_subproblem` for every block; the sorted ``int64`` union of their cut edges,
    as indices into ``problem.edges``."""
    decomposition = decompose(problem, node_block_ids, number_of_blocks)
    cut = [
        decomposition.block_edge_ids(block_id)[solve_subproblem(decomposition.subproblem(problem, block_id), solver)]
        for block_id in range(number_of_blocks)
    ]
    return np.sort(np.concatenate([np.zeros(0, np.int64), *cut]))


# --- reduction ----------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class ReducedProblem:
    """A multicut problem after contracting the uncut inner edges of a scale.

    ``problem``: the reduced problem. Node 0 is the background, as before. Its edges are the edges
    between different new nodes, each with the summed cost of the old edges it replaces. For a
    lifted problem, lifted edges that fall inside a new node are dropped (they can no longer be
    cut), lifted edges that coincide with a new local edge are added to its cost (they are cut
    together), and the others are summed per new node pair, so no lifted edge coincides with a local
    edge. ``node_mapping`` ``(N_old,)`` ``uint64``: the new node of every old node (0 → 0; new nodes
    are numbered in the order of their smallest old node). ``node_block_ids`` ``(N',)`` ``int64``:
    the block of every new node in the grid the reduction used (-1 for node 0 and for nodes without
    a block).

    The energy of a labeling ``labels`` of the reduced problem equals the energy of
    ``labels[node_mapping]`` on the old problem.
    """

    problem: MulticutProblem
    node_mapping: np.ndarray
    node_block_ids: np.ndarray


def reduce_problem(problem: MulticutProblem, cut_edge_ids: np.ndarray, node_block_ids: np.ndarray) -> ReducedProblem:
    """Contract every inner edge that is not in ``cut_edge_ids``.

    ``cut_edge_ids``: integer indices into ``problem.edges`` (the union of the sub-problems' cut
    edges; indices of edges that are not inner are allowed and change nothing);
    ``node_block_ids`` ``(number_of_nodes,)``: the block of every node in the grid of this scale
    (see the module docstring). Edges between different blocks, edges touching node 0 and lifted
    edges are never contracted; the nodes joined by contracted edges (connected components) become
    one new node. See :class:`ReducedProblem` for the result.
    """
    block_ids = _as_block_ids(node_block_ids)
    if len(block_ids) != problem.number_of_nodes:
        raise ValueError(f"node_block_ids must have shape ({problem.number_of_nodes},), got {block_ids.shape}")
    cut_edge_ids = _as_edge_ids(cut_edge_ids, len(problem.edges), "cut_edge_ids", sorted_unique=False)

    contract = _inner_edge_blocks(problem.edges, block_ids) >= 0
    contract[cut_edge_ids] = False
    node_mapping, number_of_nodes = _contraction_mapping(problem.number_of_nodes, problem.edges[contract])
    edges, edge_costs = _mapped_edges(problem.edges, problem.edge_costs, node_mapping, number_of_nodes)
    lifted_edges = lifted_costs = None
    if problem.lifted_edges is not None:
        if problem.lifted_costs is None:
            raise ValueError("lifted_edges without lifted_costs: build the problem with multicut_problem")
        lifted_edges, lifted_costs = _mapped_edges(problem.lifted_edges, problem.lifted_costs, node_mapping, number_of_nodes)
        # Fold lifted edges that coincide with a local edge into it.
        n = np.uint64(number_of_nodes)
        local_keys = edges[:, 0] * n + edges[:, 1]
        lifted_keys = lifted_edges[:, 0] * n + lifted_edges[:, 1]
        positions = np.minimum(np.searchsorted(local_keys, lifted_keys), max(len(local_keys) - 1, 0))
        coincides = local_keys[positions] == lifted_keys if len(local_keys) else np.zeros(len(lifted_keys), dtype=bool)
        edge_costs = edge_costs + np.bincount(positions[coincides], weights=lifted_costs[coincides], minlength=len(local_keys))
        lifted_edges, lifted_costs = lifted_edges[~coincides], lifted_costs[~coincides]
    new_block_ids = np.full(number_of_nodes, -1, dtype=np.int64)
    # All nodes of a new node share one block: they are joined by inner edges only.
    new_block_ids[node_mapping] = block_ids
    new_block_ids[0] = -1
    reduced = MulticutProblem(number_of_nodes, edges, edge_costs, lifted_edges, lifted_costs)
    return ReducedProblem(reduced, node_mapping, new_block_ids)


def next_scale(
    problem: MulticutProblem, cut_edge_ids: np.ndarray, node_block_ids: np.ndarray, blocks_per_axis: Sequence[int], scale: int
) -> tuple[MulticutProblem, np.ndarray, np.ndarray]:
    """One step of the scale loop: :func:`reduce_problem` at ``scale``, then the new nodes' blocks
    in the grid of ``scale + 1``.

    ``node_block_ids`` are in the grid of ``scale`` (:func:`coarse_blocks_per_axis` of the base grid
    ``blocks_per_axis``). Returns ``(reduced problem, node_mapping, node_block_ids)``, the last in
    the grid of ``scale + 1``.
    """
    reduced = reduce_problem(problem, cut_edge_ids, node_block_ids)
    block_ids = coarse_block_ids(reduced.node_block_ids, coarse_blocks_per_axis(blocks_per_axis, scale), 1)
    return reduced.problem, reduced.node_mapping, block_ids


def project_node_labels(node_labels: np.ndarray, node_mappings: Sequence[np.ndarray]) -> np.ndarray:
    """Labels of the original nodes from a labeling of the last reduced problem.

    ``node_labels`` ``(N_k,)`` labels the nodes of the problem reached after the reductions whose
    ``node_mapping`` arrays are ``node_mappings``, in the order they were applied (first: original
    nodes → nodes after one reduction). Returns canonical ``(N_0,)`` ``uint64`` labels as
    :func:`emflow.multicut.canonical_labels`.
    """
    labels = np.asarray(node_labels)
    for mapping in reversed(node_mappings):
        labels = labels[np.asarray(mapping, dtype=np.int64)]
    return canonical_labels(labels)


# --- driver -------------------------------------------------------------------------------------


def hierarchical_multicut(
    problem: MulticutProblem,
    node_block_ids: np.ndarray,
    blocks_per_axis: Sequence[int],
    *,
    n_scales: int,
    solver: Solver,
) -> np.ndarray:
    """(Lifted) multicut by domain decomposition over ``n_scales`` scales of blocks.

    ``node_block_ids`` ``(number_of_nodes,)`` integer gives every node's base block in the C-order
    grid ``blocks_per_axis`` (node 0: ignored; negative: no block). For scale ``s`` in
    ``0..n_scales - 1`` the sub-problems of the blocks of ``2**s`` base blocks per axis are solved
    (:func:`solve_subproblems`) and their uncut inner edges contracted (:func:`next_scale`); the
    last reduced problem is solved globally. ``n_scales=0`` is one global solve,
    ``solver(problem)``. Every solve uses ``solver``.

    Returns ``(number_of_nodes,)`` ``uint64`` canonical segment ids (0 for node 0, ``1..k``
    numbered by each segment's smallest node).
    """
    blocks_per_axis = _as_grid(blocks_per_axis)
    n_scales = _as_scale(n_scales, "n_scales")
    block_ids = _as_block_ids(node_block_ids, math.prod(blocks_per_axis))
    if len(block_ids) != problem.number_of_nodes:
        raise ValueError(f"node_block_ids must have shape ({problem.number_of_nodes},), got {block_ids.shape}")
    node_mappings = []
    for scale in range(n_scales):
        number_of_blocks = math.prod(coarse_blocks_per_axis(blocks_per_axis, scale))
        cut_edge_ids = solve_subproblems(problem, block_ids, number_of_blocks, solver)
        problem, node_mapping, block_ids = next_scale(problem, cut_edge_ids, block_ids, blocks_per_axis, scale)
        node_mappings.append(node_mapping)
    return project_node_labels(solver(problem), node_mappings)


# --- helpers ------------------------------------------------------------------------------------


def _as_grid(blocks_per_axis) -> tuple[int, ...]:
    grid = tuple(int(blocks) for blocks in blocks_per_axis)
    if not grid or any(blocks < 1 for blocks in grid):
        raise ValueError(f"blocks_per_axis must be positive integers, got {blocks_per_axis!r}")
    return grid


def _as_scale(scale, name: str = "scale") -> int:
    if int(scale) != scale or scale < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {scale!r}")
    return int(scale)


def _as_edges(edges) -> np.ndarray:
    edges = np.asarray(edges, dtype=np.uint64)
    if edges.size == 0:
        edges = edges.reshape(0, 2)
    if edges.ndim != 2 or edges.shape[1] != 2:
        raise ValueError(f"edges must have shape (E, 2), got {edges.shape}")
    return edges


def _as_block_ids(node_block_ids, number_of_blocks: int | None = None) -> np.ndarray:
    block_ids = np.asarray(node_block_ids)
    if block_ids.ndim != 1 or len(block_ids) == 0:
        raise ValueError(f"node_block_ids must be 1D with an entry for node 0, got shape {block_ids.shape}")
    if not np.issubdtype(block_ids.dtype, np.integer):
        raise TypeError(f"node_block_ids must have an integer dtype, got {block_ids.dtype}")
    block_ids = block_ids.astype(np.int64)
    block_ids[block_ids < 0] = -1
    block_ids[0] = -1
    if number_of_blocks is not None and block_ids.max() >= number_of_blocks:
        raise ValueError(f"node_block_ids hold block {int(block_ids.max())} >= number of blocks {number_of_blocks}")
    return block_ids


def _as_edge_ids(edge_ids, number_of_edges: int, name: str, *, sorted_unique: bool = True) -> np.ndarray:
    edge_ids = np.asarray(edge_ids)
    if edge_ids.size == 0:
        return np.zeros(0, dtype=np.int64)
    if edge_ids.ndim != 1 or not np.issubdtype(edge_ids.dtype, np.integer):
        raise ValueError(f"{name} must be a 1D integer array, got {edge_ids.dtype} {edge_ids.shape}")
    edge_ids = edge_ids.astype(np.int64)
    if edge_ids.min() < 0 or edge_ids.max() >= number_of_edges:
        raise ValueError(f"{name} must lie in [0, {number_of_edges}), got {edge_ids.min()}..{edge_ids.max()}")
    if sorted_unique and (np.diff(edge_ids) <= 0).any():
        raise ValueError(f"{name} must be sorted and unique")
    return edge_ids


def _inner_edge_blocks(edges: np.ndarray, block_ids: np.ndarray) -> np.ndarray:
    # Block of every edge whose nodes share one (node 0 has block -1), else -1.
    first = block_ids[edges[:, 0]]
    return np.where(first == block_ids[edges[:, 1]], first, -1)


def _contraction_mapping(number_of_nodes: int, contracted_edges: np.ndarray) -> tuple[np.ndarray, int]:
    mapping = canonical_labels(connected_components(number_of_nodes, contracted_edges))
    return mapping, int(mapping.max()) + 1


def _mapped_edges(edges: np.ndarray, costs: np.ndarray, node_mapping: np.ndarray, number_of_nodes: int) -> tuple[np.ndarray, np.ndarray]:
    # Edges between different new nodes, parallel ones merged with summed costs; sorted, u < v.
    u = node_mapping[edges[:, 0]]
    v = node_mapping[edges[:, 1]]
    keep = u != v
    low = np.minimum(u[keep], v[keep])
    high = np.maximum(u[keep], v[keep])
    n = np.uint64(number_of_nodes)
    keys, inverse = np.unique(low * n + high, return_inverse=True)
    summed = np.bincount(inverse.ravel(), weights=costs[keep], minlength=len(keys))
    return np.stack([keys // n, keys % n], axis=1).astype(np.uint64), summed.astype(np.float64)
