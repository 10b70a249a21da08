import math

import h5py
import numpy as np
import pytest
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from test_lifted_multicut import lifted_multicut_energy, lifted_problem_from_ground_truth

from emflow.blocking import Blocking
from emflow.boundaries import boundaries_from_labels
from emflow.costs import edge_costs_from_features
from emflow.graph import in_core_graph_features
from emflow.hierarchical_multicut import (
    Subproblem,
    coarse_block_ids,
    coarse_blocks_per_axis,
    decompose,
    hierarchical_multicut,
    inner_edge_ids_by_block,
    next_scale,
    project_node_labels,
    reduce_problem,
    solve_subproblem,
    solve_subproblems,
)
from emflow.labels import block_offsets, relabel_consecutive
from emflow.multicut import SOLVERS, multicut_energy, multicut_problem, multicut_solver, solve_lifted_multicut, solve_multicut
from emflow.supervoxels import distance_transform_watershed

KERNIGHAN_LIN = multicut_solver("kernighan-lin")

# A crop of the dev cube where the decomposition changes the solution (on some crops it does not).
CROP = np.s_[61:125, :128, 122:250]
BLOCK_SHAPE = (16, 32, 32)  # a 4 x 4 x 4 grid: n_scales = 3 solves 64, 8 and 1 sub-problems
HALO = (4, 8, 8)


@pytest.fixture(scope="module")
def problem(data_dir):
    """A multicut problem as the workflow builds it: watershed per block with halo, ids unique across blocks.

    Returns a dict with the graph (``number_of_nodes``, ``edges``,
    ``edge_costs``), ``node_block_ids`` (base block per supervoxel, -1 for
    node 0), ``blocks_per_axis``, ``supervoxels`` and ``neuron_ids``.
    """
    with h5py.File(data_dir / "flyem_medulla_dev" / "volume.h5", "r") as f:
        neuron_ids = f["labels/neuron_ids"][CROP]
    boundaries = boundaries_from_labels(neuron_ids, sigma=1.0, noise=0.1, seed=0)
    blocking = Blocking(neuron_ids.shape, BLOCK_SHAPE)
    block_supervoxels, counts = [], []
    for block_id in range(blocking.number_of_blocks):
        outer, inner_local = blocking.block_with_halo(block_id, HALO)
        labels = distance_transform_watershed(boundaries[outer.slicing])[inner_local.slicing]
        labels, count = relabel_consecutive(labels)
        block_supervoxels.append(labels)
        counts.append(count)
    offsets = block_offsets(counts)
    supervoxels = np.zeros(neuron_ids.shape, dtype=np.uint64)
    node_block_ids = np.full(int(sum(counts)) + 1, -1, dtype=np.int64)
    for block_id, (labels, offset) in enumerate(zip(block_supervoxels, offsets)):
        supervoxels[blocking.block(block_id).slicing] = labels + offset
        node_block_ids[int(offset) + 1 : int(offset) + counts[block_id] + 1] = block_id
    edges, features, number_of_nodes = in_core_graph_features(supervoxels, boundaries)
    assert number_of_nodes == len(node_block_ids)
    return {
        "number_of_nodes": number_of_nodes,
        "edges": edges,
        "edge_costs": edge_costs_from_features(features, beta=0.5),
        "node_block_ids": node_block_ids,
        "blocks_per_axis": blocking.blocks_per_axis,
        "supervoxels": supervoxels,
        "neuron_ids": neuron_ids,
    }


@pytest.fixture(scope="module")
def graph(problem):
    return problem["number_of_nodes"], problem["edges"], problem["edge_costs"]


@pytest.fixture(scope="module")
def lifted(problem):
    """Lifted edges up to 2 hops with costs of a noisy same-neuron classifier (see test_lifted_multicut)."""
    return lifted_problem_from_ground_truth(
        problem["number_of_nodes"], problem["edges"], problem["supervoxels"], problem["neuron_ids"], graph_depth=2
    )


@pytest.fixture(scope="module")
def plain_problem(graph):
    return multicut_problem(*graph)


@pytest.fixture(scope="module")
def lifted_problem(graph, lifted):
    return multicut_problem(*graph, *lifted)


@pytest.fixture(scope="module")
def global_solution(graph):
    return solve_multicut(*graph, solver="kernighan-lin")


def _segments_are_connected(number_of_nodes, edges, node_labels):
    uncut = node_labels[edges[:, 0]] == node_labels[edges[:, 1]]
    adjacency = coo_matrix(
        (np.ones(uncut.sum()), (edges[uncut, 0].astype(np.int64), edges[uncut, 1].astype(np.int64))),
        shape=(number_of_nodes, number_of_nodes),
    )
    components = connected_components(adjacency, directed=False)[1]
    pairs = np.unique(np.stack([components, node_labels], axis=1), axis=0)
    return len(pairs) == len(np.unique(components)) == len(np.unique(node_labels))


def _assert_canonical(node_labels, number_of_nodes):
    assert node_labels.dtype == np.uint64 and node_labels.shape == (number_of_nodes,)
    assert node_labels[0] == 0
    _, first = np.unique(node_labels[1:], return_index=True)
    np.testing.assert_array_equal(node_labels[1:][np.sort(first)], np.arange(1, node_labels.max() + 1))


# --- blocks ------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape, block_shape", [((125, 250, 250), (32, 64, 64)), ((125, 250, 250), (16, 32, 48)), ((40, 70), (7, 9))])
def test_coarse_blocks_are_those_of_a_blocking_with_larger_blocks(shape, block_shape):
    base = Blocking(shape, block_shape)
    base_ids = np.arange(base.number_of_blocks)
    for scale in range(5):
        coarse = Blocking(shape, tuple(min(b * 2**scale, s) for b, s in zip(block_shape, shape)))
        assert coarse_blocks_per_axis(base.blocks_per_axis, scale) == coarse.blocks_per_axis
        expected = []
        for block_id in base_ids:
            corner = base.block(block_id).begin
            position = tuple(c // b for c, b in zip(corner, coarse.block_shape))
            expected.append(int(np.ravel_multi_index(position, coarse.blocks_per_axis)))
        ids = coarse_block_ids(base_ids, base.blocks_per_axis, scale)
        assert ids.dtype == np.int64
        np.testing.assert_array_equal(ids, expected)
        # Coarsening one scale at a time gives the same ids.
        if scale > 0:
            previous = coarse_block_ids(base_ids, base.blocks_per_axis, scale - 1)
            step = coarse_block_ids(previous, coarse_blocks_per_axis(base.blocks_per_axis, scale - 1), 1)
            np.testing.assert_array_equal(step, ids)
    np.testing.assert_array_equal(coarse_block_ids([-1, 0, -5], base.blocks_per_axis, 1), [-1, 0, -1])
    with pytest.raises(ValueError, match="number of blocks"):
        coarse_block_ids([base.number_of_blocks], base.blocks_per_axis, 1)


def test_problem_supervoxels_lie_in_one_block(problem):
    blocking = Blocking(problem["supervoxels"].shape, BLOCK_SHAPE)
    for block_id in range(blocking.number_of_blocks):
        nodes = np.unique(problem["supervoxels"][blocking.block(block_id).slicing])
        assert (problem["node_block_ids"][nodes] == block_id).all()
    assert problem["number_of_nodes"] > 500 and problem["blocks_per_axis"] == (4, 4, 4)


def test_inner_edge_ids_by_block(problem):
    edges, block_ids = problem["edges"], problem["node_block_ids"]
    number_of_blocks = math.prod(problem["blocks_per_axis"])
    edge_ids, offsets = inner_edge_ids_by_block(edges, block_ids, number_of_blocks)
    assert edge_ids.dtype == offsets.dtype == np.int64 and offsets.shape == (number_of_blocks + 1,)
    assert offsets[0] == 0 and offsets[-1] == len(edge_ids)
    inner = block_ids[edges[:, 0]] == block_ids[edges[:, 1]]
    np.testing.assert_array_equal(np.sort(edge_ids), np.flatnonzero(inner))
    for block_id in range(number_of_blocks):
        ids = edge_ids[offsets[block_id] : offsets[block_id + 1]]
        assert (np.diff(ids) > 0).all()
        assert (block_ids[edges[ids]] == block_id).all()
    # Some edges cross blocks, and edges touching node 0 are in no block.
    assert 0 < len(edge_ids) < len(edges)
    with_background = np.concatenate([[[0, 1]], edges]).astype(np.uint64)
    ids, _ = inner_edge_ids_by_block(with_background, block_ids, number_of_blocks)
    np.testing.assert_array_equal(np.sort(ids), np.flatnonzero(inner) + 1)


# --- sub-problems ------------------------------------------------------------------------------


def test_subproblem_cut_edges_are_inner_edges_of_the_block(problem, graph, plain_problem):
    _, edges, edge_costs = graph
    block_ids = problem["node_block_ids"]
    number_of_blocks = math.prod(problem["blocks_per_axis"])
    decomposition = decompose(plain_problem, block_ids, number_of_blocks)
    edge_ids, offsets = inner_edge_ids_by_block(edges, block_ids, number_of_blocks)
    np.testing.assert_array_equal(decomposition.edge_ids, edge_ids)
    all_cut = []
    for block_id in range(number_of_blocks):
        inner = edge_ids[offsets[block_id] : offsets[block_id + 1]]
        # A task holding only the block's rows: its sub-problem.
        local = solve_subproblem(Subproblem(edges[inner], edge_costs[inner]), KERNIGHAN_LIN)
        assert local.dtype == np.int64 and (np.diff(local) > 0).all()
        cut = inner[local]
        np.testing.assert_array_equal(decomposition.block_edge_ids(block_id)[local], cut)
        assert np.isin(cut, inner).all()
        all_cut.append(cut)
    all_cut = np.concatenate(all_cut)
    np.testing.assert_array_equal(np.sort(all_cut), solve_subproblems(plain_problem, block_ids, number_of_blocks, KERNIGHAN_LIN))
    assert 0 < len(all_cut) < len(edge_ids)
    with pytest.raises(ValueError, match="background"):
        solve_subproblem(Subproblem(np.array([[0, 1], [1, 2]], np.uint64), np.array([1.0, 1.0])), KERNIGHAN_LIN)
    with pytest.raises(ValueError, match="sorted"):
        reversed_rows = edge_ids[offsets[1] : offsets[2]][::-1]
        solve_subproblem(Subproblem(edges[reversed_rows], edge_costs[reversed_rows]), KERNIGHAN_LIN)


def test_lifted_subproblem_keeps_only_the_block(problem, graph, lifted, plain_problem, lifted_problem):
    _, edges, edge_costs = graph
    lifted_edges, lifted_costs = lifted
    block_ids = problem["node_block_ids"]
    number_of_blocks = math.prod(problem["blocks_per_axis"])
    edge_ids, offsets = inner_edge_ids_by_block(edges, block_ids, number_of_blocks)
    lifted_ids, lifted_offsets = inner_edge_ids_by_block(lifted_edges, block_ids, number_of_blocks)
    assert 0 < len(lifted_ids) < len(lifted_edges)
    decomposition = decompose(lifted_problem, block_ids, number_of_blocks)
    cuts = []
    for block_id in range(number_of_blocks):
        inner = edge_ids[offsets[block_id] : offsets[block_id + 1]]
        inner_lifted = lifted_ids[lifted_offsets[block_id] : lifted_offsets[block_id + 1]]
        np.testing.assert_array_equal(decomposition.block_lifted_edge_ids(block_id), inner_lifted)
        subproblem = Subproblem(edges[inner], edge_costs[inner], lifted_edges[inner_lifted], lifted_costs[inner_lifted])
        cut = inner[solve_subproblem(subproblem, KERNIGHAN_LIN)]
        assert np.isin(cut, inner).all()
        cuts.append(cut)
    cuts = np.sort(np.concatenate(cuts))
    np.testing.assert_array_equal(cuts, solve_subproblems(lifted_problem, block_ids, number_of_blocks, KERNIGHAN_LIN))
    # The lifted edges change the sub-problems' decisions.
    assert not np.array_equal(cuts, solve_subproblems(plain_problem, block_ids, number_of_blocks, KERNIGHAN_LIN))


# --- reduction ---------------------------------------------------------------------------------


def test_reduce_problem(problem, graph, plain_problem):
    number_of_nodes, edges, edge_costs = graph
    block_ids = problem["node_block_ids"]
    cut = solve_subproblems(plain_problem, block_ids, math.prod(problem["blocks_per_axis"]), KERNIGHAN_LIN)
    reduced = reduce_problem(plain_problem, cut, block_ids)
    mapping = reduced.node_mapping
    assert mapping.dtype == np.uint64 and mapping.shape == (number_of_nodes,) and mapping[0] == 0
    _assert_canonical(mapping, number_of_nodes)
    assert reduced.problem.number_of_nodes == mapping.max() + 1 < 0.8 * number_of_nodes  # measured: 635 -> 429
    assert not reduced.problem.is_lifted
    new_edges = reduced.problem.edges
    assert new_edges.dtype == np.uint64 and reduced.problem.edge_costs.dtype == np.float64
    assert (new_edges[:, 0] < new_edges[:, 1]).all()
    assert len(np.unique(new_edges, axis=0)) == len(new_edges)
    np.testing.assert_array_equal(np.unique(new_edges, axis=0), new_edges)

    # Exactly the uncut inner edges are contracted (the others join different new nodes,
    # as every segment of the sub-problems is connected by its uncut edges).
    inner = block_ids[edges[:, 0]] == block_ids[edges[:, 1]]
    uncut_inner = inner.copy()
    uncut_inner[cut] = False
    same = mapping[edges[:, 0]] == mapping[edges[:, 1]]
    np.testing.assert_array_equal(same, uncut_inner)
    # A new node's block is that of its old nodes.
    assert reduced.node_block_ids[0] == -1
    np.testing.assert_array_equal(reduced.node_block_ids[mapping[1:]], block_ids[1:])
    # Parallel edges are summed.
    assert reduced.problem.edge_costs.sum() == pytest.approx(edge_costs[~same].sum(), rel=1e-12)


def test_reduce_problem_preserves_the_energy(problem, graph, plain_problem):
    number_of_nodes, edges, edge_costs = graph
    block_ids = problem["node_block_ids"]
    rng = np.random.default_rng(0)
    solver_cut = solve_subproblems(plain_problem, block_ids, math.prod(problem["blocks_per_axis"]), KERNIGHAN_LIN)
    random_cut = np.flatnonzero(rng.random(len(edges)) < 0.3)
    for cut in [solver_cut, random_cut, np.zeros(0, np.int64)]:
        reduced = reduce_problem(plain_problem, cut, block_ids)
        for labels in [rng.integers(0, k, reduced.problem.number_of_nodes) for k in (2, 10, reduced.problem.number_of_nodes)]:
            assert reduced.problem.energy(labels) == pytest.approx(
                multicut_energy(edges, edge_costs, labels[reduced.node_mapping]), rel=1e-12, abs=1e-9
            )


def test_reduce_lifted_problem_preserves_the_energy(problem, graph, lifted, plain_problem, lifted_problem):
    number_of_nodes, edges, edge_costs = graph
    lifted_edges, lifted_costs = lifted
    block_ids = problem["node_block_ids"]
    number_of_blocks = math.prod(problem["blocks_per_axis"])
    rng = np.random.default_rng(0)
    cut = solve_subproblems(lifted_problem, block_ids, number_of_blocks, KERNIGHAN_LIN)
    reduced_lifted = reduce_problem(lifted_problem, cut, block_ids)
    reduced, plain = reduced_lifted.problem, reduce_problem(plain_problem, cut, block_ids)
    assert reduced.is_lifted
    np.testing.assert_array_equal(reduced_lifted.node_mapping, plain.node_mapping)
    np.testing.assert_array_equal(reduced.edges, plain.problem.edges)
    np.testing.assert_array_equal(reduced_lifted.node_block_ids, plain.node_block_ids)
    # Lifted edges two hops apart become local edges when the middle node is contracted
    # with one end: their costs move to the local edge.
    assert not np.allclose(reduced.edge_costs, plain.problem.edge_costs)
    n = np.uint64(reduced.number_of_nodes)
    assert not np.isin(reduced.lifted_edges[:, 0] * n + reduced.lifted_edges[:, 1], reduced.edges[:, 0] * n + reduced.edges[:, 1]).any()
    assert (reduced.lifted_edges[:, 0] < reduced.lifted_edges[:, 1]).all()
    np.testing.assert_array_equal(np.unique(reduced.lifted_edges, axis=0), reduced.lifted_edges)
    for labels in [rng.integers(0, k, reduced.number_of_nodes) for k in (2, 10, reduced.number_of_nodes)]:
        reduced_energy = reduced.energy(labels)
        original_energy = lifted_multicut_energy(edges, edge_costs, lifted_edges, lifted_costs, labels[reduced_lifted.node_mapping])
        assert reduced_energy == pytest.approx(original_energy, rel=1e-12, abs=1e-9)


def test_background_edges_are_never_contracted(graph, problem):
    number_of_nodes, edges, edge_costs = graph
    block_ids = problem["node_block_ids"]
    other = int(np.flatnonzero(block_ids != block_ids[1])[1])  # a node of another block
    extended = np.concatenate([[[0, 1], [0, 2], [0, other]], edges]).astype(np.uint64)
    costs = np.concatenate([[5.0, -2.0, 4.0], edge_costs])
    reduced = reduce_problem(multicut_problem(number_of_nodes, extended, costs), [], block_ids)
    mapping = reduced.node_mapping
    assert mapping[0] == 0 and (mapping[1:] > 0).all()
    # The background edges survive (the energy is preserved, parallel ones summed) and node 0 stays alone.
    assert mapping[1] == mapping[2] != mapping[other]
    np.testing.assert_array_equal(reduced.problem.edges[:2], [[0, mapping[1]], [0, mapping[other]]])
    np.testing.assert_array_equal(reduced.problem.edge_costs[:2], [3.0, 4.0])


def test_invalid_reduction_input(graph, problem, plain_problem):
    number_of_nodes, edges, edge_costs = graph
    block_ids = problem["node_block_ids"]
    with pytest.raises(ValueError, match="node_block_ids"):
        reduce_problem(plain_problem, [], block_ids[:-1])
    with pytest.raises(ValueError, match="cut_edge_ids"):
        reduce_problem(plain_problem, [len(edges)], block_ids)
    with pytest.raises(ValueError, match="sorted"):
        reduce_problem(multicut_problem(number_of_nodes, edges[::-1], edge_costs), [], block_ids)
    with pytest.raises(ValueError, match="number of blocks"):
        inner_edge_ids_by_block(edges, block_ids, int(block_ids.max()))


# --- drivers -----------------------------------------------------------------------------------


@pytest.mark.parametrize("solver", SOLVERS)
def test_zero_scales_is_the_global_solve(problem, graph, plain_problem, solver):
    args = (problem["node_block_ids"], problem["blocks_per_axis"])
    np.testing.assert_array_equal(
        hierarchical_multicut(plain_problem, *args, n_scales=0, solver=multicut_solver(solver)), solve_multicut(*graph, solver=solver)
    )


@pytest.mark.parametrize("n_scales", [1, 2, 3])
def test_hierarchical_energy_is_close_to_the_global_one(problem, graph, plain_problem, global_solution, n_scales):
    number_of_nodes, edges, edge_costs = graph
    node_labels = hierarchical_multicut(
        plain_problem, problem["node_block_ids"], problem["blocks_per_axis"], n_scales=n_scales, solver=KERNIGHAN_LIN
    )
    _assert_canonical(node_labels, number_of_nodes)
    assert _segments_are_connected(number_of_nodes, edges, node_labels)
    energy = multicut_energy(edges, edge_costs, node_labels)
    global_energy = multicut_energy(edges, edge_costs, global_solution)
    # Measured on this crop: +0.009 %, +0.038 %, +0.038 % for 1, 2, 3 scales.
    assert energy - global_energy <= 0.005 * abs(global_energy)
    assert energy < 0.9 * global_energy  # far better than no merges (energy 0)


def test_one_block_is_the_global_solve(problem, graph, lifted, plain_problem, lifted_problem, global_solution):
    """With a single block the sub-problem is the whole problem, lifted edges included."""
    number_of_nodes, edges, edge_costs = graph
    one_block = np.where(problem["node_block_ids"] >= 0, 0, -1)
    node_labels = hierarchical_multicut(plain_problem, one_block, (1, 1, 1), n_scales=1, solver=KERNIGHAN_LIN)
    assert multicut_energy(edges, edge_costs, node_labels) == pytest.approx(multicut_energy(edges, edge_costs, global_solution), rel=1e-9)
    lifted_global = solve_lifted_multicut(*graph, *lifted)
    lifted_labels = hierarchical_multicut(lifted_problem, one_block, (1, 1, 1), n_scales=1, solver=KERNIGHAN_LIN)
    assert lifted_multicut_energy(edges, edge_costs, *lifted, lifted_labels) == pytest.approx(
        lifted_multicut_energy(edges, edge_costs, *lifted, lifted_global), rel=1e-9
    )


def _run_as_tasks(problem, multicut, n_scales, solver):
    """The driver's steps as a workflow runs them: per block from the block's rows alone (in any
    order), then per scale."""
    blocks_per_axis = problem["blocks_per_axis"]
    block_ids = problem["node_block_ids"]
    node_mappings = []
    for scale in range(n_scales):
        number_of_blocks = math.prod(coarse_blocks_per_axis(blocks_per_axis, scale))
        decomposition = decompose(multicut, block_ids, number_of_blocks)
        cut = [
            decomposition.block_edge_ids(block_id)[solve_subproblem(decomposition.subproblem(multicut, block_id), solver)]
            for block_id in reversed(range(number_of_blocks))
        ]
        multicut, node_mapping, block_ids = next_scale(multicut, np.concatenate(cut), block_ids, blocks_per_axis, scale)
        node_mappings.append(node_mapping)
    return project_node_labels(solver(multicut), node_mappings)


@pytest.mark.parametrize("solver", ["greedy-additive", "kernighan-lin"])
def test_step_functions_reproduce_the_driver(problem, plain_problem, lifted_problem, solver):
    solver = multicut_solver(solver)
    args = (problem["node_block_ids"], problem["blocks_per_axis"])
    expected = hierarchical_multicut(plain_problem, *args, n_scales=3, solver=solver)
    np.testing.assert_array_equal(_run_as_tasks(problem, plain_problem, 3, solver), expected)
    np.testing.assert_array_equal(hierarchical_multicut(plain_problem, *args, n_scales=3, solver=solver), expected)
    expected_lifted = hierarchical_multicut(lifted_problem, *args, n_scales=3, solver=solver)
    np.testing.assert_array_equal(_run_as_tasks(problem, lifted_problem, 3, solver), expected_lifted)


@pytest.mark.parametrize("n_scales", [0, 1, 2])
def test_hierarchical_lifted_multicut(problem, graph, lifted, lifted_problem, n_scales):
    number_of_nodes, edges, edge_costs = graph
    args = (problem["node_block_ids"], problem["blocks_per_axis"])
    node_labels = hierarchical_multicut(lifted_problem, *args, n_scales=n_scales, solver=KERNIGHAN_LIN)
    _assert_canonical(node_labels, number_of_nodes)
    assert _segments_are_connected(number_of_nodes, edges, node_labels)
    global_labels = solve_lifted_multicut(*graph, *lifted)
    if n_scales == 0:
        np.testing.assert_array_equal(node_labels, global_labels)
    energy = lifted_multicut_energy(edges, edge_costs, *lifted, node_labels)
    global_energy = lifted_multicut_energy(edges, edge_costs, *lifted, global_labels)
    no_merges = lifted_multicut_energy(edges, edge_costs, *lifted, np.arange(number_of_nodes))
    # Lifted sub-problems miss the lifted edges that leave their block (here 87 % of them), so the
    # decomposition costs far more than for the plain multicut: measured +4.1 % and +6.0 % of the
    # global energy for 1 and 2 scales, i.e. 83 % and 74 % of the global improvement on no merges.
    # Require half of it.
    assert no_merges - energy >= 0.5 * (no_merges - global_energy)


def test_project_node_labels():
    first = np.array([0, 1, 1, 2, 3], np.uint64)
    second = np.array([0, 1, 2, 1], np.uint64)
    np.testing.assert_array_equal(project_node_labels([0, 7, 5], [first, second]), [0, 1, 1, 2, 1])
    np.testing.assert_array_equal(project_node_labels([0, 3, 3, 1], []), [0, 1, 1, 2])
