import numpy as np
import pytest
from bioimage_cpp import graph as bic_graph
from bioimage_cpp.graph.features import lifted_affinity_features
from bioimage_cpp.graph.features import lifted_edges_from_affinities as bic_lifted_edges
from test_affinity_statistics import OFFSETS, noisy_affinities

from emflow.affinity_statistics import (
    block_pair_statistics,
    long_range_channels,
    merge_pair_statistics,
    nearest_neighbour_channels,
    pair_statistics,
    statistics_halo,
)
from emflow.blocking import Blocking, Box
from emflow.costs import probabilities_to_costs
from emflow.labels import label_overlaps, majority_labels, relabel_consecutive
from emflow.lifted_edges import lifted_edges_from_affinities
from emflow.multicut import solve_lifted_multicut, solve_multicut


@pytest.fixture(scope="module")
def problem(flyem_crop):
    supervoxels, _ = relabel_consecutive(flyem_crop["oversegmentation"])
    affinities = noisy_affinities(flyem_crop["neuron_ids"], noise=0.3, seed=1)
    number_of_nodes = int(supervoxels.max()) + 1
    local = pair_statistics(supervoxels, affinities, OFFSETS, channels=nearest_neighbour_channels(OFFSETS))
    return number_of_nodes, supervoxels, affinities, local


def test_blockwise_lifted_edges_equal_in_memory(problem):
    number_of_nodes, supervoxels, affinities, local = problem
    channels = long_range_channels(OFFSETS)
    blocking = Blocking(supervoxels.shape, (32, 48, 56))
    halo = statistics_halo(OFFSETS, channels)
    parts = []
    for block_id in range(blocking.number_of_blocks):
        inner = blocking.block(block_id)
        outer = Box(inner.begin, tuple(min(end + step, size) for end, step, size in zip(inner.end, halo, supervoxels.shape)))
        parts.append(
            block_pair_statistics(
                supervoxels[outer.slicing], affinities[(slice(None),) + outer.slicing], OFFSETS, inner.local_to(outer), channels=channels
            )
        )
    blockwise = lifted_edges_from_affinities(number_of_nodes, local.pairs, merge_pair_statistics(parts), beta=0.4)
    in_memory = lifted_edges_from_affinities(
        number_of_nodes, local.pairs, pair_statistics(supervoxels, affinities, OFFSETS, channels=channels), beta=0.4
    )
    assert len(in_memory[0]) > 500
    assert np.array_equal(blockwise[0], in_memory[0])
    assert np.array_equal(blockwise[1], in_memory[1])


def test_lifted_edges_match_bioimage_cpp(problem):
    """Pairs that are local edges are dropped, as bioimage-cpp does; costs are the log-odds of its mean affinities."""
    number_of_nodes, supervoxels, affinities, local = problem
    lifted_edges, lifted_costs = lifted_edges_from_affinities(
        number_of_nodes, local.pairs, pair_statistics(supervoxels, affinities, OFFSETS, channels=long_range_channels(OFFSETS))
    )
    rag = bic_graph.region_adjacency_graph(supervoxels)
    reference_edges = bic_lifted_edges(rag, supervoxels, OFFSETS, number_of_threads=1)
    assert np.array_equal(lifted_edges, reference_edges)
    reference_means = lifted_affinity_features(supervoxels, affinities, OFFSETS, reference_edges, number_of_threads=1)[:, 0]
    np.testing.assert_allclose(lifted_costs, probabilities_to_costs(1 - reference_means), rtol=0, atol=1e-5)


def test_lifted_costs_follow_the_groundtruth(problem, flyem_crop):
    """Lifted edges within one neuron attract and between neurons repel, and they help a noisy local problem."""
    number_of_nodes, supervoxels, affinities, local = problem
    long_range = pair_statistics(supervoxels, affinities, OFFSETS, channels=long_range_channels(OFFSETS))
    lifted_edges, lifted_costs = lifted_edges_from_affinities(number_of_nodes, local.pairs, long_range)
    node_labels = majority_labels(number_of_nodes, *label_overlaps(supervoxels, flyem_crop["neuron_ids"]))
    same = node_labels[lifted_edges[:, 0]] == node_labels[lifted_edges[:, 1]]
    assert 0.2 < same.mean() < 0.8
    # Pairs seen by many voxel pairs average the noise out (supervoxels that straddle two neurons remain).
    counts = long_range.counts[
        np.isin(
            long_range.pairs[:, 0] * number_of_nodes + long_range.pairs[:, 1], lifted_edges[:, 0] * number_of_nodes + lifted_edges[:, 1]
        )
    ]
    assert ((lifted_costs > 0) == same)[counts >= 50].mean() > 0.98

    def wrong_local_edges(solution):
        truly_joined = node_labels[local.pairs[:, 0]] == node_labels[local.pairs[:, 1]]
        return (truly_joined != (solution[local.pairs[:, 0]] == solution[local.pairs[:, 1]])).mean()

    local_costs = probabilities_to_costs(1 - local.mean())
    with_lifted = wrong_local_edges(solve_lifted_multicut(number_of_nodes, local.pairs, local_costs, lifted_edges, lifted_costs))
    without = wrong_local_edges(solve_multicut(number_of_nodes, local.pairs, local_costs))
    assert with_lifted < 0.75 * without  # measured: 4.5 % against 8.6 %


def test_rejects_pairs_beyond_the_nodes(problem):
    number_of_nodes, _, _, local = problem
    with pytest.raises(ValueError, match="number_of_nodes"):
        lifted_edges_from_affinities(10, local.pairs[:1], local)
