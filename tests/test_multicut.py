import numpy as np
import pytest
from bioimage_cpp.graph.multicut import MulticutObjective
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from emflow.graph import undirected_graph
from emflow.multicut import SOLVERS, multicut_energy, solve_multicut


@pytest.fixture(scope="module")
def problem(noisy_multicut_problem):
    return noisy_multicut_problem[:3]


@pytest.fixture(scope="module")
def solutions(problem):
    return {solver: solve_multicut(*problem, solver=solver) for solver in SOLVERS}


def _uncut_components(number_of_nodes, edges, node_labels):
    uncut = node_labels[edges[:, 0]] == node_labels[edges[:, 1]]
    adjacency = coo_matrix(
        (np.ones(uncut.sum()), (edges[uncut, 0].astype(np.int64), edges[uncut, 1].astype(np.int64))),
        shape=(number_of_nodes, number_of_nodes),
    )
    return connected_components(adjacency, directed=False)[1]


def _same_partition(a, b):
    pairs = np.unique(np.stack([a, b], axis=1), axis=0)
    return len(pairs) == len(np.unique(a)) == len(np.unique(b))


@pytest.mark.parametrize("solver", SOLVERS)
def test_solution_is_a_valid_multicut(problem, solutions, solver):
    number_of_nodes, edges, _ = problem
    node_labels = solutions[solver]
    assert node_labels.dtype == np.uint64 and node_labels.shape == (number_of_nodes,)
    assert node_labels[0] == 0
    np.testing.assert_array_equal(np.unique(node_labels[1:]), np.arange(1, node_labels.max() + 1))
    assert 1 < node_labels.max() < number_of_nodes - 1
    # Each segment is exactly one connected component of the uncut edges, so
    # no edge inside a segment is cut.
    assert _same_partition(node_labels, _uncut_components(number_of_nodes, edges, node_labels))


def test_local_search_does_not_increase_the_energy(problem, solutions):
    _, edges, edge_costs = problem
    energies = {solver: multicut_energy(edges, edge_costs, labels) for solver, labels in solutions.items()}
    assert energies["kernighan-lin"] <= energies["greedy-additive"]
    assert energies["fusion-moves"] <= energies["greedy-additive"]
    all_separate = np.arange(len(solutions["greedy-additive"]))
    assert energies["greedy-additive"] < multicut_energy(edges, edge_costs, all_separate)


def test_energy_matches_bioimage_cpp_objective(problem, solutions):
    number_of_nodes, edges, edge_costs = problem
    objective = MulticutObjective(undirected_graph(number_of_nodes, edges), edge_costs)
    rng = np.random.default_rng(0)
    for node_labels in [*solutions.values(), rng.integers(0, 5, number_of_nodes).astype(np.uint64)]:
        expected = objective.energy(node_labels)
        assert multicut_energy(edges, edge_costs, node_labels) == pytest.approx(expected, rel=1e-12)
    # Cutting only attractive (positive) edges costs energy.
    assert multicut_energy(edges, edge_costs, np.arange(number_of_nodes)) == pytest.approx(edge_costs.sum())
    assert multicut_energy(edges, edge_costs, np.zeros(number_of_nodes)) == 0.0


@pytest.mark.parametrize("solver", SOLVERS)
def test_solvers_are_deterministic(problem, solutions, solver):
    np.testing.assert_array_equal(solve_multicut(*problem, solver=solver), solutions[solver])


def test_background_node_is_never_merged_and_isolated_nodes_stay_alone(problem, solutions):
    number_of_nodes, edges, edge_costs = problem
    node_labels = solutions["kernighan-lin"]
    # Strongly attractive edges from the background to two nodes of different
    # segments, which would merge them through node 0, plus one node without edges.
    first = 1
    second = 1 + int(np.flatnonzero(node_labels[1:] != node_labels[first])[0])
    background_edges = np.array([[0, first], [0, second]], dtype=np.uint64)
    extended_edges = np.concatenate([background_edges, edges])
    extended_costs = np.concatenate([[100.0, 100.0], edge_costs])
    extended_labels = solve_multicut(number_of_nodes + 1, extended_edges, extended_costs)
    np.testing.assert_array_equal(extended_labels[:-1], node_labels)
    assert (extended_labels[:-1] != extended_labels[-1]).all()

    np.testing.assert_array_equal(solve_multicut(4, np.empty((0, 2), np.uint64), np.empty(0)), [0, 1, 2, 3])


def test_invalid_multicut_input(problem):
    number_of_nodes, edges, edge_costs = problem
    with pytest.raises(ValueError, match="greedy-additive"):
        solve_multicut(number_of_nodes, edges, edge_costs, solver="ilp")
    with pytest.raises(ValueError, match="edge_costs"):
        solve_multicut(number_of_nodes, edges, edge_costs[:-1])
    with pytest.raises(ValueError, match="NaN"):
        solve_multicut(number_of_nodes, edges, np.full(len(edges), np.nan))
    with pytest.raises(ValueError, match="number_of_nodes"):
        solve_multicut(int(edges.max()), edges, edge_costs)
