import numpy as np
import pytest
from bioimage_cpp import graph as bic_graph
from bioimage_cpp.graph.features import affinity_features

from emflow.affinities import affinities_from_labels
from emflow.affinity_statistics import (
    FIXED_POINT_SCALE,
    PairStatistics,
    block_boundary_pair_statistics,
    block_pair_statistics,
    boundary_pair_statistics,
    long_range_channels,
    merge_pair_statistics,
    nearest_neighbour_channels,
    pair_statistics,
    quantile_ranks,
    statistics_halo,
)
from emflow.blocking import Blocking, Box
from emflow.boundaries import boundaries_from_labels
from emflow.graph import FEATURE_NAMES, in_core_graph_features
from emflow.labels import relabel_consecutive

OFFSETS = [(-1, 0, 0), (0, -1, 0), (0, 0, -1), (-3, 0, 0), (0, -3, 0), (0, 0, -3), (-9, 0, 0), (0, -9, 0), (0, 0, -9)]
FIELDS = PairStatistics.__dataclass_fields__


def noisy_affinities(labels, offsets=OFFSETS, noise=0.2, seed=0):
    affinities, _ = affinities_from_labels(labels, offsets)
    rng = np.random.default_rng(seed)
    return np.clip(affinities + noise * rng.standard_normal(affinities.shape, dtype=np.float32), 0, 1)


@pytest.fixture(scope="module")
def problem(flyem_crop):
    supervoxels, _ = relabel_consecutive(flyem_crop["oversegmentation"])
    return supervoxels, noisy_affinities(flyem_crop["neuron_ids"]), boundaries_from_labels(flyem_crop["neuron_ids"], noise=0.3)


def assert_equal_statistics(left, right):
    for name in FIELDS:
        assert np.array_equal(getattr(left, name), getattr(right, name)), name
        assert getattr(left, name).dtype == getattr(right, name).dtype, name


def blockwise(supervoxels, block_shape, halo, block_function):
    """Merge of the block results of a blocking, each block read with a forward halo."""
    blocking = Blocking(supervoxels.shape, block_shape)
    parts = []
    for block_id in range(blocking.number_of_blocks):
        inner = blocking.block(block_id)
        outer = Box(inner.begin, tuple(min(end + step, size) for end, step, size in zip(inner.end, halo, supervoxels.shape)))
        parts.append(block_function(outer.slicing, inner.local_to(outer)))
    # Reversed, so that the merge cannot rely on the blocks' order.
    return merge_pair_statistics(parts[::-1])


@pytest.mark.parametrize("block_shape", [(24, 48, 40), (64, 33, 128)])
@pytest.mark.parametrize("channel_group", ["nearest", "long-range"])
def test_blockwise_statistics_equal_whole_volume(problem, block_shape, channel_group):
    supervoxels, affinities, _ = problem
    channels = nearest_neighbour_channels(OFFSETS) if channel_group == "nearest" else long_range_channels(OFFSETS)
    halo = statistics_halo(OFFSETS, channels)
    assert halo == ((1, 1, 1) if channel_group == "nearest" else (9, 9, 9))

    def block_function(slicing, own_box):
        return block_pair_statistics(supervoxels[slicing], affinities[(slice(None),) + slicing], OFFSETS, own_box, channels=channels)

    merged = blockwise(supervoxels, block_shape, halo, block_function)
    whole = pair_statistics(supervoxels, affinities, OFFSETS, channels=channels)
    assert len(whole) > 500
    assert_equal_statistics(merged, whole)


def test_blockwise_boundary_statistics_equal_whole_volume(problem):
    supervoxels, _, boundaries = problem

    def block_function(slicing, own_box):
        return block_boundary_pair_statistics(supervoxels[slicing], boundaries[slicing], own_box)

    merged = blockwise(supervoxels, (24, 48, 40), (1, 1, 1), block_function)
    assert_equal_statistics(merged, boundary_pair_statistics(supervoxels, boundaries))


def test_merge_is_associative(problem):
    supervoxels, affinities, _ = problem
    parts = [pair_statistics(supervoxels[z : z + 16], affinities[:, z : z + 16], OFFSETS) for z in range(0, 64, 16)]
    assert_equal_statistics(
        merge_pair_statistics([merge_pair_statistics(parts[:2]), merge_pair_statistics(parts[2:])]),
        merge_pair_statistics(parts),
    )


def test_nearest_neighbour_statistics_match_bioimage_cpp(problem):
    """Edges are the region graph's, counts exact, means those of bioimage-cpp's affinity features to the fixed-point step."""
    supervoxels, affinities, _ = problem
    channels = nearest_neighbour_channels(OFFSETS)
    statistics = pair_statistics(supervoxels, affinities, OFFSETS, channels=channels)
    rag = bic_graph.region_adjacency_graph(supervoxels)
    reference = affinity_features(rag, supervoxels, affinities[channels], [OFFSETS[c] for c in channels], number_of_threads=1)
    assert np.array_equal(statistics.pairs, rag.uv_ids())
    assert np.array_equal(statistics.counts, reference[:, 1].astype(np.int64))
    np.testing.assert_allclose(statistics.mean(), reference[:, 0], rtol=0, atol=1 / FIXED_POINT_SCALE)


def test_boundary_statistics_match_region_graph_features(problem):
    supervoxels, _, boundaries = problem
    edges, features, _ = in_core_graph_features(supervoxels, boundaries)
    statistics = boundary_pair_statistics(supervoxels, boundaries)
    assert np.array_equal(statistics.pairs, edges)
    assert np.array_equal(statistics.counts, features[:, FEATURE_NAMES.index("size")].astype(np.int64))
    np.testing.assert_allclose(1 - statistics.mean(), features[:, FEATURE_NAMES.index("mean")], rtol=0, atol=1 / FIXED_POINT_SCALE)


def test_histograms_and_quantiles_match_brute_force(problem):
    """Histogram and quantiles of every edge from the sorted affinities of its voxel pairs."""
    supervoxels, affinities, _ = problem
    supervoxels, affinities = supervoxels[:32, :64, :64], affinities[:3, :32, :64, :64]
    statistics = pair_statistics(supervoxels, affinities, OFFSETS[:3])
    pairs, values = [], []
    for axis in range(3):
        lower = tuple(slice(0, -1) if a == axis else slice(None) for a in range(3))
        upper = tuple(slice(1, None) if a == axis else slice(None) for a in range(3))
        u, v = supervoxels[lower].ravel(), supervoxels[upper].ravel()
        cross = u != v
        pairs.append(np.sort(np.stack([u[cross], v[cross]], axis=1), axis=1))
        # Channel `axis` at the upper voxel holds the affinity to the lower one.
        values.append(affinities[axis][upper].ravel()[cross])
    pairs, values = np.concatenate(pairs), np.concatenate(values).astype(np.float64)
    edges, inverse = np.unique(pairs, axis=0, return_inverse=True)
    assert np.array_equal(edges, statistics.pairs)
    histograms = statistics.dense_histograms()
    assert np.array_equal(histograms.sum(axis=1), statistics.counts)
    for q in (0.0, 0.25, 0.5, 1.0):
        quantiles = statistics.quantile(q)
        ranks = quantile_ranks(statistics.counts, q)
        for edge in range(len(edges)):
            edge_values = np.sort(values[inverse.ravel() == edge])
            assert np.array_equal(np.bincount(np.minimum((edge_values * 256).astype(int), 255), minlength=256), histograms[edge])
            expected_bin = min(int(edge_values[ranks[edge] - 1] * 256), 255)
            assert quantiles[edge] == (expected_bin + 0.5) / 256


def test_select_keeps_rows_and_histograms(problem):
    supervoxels, affinities, _ = problem
    statistics = pair_statistics(supervoxels, affinities, OFFSETS)
    keep = np.arange(len(statistics)) % 3 == 1
    selected = statistics.select(keep)
    assert np.array_equal(selected.pairs, statistics.pairs[keep])
    assert np.array_equal(selected.dense_histograms(), statistics.dense_histograms()[keep])
    assert np.array_equal(selected.quantile(0.5), statistics.quantile(0.5)[keep])


def test_no_pairs_give_empty_statistics():
    labels = np.ones((4, 5, 6), dtype=np.uint64)
    statistics = pair_statistics(labels, np.ones((3, 4, 5, 6), np.float32), OFFSETS[:3])
    assert statistics.pairs.shape == (0, 2) and len(statistics.histogram_offsets) == 1
    assert_equal_statistics(merge_pair_statistics([statistics, statistics]), statistics)
    assert len(merge_pair_statistics([])) == 0


def test_sparse_global_ids_give_the_same_statistics(problem):
    """Ids spanning more than int64 keys allow (e.g. block offsets in a huge volume) are made dense first."""
    supervoxels, affinities, _ = problem
    supervoxels, affinities = supervoxels[:32], affinities[:, :32]
    spread = np.uint64(10**12)
    sparse = supervoxels.astype(np.uint64) * spread
    dense_statistics = pair_statistics(supervoxels, affinities, OFFSETS)
    sparse_statistics = pair_statistics(sparse, affinities, OFFSETS)
    assert np.array_equal(sparse_statistics.pairs, dense_statistics.pairs * spread)
    for name in FIELDS:
        if name != "pairs":
            assert np.array_equal(getattr(sparse_statistics, name), getattr(dense_statistics, name)), name
