import numpy as np
import pytest

from emflow.blocking import Blocking
from emflow.boundaries import boundaries_from_labels
from emflow.graph import (
    FEATURE_NAMES,
    STATISTICS_COLUMNS,
    block_edge_statistics,
    connected_components,
    in_core_graph_features,
    merge_edge_features,
    merge_edges,
    undirected_graph,
)
from emflow.labels import relabel_consecutive
from emflow.supervoxels import distance_transform_watershed

SIZE = FEATURE_NAMES.index("size")
Z_SIZE = FEATURE_NAMES.index("z_size")


@pytest.fixture(scope="module")
def problem(flyem_crop):
    supervoxels, _ = relabel_consecutive(flyem_crop["oversegmentation"])
    boundaries = boundaries_from_labels(flyem_crop["neuron_ids"])
    return supervoxels, boundaries


def _blockwise_graph(supervoxels, boundaries, block_shape):
    blocking = Blocking(supervoxels.shape, block_shape)
    block_results = []
    for block_id in range(blocking.number_of_blocks):
        outer, own_box = blocking.block_with_halo(block_id, (1, 1, 1))
        block_results.append(block_edge_statistics(supervoxels[outer.slicing], boundaries[outer.slicing], own_box))
    edges = merge_edges([block_edges for block_edges, _ in block_results])
    number_of_nodes = int(supervoxels.max()) + 1
    # A generator, as when the workflow streams block results from storage.
    features = merge_edge_features(number_of_nodes, edges, (result for result in block_results))
    return edges, features


def _reference_graph(supervoxels, boundaries, owned=None):
    """Edges, pair counts, mean boundary values and z-pair counts by brute force over voxel pairs.

    With ``owned`` (bool, volume shape), only pairs whose first voxel is owned count.
    """
    owned = np.ones(supervoxels.shape, dtype=bool) if owned is None else owned
    pairs, values, crossing = [], [], []
    for axis in range(supervoxels.ndim):
        lower = [slice(None)] * supervoxels.ndim
        upper = [slice(None)] * supervoxels.ndim
        lower[axis], upper[axis] = slice(None, -1), slice(1, None)
        u, v = supervoxels[tuple(lower)].ravel(), supervoxels[tuple(upper)].ravel()
        value = (boundaries[tuple(lower)].ravel().astype(np.float64) + boundaries[tuple(upper)].ravel()) / 2
        cross = (u != v) & (u != 0) & (v != 0) & owned[tuple(lower)].ravel()
        pairs.append(np.sort(np.stack([u[cross], v[cross]], axis=1), axis=1))
        values.append(value[cross])
        crossing.append(np.full(cross.sum(), axis == 0))
    pairs, values, crossing = np.concatenate(pairs), np.concatenate(values), np.concatenate(crossing)
    edges, inverse, sizes = np.unique(pairs, axis=0, return_inverse=True, return_counts=True)
    means = np.bincount(inverse.ravel(), weights=values) / sizes
    z_sizes = np.bincount(inverse.ravel(), weights=crossing, minlength=len(edges))
    return edges, sizes, means, z_sizes


@pytest.mark.parametrize("block_shape", [(24, 48, 40), (16, 128, 33)])
def test_blockwise_graph_equals_in_core_graph(problem, block_shape):
    supervoxels, boundaries = problem
    edges, features, number_of_nodes = in_core_graph_features(supervoxels, boundaries)
    assert number_of_nodes == supervoxels.max() + 1
    assert features.shape == (len(edges), len(FEATURE_NAMES)) and features.dtype == np.float64

    block_edges, block_features = _blockwise_graph(supervoxels, boundaries, block_shape)
    assert block_edges.dtype == np.uint64
    assert np.array_equal(block_edges, edges)
    np.testing.assert_array_equal(block_features[:, SIZE], features[:, SIZE])
    np.testing.assert_array_equal(block_features[:, Z_SIZE], features[:, Z_SIZE])
    np.testing.assert_allclose(block_features, features, rtol=1e-10, atol=0)


def test_in_core_graph_matches_brute_force(problem):
    supervoxels, boundaries = problem
    edges, features, _ = in_core_graph_features(supervoxels, boundaries)
    reference_edges, reference_sizes, reference_means, reference_z_sizes = _reference_graph(supervoxels, boundaries)
    np.testing.assert_array_equal(edges, reference_edges)
    np.testing.assert_array_equal(features[:, SIZE], reference_sizes)
    np.testing.assert_array_equal(features[:, Z_SIZE], reference_z_sizes)
    # 3D supervoxels of isotropic data: most edges have pairs of both orientations.
    assert ((features[:, Z_SIZE] > 0) & (features[:, Z_SIZE] < features[:, SIZE])).mean() > 0.5
    np.testing.assert_allclose(features[:, FEATURE_NAMES.index("mean")], reference_means, rtol=1e-10)
    assert (features[:, FEATURE_NAMES.index("min")] <= features[:, FEATURE_NAMES.index("mean")]).all()
    assert (features[:, FEATURE_NAMES.index("mean")] <= features[:, FEATURE_NAMES.index("max")]).all()
    assert (np.diff(edges[:, 0].astype(np.int64)) >= 0).all() and (edges[:, 0] < edges[:, 1]).all()


def test_background_has_no_edges_blockwise_or_in_core(problem, flyem_crop):
    supervoxels, boundaries = problem
    neuron_ids = flyem_crop["neuron_ids"]
    largest_neuron = np.bincount(neuron_ids.ravel()).argmax()
    masked = np.where(neuron_ids == largest_neuron, 0, supervoxels).astype(np.uint64)

    edges, features, _ = in_core_graph_features(masked, boundaries)
    assert len(edges) > 0 and (edges != 0).all()
    reference_edges, reference_sizes, _, reference_z_sizes = _reference_graph(masked, boundaries)
    np.testing.assert_array_equal(edges, reference_edges)
    np.testing.assert_array_equal(features[:, SIZE], reference_sizes)
    np.testing.assert_array_equal(features[:, Z_SIZE], reference_z_sizes)

    block_edges, block_features = _blockwise_graph(masked, boundaries, (24, 48, 40))
    assert np.array_equal(block_edges, edges)
    np.testing.assert_allclose(block_features, features, rtol=1e-10, atol=0)


def test_block_edge_statistics_count_only_owned_pairs(problem):
    supervoxels, boundaries = problem
    blocking = Blocking(supervoxels.shape, (32, 64, 64))
    outer, own_box = blocking.block_with_halo(0, (1, 1, 1))
    edges, stats = block_edge_statistics(supervoxels[outer.slicing], boundaries[outer.slicing], own_box)
    assert stats.shape == (len(edges), len(STATISTICS_COLUMNS)) and edges.dtype == np.uint64

    # The first block, and the last, read with a halo on its backward faces too: pairs reaching
    # into the halo count only when their first voxel is the block's own.
    for block_id in (0, blocking.number_of_blocks - 1):
        outer, own_box = blocking.block_with_halo(block_id, (1, 1, 1))
        edges, stats = block_edge_statistics(supervoxels[outer.slicing], boundaries[outer.slicing], own_box)
        owned = np.zeros(supervoxels.shape, dtype=bool)
        owned[blocking.block(block_id).slicing] = True
        reference_edges, reference_sizes, _, reference_z_sizes = _reference_graph(supervoxels, boundaries, owned)
        np.testing.assert_array_equal(edges, reference_edges)
        np.testing.assert_array_equal(stats[:, STATISTICS_COLUMNS.index("count")], reference_sizes)
        np.testing.assert_array_equal(stats[:, STATISTICS_COLUMNS.index("z_count")], reference_z_sizes)


def test_edges_of_per_section_supervoxels_lie_either_between_sections_or_in_plane(flyem_crop):
    # Serial-section-like data: every 4th section of the FlyEM crop (40 x 10 x 10 nm), supervoxels per section.
    labels = np.ascontiguousarray(flyem_crop["neuron_ids"][::4])
    boundaries = boundaries_from_labels(labels)
    supervoxels = distance_transform_watershed(boundaries, resolution=(40, 10, 10), two_d=True)
    edges, features, _ = in_core_graph_features(supervoxels, boundaries)
    z_sizes, sizes = features[:, Z_SIZE], features[:, SIZE]
    between_sections = z_sizes == sizes
    assert (between_sections | (z_sizes == 0)).all()
    # The z-edges are the overlapping region pairs of consecutive sections, counted by brute force.
    lower, upper = supervoxels[:-1].ravel(), supervoxels[1:].ravel()
    overlaps = np.unique(np.sort(np.stack([lower, upper], axis=1), axis=1), axis=0)
    np.testing.assert_array_equal(edges[between_sections], overlaps)
    assert 0.3 < between_sections.mean() < 0.9

    block_edges, block_features = _blockwise_graph(supervoxels, boundaries, (5, 48, 40))
    np.testing.assert_array_equal(block_edges, edges)
    np.testing.assert_array_equal(block_features[:, Z_SIZE], z_sizes)
    np.testing.assert_allclose(block_features, features, rtol=1e-10, atol=0)


def test_merge_edges_and_undirected_graph():
    parts = [np.array([[1, 2], [3, 4]], np.uint64), np.array([[1, 2], [2, 5]], np.uint64)]
    edges = merge_edges(parts)
    np.testing.assert_array_equal(edges, [[1, 2], [2, 5], [3, 4]])
    assert merge_edges([]).shape == (0, 2)

    graph = undirected_graph(6, edges)
    assert graph.number_of_nodes == 6 and graph.number_of_edges == 3
    np.testing.assert_array_equal(graph.uv_ids(), edges)
    np.testing.assert_array_equal(graph.find_edges(np.array([[5, 2], [1, 3]], np.uint64)), [1, -1])


def test_undirected_graph_rejects_edges_that_are_not_canonical():
    for edges in ([[2, 1]], [[1, 1]], [[1, 3], [1, 2]], [[1, 2], [1, 2]]):
        with pytest.raises(ValueError, match="sorted"):
            undirected_graph(4, np.array(edges, np.uint64))
    with pytest.raises(ValueError, match="number_of_nodes"):
        undirected_graph(3, np.array([[1, 3]], np.uint64))
    assert undirected_graph(3, np.empty((0, 2), np.uint64)).number_of_edges == 0


@pytest.mark.parametrize("number_of_nodes, number_of_edges", [(0, 0), (1, 3), (50, 20), (5000, 4000)])
def test_connected_components_equal_scipys(number_of_nodes, number_of_edges):
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components as scipy_connected_components

    rng = np.random.default_rng(number_of_nodes)
    # Repeated edges, self-loops and both orientations, as merge lists hold them.
    edges = rng.integers(0, max(number_of_nodes, 1), (number_of_edges if number_of_nodes else 0, 2))
    adjacency = coo_matrix((np.ones(len(edges), np.int8), (edges[:, 0], edges[:, 1])), shape=(number_of_nodes, number_of_nodes))
    np.testing.assert_array_equal(connected_components(number_of_nodes, edges), scipy_connected_components(adjacency, directed=False)[1])
    with pytest.raises(ValueError, match="number_of_nodes"):
        connected_components(2, np.array([[0, 2]]))
