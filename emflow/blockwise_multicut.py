"""Hierarchical (domain-decomposition) multicut and lifted multicut.

Pape et al. (2017), "Solving large multicut problems for connectomics via
domain decomposition", as cluster_tools' multicut workflow runs it: the
volume's blocks define sub-problems; each sub-problem (the nodes of one
block and the edges between them) is solved on its own; every edge inside a
block that its sub-problem does not cut is contracted, which shrinks the
problem; this repeats with blocks of twice the size per axis, and the last
reduced problem is solved globally. The steps are separate functions so that
a workflow can run them as tasks (one per block for the sub-problems, one
per scale for the reduction) and reproduce :func:`hierarchical_multicut`
exactly::

    block_ids = node_block_ids                       # scale 0: base blocks
    for scale in range(n_scales):
        if scale > 0:                                # grid of this scale
            block_ids = coarse_block_ids(block_ids, coarse_blocks_per_axis(blocks_per_axis, scale - 1), 1)
        edge_ids, offsets = inner_edge_ids_by_block(edges, block_ids, number_of_blocks_at_scale)
        cut = concatenate([solve_subproblem(edges, edge_costs, edge_ids[offsets[b]:offsets[b + 1]])
                           for b in blocks])         # one task per block
        reduced = reduce_problem(number_of_nodes, edges, edge_costs, cut, block_ids)
        (number_of_nodes, edges, edge_costs, block_ids) = reduced's fields; keep reduced.node_mapping
    labels = project_node_labels(solve_multicut(number_of_nodes, edges, edge_costs), node_mappings)

Blocks and nodes: blocks are those of :class:`emflow.blocking.Blocking`,
numbered in C order over the block grid ``blocks_per_axis``. At scale ``s``
a block is ``2**s`` base blocks per axis (:func:`coarse_block_ids`). Every
node lies in exactly one block (in emflow supervoxels never cross a base
block face), given by ``node_block_ids``, an ``(N,)`` integer array of
block ids of the current scale's grid: base-block ids for the original
problem, and for a problem reduced at scale ``s`` the ids in the grid of
scale ``s`` (:attr:`ReducedProblem.node_block_ids`), which the next scale
coarsens by one step as above. Node 0 (background) and nodes with a
negative block id belong to no block: they are never contracted, and their
edges are never inner edges. ``node_block_ids[0]`` is ignored.

An edge is *inner* to a block when both its nodes lie in that block (and
neither is node 0); edges between blocks are never contracted at that scale,
so sub-problems are independent and their results do not depend on the
order in which blocks are solved.

Conventions as in :mod:`emflow.multicut` and :mod:`emflow.lifted_multicut`:
edges ``(E, 2)`` ``uint64`` with ``u < v``, sorted, unique; costs
``float64``, positive = attractive; energy = sum of the costs of cut edges.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from .lifted_multicut import _as_lifted_problem, solve_lifted_multicut
from .multicut import SOLVERS, _as_problem, _check_edges, canonical_labels, solve_multicut


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
    coarse = np.ravel_multi_index(
        tuple(position >> scale for position in positions), coarse_blocks_per_axis(blocks_per_axis, scale)
    )
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


def solve_subproblem(
    edges: np.ndarray,
    edge_costs: np.ndarray,
    inner_edge_ids: np.ndarray,
    *,
    solver: str = "kernighan-lin",
    seed: int = 0,
) -> np.ndarray:
    """Multicut of one block's sub-problem: which of its inner edges to cut.

    ``edges`` ``(E, 2)`` and ``edge_costs`` ``(E,)`` are the current problem
    (or just the block's rows of it), ``inner_edge_ids`` the sorted
    ``int64`` indices of the block's inner edges into them (from
    :func:`inner_edge_ids_by_block`); only those rows are read, so the cost
    is that of the block's edges. The sub-problem is the graph of these
    edges alone; it is solved with :func:`emflow.multicut.solve_multicut`
    (``solver``, ``seed``) on the block's nodes renumbered in increasing
    order, so the result depends only on the block's edges and costs.

    Returns the sorted ``int64`` subset of ``inner_edge_ids`` that the
    solution cuts. Inner edges must not touch node 0.
    """
    inner_edge_ids, block_edges, block_costs = _block_rows(edges, edge_costs, inner_edge_ids, "inner_edge_ids")
    if len(block_edges) == 0:
        return inner_edge_ids
    block_nodes = np.unique(block_edges)
    local_edges = _local_edges(block_edges, block_nodes)
    labels = solve_multicut(len(block_nodes) + 1, local_edges, block_costs, solver=solver, seed=seed)
    return inner_edge_ids[labels[local_edges[:, 0]] != labels[local_edges[:, 1]]]


def solve_subproblems(
    edges: np.ndarray,
    edge_costs: np.ndarray,
    node_block_ids: np.ndarray,
    number_of_blocks: int,
    *,
    solver: str = "kernighan-lin",
    seed: int = 0,
) -> np.ndarray:
    """:func:`solve_subproblem` for every block; the sorted ``int64`` union of their cut edges."""
    edge_ids, offsets = inner_edge_ids_by_block(edges, node_block_ids, number_of_blocks)
    cut = [
        solve_subproblem(edges, edge_costs, edge_ids[offsets[b] : offsets[b + 1]], solver=solver, seed=seed)
        for b in range(number_of_blocks)
    ]
    return np.sort(np.concatenate([np.zeros(0, np.int64), *cut]))


def solve_lifted_subproblem(
    edges: np.ndarray,
    edge_costs: np.ndarray,
    inner_edge_ids: np.ndarray,
    lifted_edges: np.ndarray,
    lifted_costs: np.ndarray,
    inner_lifted_edge_ids: np.ndarray,
    *,
    solver: str = "kernighan-lin",
    seed: int = 0,
) -> np.ndarray:
    """Lifted multicut of one block's sub-problem: which of its inner local edges to cut.

    As :func:`solve_subproblem`, plus the lifted edges ``(L, 2)`` with costs
    ``(L,)`` and the sorted ``int64`` indices ``inner_lifted_edge_ids`` of
    those with both ends in the block (:func:`inner_edge_ids_by_block` on
    the lifted edges). Solved with
    :func:`emflow.lifted_multicut.solve_lifted_multicut`. Returns the sorted
    ``int64`` subset of ``inner_edge_ids`` that the solution cuts.
    """
    inner_edge_ids, block_edges, block_costs = _block_rows(edges, edge_costs, inner_edge_ids, "inner_edge_ids")
    if len(block_edges) == 0:
        return inner_edge_ids
    _, block_lifted_edges, block_lifted_costs = _block_rows(
        lifted_edges, lifted_costs, inner_lifted_edge_ids, "inner_lifted_edge_ids"
    )
    block_nodes = np.unique(np.concatenate([block_edges.ravel(), block_lifted_edges.ravel()]))
    local_edges = _local_edges(block_edges, block_nodes)
    labels = solve_lifted_multicut(
        len(block_nodes) + 1,
        local_edges,
        block_costs,
        _local_edges(block_lifted_edges, block_nodes),
        block_lifted_costs,
        solver=solver,
        seed=seed,
    )
    return inner_edge_ids[labels[local_edges[:, 0]] != labels[local_edges[:, 1]]]


def solve_lifted_subproblems(
    edges: np.ndarray,
    edge_costs: np.ndarray,
    lifted_edges: np.ndarray,
    lifted_costs: np.ndarray,
    node_block_ids: np.ndarray,
    number_of_blocks: int,
    *,
    solver: str = "kernighan-lin",
    seed: int = 0,
) -> np.ndarray:
    """:func:`solve_lifted_subproblem` for every block; the sorted ``int64`` union of their cut edges."""
    edge_ids, offsets = inner_edge_ids_by_block(edges, node_block_ids, number_of_blocks)
    lifted_ids, lifted_offsets = inner_edge_ids_by_block(lifted_edges, node_block_ids, number_of_blocks)
    cut = [
        solve_lifted_subproblem(
            edges,
            edge_costs,
            edge_ids[offsets[b] : offsets[b + 1]],
            lifted_edges,
            lifted_costs,
            lifted_ids[lifted_offsets[b] : lifted_offsets[b + 1]],
            solver=solver,
            seed=seed,
        )
        for b in range(number_of_blocks)
    ]
    return np.sort(np.concatenate([np.zeros(0, np.int64), *cut]))


# --- reduction ----------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class ReducedProblem:
    """A multicut problem after contracting the uncut inner edges of a scale.

    ``number_of_nodes``: nodes of the reduced problem (node 0 is the
    background, as before). ``edges`` ``(E', 2)`` ``uint64`` (``u < v``,
    sorted, unique) and ``edge_costs`` ``(E',)`` ``float64``: the edges
    between different new nodes, each the sum of the costs of the old edges
    it replaces. ``node_mapping`` ``(N_old,)`` ``uint64``: the new node of
    every old node (0 → 0; new nodes are numbered in the order of their
    smallest old node). ``node_block_ids`` ``(N',)`` ``int64``: the block of
    every new node in the grid the reduction used (-1 for node 0 and for
    nodes without a block); coarsen it with :func:`coarse_block_ids` for the
    next scale.

    The energy of a labeling ``labels`` of the reduced problem equals the
    energy of ``labels[node_mapping]`` on the old problem.
    """

    number_of_nodes: int
    edges: np.ndarray
    edge_costs: np.ndarray
    node_mapping: np.ndarray
    node_block_ids: np.ndarray


@dataclass(frozen=True, eq=False)
class ReducedLiftedProblem(ReducedProblem):
    """A :class:`ReducedProblem` with its lifted edges.

    ``lifted_edges`` ``(L', 2)`` ``uint64`` (``u < v``, sorted, unique) and
    ``lifted_costs`` ``(L',)`` ``float64``: the old lifted edges between
    different new nodes, summed per new node pair. Lifted edges that fall
    inside a new node are dropped (they can no longer be cut), and lifted
    edges that coincide with a new local edge are added to its cost (they
    are cut together), so no lifted edge coincides with a local edge.
    """

    lifted_edges: np.ndarray
    lifted_costs: np.ndarray


def reduce_problem(
    number_of_nodes: int,
    edges: np.ndarray,
    edge_costs: np.ndarray,
    cut_edge_ids: np.ndarray,
    node_block_ids: np.ndarray,
) -> ReducedProblem:
    """Contract every inner edge that is not in ``cut_edge_ids``.

    ``edges`` ``(E, 2)`` and ``edge_costs`` ``(E,)`` on nodes
    ``0..number_of_nodes - 1``; ``cut_edge_ids`` integer indices into
    ``edges`` (the union of the sub-problems' cut edges; indices of edges
    that are not inner are allowed and change nothing); ``node_block_ids``
    ``(number_of_nodes,)`` the block of every node in the grid of this scale
    (see the module docstring). Edges between different blocks and edges
    touching node 0 are never contracted; the nodes joined by contracted
    edges (connected components) become one new node. See
    :class:`ReducedProblem` for the result.
    """
    edges, edge_costs = _as_problem(edges, edge_costs)
    _check_edges(edges, number_of_nodes)
    block_ids = _as_block_ids(node_block_ids)
    if len(block_ids) != number_of_nodes:
        raise ValueError(f"node_block_ids must have shape ({number_of_nodes},), got {block_ids.shape}")
    cut_edge_ids = _as_edge_ids(cut_edge_ids, len(edges), "cut_edge_ids", sorted_unique=False)

    contract = _inner_edge_blocks(edges, block_ids) >= 0
    contract[cut_edge_ids] = False
    node_mapping, new_number_of_nodes = _contraction_mapping(number_of_nodes, edges[contract])
    new_edges, new_costs = _mapped_edges(edges, edge_costs, node_mapping, new_number_of_nodes)
    new_block_ids = np.full(new_number_of_nodes, -1, dtype=np.int64)
    # All nodes of a new node share one block: they are joined by inner edges only.
    new_block_ids[node_mapping] = block_ids
    new_block_ids[0] = -1
    return ReducedProblem(new_number_of_nodes, new_edges, new_costs, node_mapping, new_block_ids)


def reduce_lifted_problem(
    number_of_nodes: int,
    edges: np.ndarray,
    edge_costs: np.ndarray,
    lifted_edges: np.ndarray,
    lifted_costs: np.ndarray,
    cut_edge_ids: np.ndarray,
    node_block_ids: np.ndarray,
) -> ReducedLiftedProblem:
    """:func:`reduce_problem` that also reduces the lifted edges ``(L, 2)`` with costs ``(L,)``.

    Lifted edges are never contracted (only local inner edges are); see
    :class:`ReducedLiftedProblem` for what becomes of them.
    """
    edges, edge_costs, lifted_edges, lifted_costs = _as_lifted_problem(
        number_of_nodes, edges, edge_costs, lifted_edges, lifted_costs
    )
    reduced = reduce_problem(number_of_nodes, edges, edge_costs, cut_edge_ids, node_block_ids)
    new_lifted, new_lifted_costs = _mapped_edges(
        lifted_edges, lifted_costs, reduced.node_mapping, reduced.number_of_nodes
    )
    # Fold lifted edges that coincide with a local edge into it.
    n = np.uint64(reduced.number_of_nodes)
    local_keys = reduced.edges[:, 0] * n + reduced.edges[:, 1]
    lifted_keys = new_lifted[:, 0] * n + new_lifted[:, 1]
    positions = np.minimum(np.searchsorted(local_keys, lifted_keys), max(len(local_keys) - 1, 0))
    coincides = (
        local_keys[positions] == lifted_keys if len(local_keys) else np.zeros(len(lifted_keys), dtype=bool)
    )
    edge_costs = reduced.edge_costs + np.bincount(
        positions[coincides], weights=new_lifted_costs[coincides], minlength=len(local_keys)
    )
    return ReducedLiftedProblem(
        reduced.number_of_nodes,
        reduced.edges,
        edge_costs,
        reduced.node_mapping,
        reduced.node_block_ids,
        new_lifted[~coincides],
        new_lifted_costs[~coincides],
    )


def project_node_labels(node_labels: np.ndarray, node_mappings: Sequence[np.ndarray]) -> np.ndarray:
    """Labels of the original nodes from a labeling of the last reduced problem.

    ``node_labels`` ``(N_k,)`` labels the nodes of the problem reached after
    the reductions whose ``node_mapping`` arrays are ``node_mappings``, in the
    order they were applied (first: original nodes → nodes after one
    reduction). Returns canonical ``(N_0,)`` ``uint64`` labels as
    :func:`emflow.multicut.canonical_labels`.
    """
    labels = np.asarray(node_labels)
    for mapping in reversed(node_mappings):
        labels = labels[np.asarray(mapping, dtype=np.int64)]
    return canonical_labels(labels)


# --- drivers ------------------------------------------------------------------------------------


def hierarchical_multicut(
    number_of_nodes: int,
    edges: np.ndarray,
    edge_costs: np.ndarray,
    node_block_ids: np.ndarray,
    blocks_per_axis: Sequence[int],
    *,
    n_scales: int,
    solver: str = "kernighan-lin",
    seed: int = 0,
) -> np.ndarray:
    """Multicut by domain decomposition over ``n_scales`` scales of blocks.

    The problem is that of :func:`emflow.multicut.solve_multicut`;
    ``node_block_ids`` ``(number_of_nodes,)`` integer gives every node's base
    block in the C-order grid ``blocks_per_axis`` (node 0: ignored; negative:
    no block). For scale ``s`` in ``0..n_scales - 1`` the sub-problems of
    the blocks of ``2**s`` base blocks per axis are solved
    (:func:`solve_subproblems`) and their uncut inner edges contracted
    (:func:`reduce_problem`); the last reduced problem is solved globally.
    ``n_scales=0`` is one global solve, identical to ``solve_multicut``. Every
    solve uses ``solver`` and ``seed``.

    Returns ``(number_of_nodes,)`` ``uint64`` canonical segment ids (0 for
    node 0, ``1..k`` numbered by each segment's smallest node).
    """
    if solver not in SOLVERS:
        raise ValueError(f"unknown multicut solver {solver!r}, expected one of {SOLVERS}")
    blocks_per_axis = _as_grid(blocks_per_axis)
    n_scales = _as_scale(n_scales, "n_scales")
    edges, edge_costs = _as_problem(edges, edge_costs)
    block_ids = _as_block_ids(node_block_ids, math.prod(blocks_per_axis))
    if len(block_ids) != number_of_nodes:
        raise ValueError(f"node_block_ids must have shape ({number_of_nodes},), got {block_ids.shape}")

    node_mappings = []
    for scale in range(n_scales):
        if scale > 0:
            block_ids = coarse_block_ids(block_ids, coarse_blocks_per_axis(blocks_per_axis, scale - 1), 1)
        number_of_blocks = math.prod(coarse_blocks_per_axis(blocks_per_axis, scale))
        cut_edge_ids = solve_subproblems(edges, edge_costs, block_ids, number_of_blocks, solver=solver, seed=seed)
        reduced = reduce_problem(number_of_nodes, edges, edge_costs, cut_edge_ids, block_ids)
        number_of_nodes, edges, edge_costs = reduced.number_of_nodes, reduced.edges, reduced.edge_costs
        block_ids = reduced.node_block_ids
        node_mappings.append(reduced.node_mapping)
    node_labels = solve_multicut(number_of_nodes, edges, edge_costs, solver=solver, seed=seed)
    return project_node_labels(node_labels, node_mappings)


def hierarchical_lifted_multicut(
    number_of_nodes: int,
    edges: np.ndarray,
    edge_costs: np.ndarray,
    lifted_edges: np.ndarray,
    lifted_costs: np.ndarray,
    node_block_ids: np.ndarray,
    blocks_per_axis: Sequence[int],
    *,
    n_scales: int,
    solver: str = "kernighan-lin",
    seed: int = 0,
) -> np.ndarray:
    """Lifted multicut by domain decomposition; :func:`hierarchical_multicut` with lifted edges.

    The problem is that of
    :func:`emflow.lifted_multicut.solve_lifted_multicut`. Sub-problems keep
    the lifted edges with both ends in their block
    (:func:`solve_lifted_subproblems`), reductions carry all lifted edges
    along (:func:`reduce_lifted_problem`), and the last reduced problem is
    solved globally with all remaining lifted edges. ``n_scales=0`` is
    identical to ``solve_lifted_multicut``.
    """
    if solver not in SOLVERS:
        raise ValueError(f"unknown lifted multicut solver {solver!r}, expected one of {SOLVERS}")
    blocks_per_axis = _as_grid(blocks_per_axis)
    n_scales = _as_scale(n_scales, "n_scales")
    edges, edge_costs, lifted_edges, lifted_costs = _as_lifted_problem(
        number_of_nodes, edges, edge_costs, lifted_edges, lifted_costs
    )
    block_ids = _as_block_ids(node_block_ids, math.prod(blocks_per_axis))
    if len(block_ids) != number_of_nodes:
        raise ValueError(f"node_block_ids must have shape ({number_of_nodes},), got {block_ids.shape}")

    node_mappings = []
    for scale in range(n_scales):
        if scale > 0:
            block_ids = coarse_block_ids(block_ids, coarse_blocks_per_axis(blocks_per_axis, scale - 1), 1)
        number_of_blocks = math.prod(coarse_blocks_per_axis(blocks_per_axis, scale))
        cut_edge_ids = solve_lifted_subproblems(
            edges, edge_costs, lifted_edges, lifted_costs, block_ids, number_of_blocks, solver=solver, seed=seed
        )
        reduced = reduce_lifted_problem(
            number_of_nodes, edges, edge_costs, lifted_edges, lifted_costs, cut_edge_ids, block_ids
        )
        number_of_nodes, edges, edge_costs = reduced.number_of_nodes, reduced.edges, reduced.edge_costs
        lifted_edges, lifted_costs = reduced.lifted_edges, reduced.lifted_costs
        block_ids = reduced.node_block_ids
        node_mappings.append(reduced.node_mapping)
    node_labels = solve_lifted_multicut(
        number_of_nodes, edges, edge_costs, lifted_edges, lifted_costs, solver=solver, seed=seed
    )
    return project_node_labels(node_labels, node_mappings)


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


def _block_rows(edges, edge_costs, edge_ids, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    # The selected rows only, validated: a block's cost stays proportional to its own edges.
    edges = np.asarray(edges)
    edge_costs = np.asarray(edge_costs)
    if edges.size == 0:
        edges = edges.reshape(0, 2)
    if edges.ndim != 2 or edges.shape[1] != 2 or edge_costs.shape != (len(edges),):
        raise ValueError(f"edges (E, 2) and costs (E,) do not match: {edges.shape} and {edge_costs.shape}")
    edge_ids = _as_edge_ids(edge_ids, len(edges), name)
    block_edges, block_costs = _as_problem(edges[edge_ids], edge_costs[edge_ids])
    if (block_edges == 0).any():
        raise ValueError(f"{name} select edges touching the background node 0")
    return edge_ids, block_edges, block_costs


def _local_edges(block_edges: np.ndarray, block_nodes: np.ndarray) -> np.ndarray:
    # Nodes renumbered 1..n in increasing order (0 stays the unused background): a monotonic
    # map, so sorted unique edges with u < v keep that form.
    return (np.searchsorted(block_nodes, block_edges) + 1).astype(np.uint64)


def _contraction_mapping(number_of_nodes: int, contracted_edges: np.ndarray) -> tuple[np.ndarray, int]:
    u = contracted_edges[:, 0].astype(np.int64)
    v = contracted_edges[:, 1].astype(np.int64)
    adjacency = coo_matrix((np.ones(len(u), dtype=np.int8), (u, v)), shape=(number_of_nodes, number_of_nodes))
    _, components = connected_components(adjacency, directed=False)
    mapping = canonical_labels(components)
    return mapping, int(mapping.max()) + 1


def _mapped_edges(
    edges: np.ndarray, costs: np.ndarray, node_mapping: np.ndarray, number_of_nodes: int
) -> tuple[np.ndarray, np.ndarray]:
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
