import numpy as np
import pytest

from emflow.boundaries import boundaries_from_labels
from emflow.costs import edge_costs_from_features, probabilities_to_costs
from emflow.graph import FEATURE_NAMES, in_core_graph_features
from emflow.labels import relabel_consecutive
from emflow.supervoxels import distance_transform_watershed


@pytest.fixture(scope="module")
def graph_features(flyem_crop):
    supervoxels, _ = relabel_consecutive(flyem_crop["oversegmentation"])
    _, features, _ = in_core_graph_features(supervoxels, boundaries_from_labels(flyem_crop["neuron_ids"]))
    return features


@pytest.fixture(scope="module")
def edge_features(graph_features):
    return graph_features[:, FEATURE_NAMES.index("mean")], graph_features[:, FEATURE_NAMES.index("size")]


@pytest.fixture(scope="module")
def per_section_features(flyem_crop):
    """Features of per-section supervoxels of every 4th section of the crop (40 x 10 x 10 nm)."""
    labels = np.ascontiguousarray(flyem_crop["neuron_ids"][::4])
    boundaries = boundaries_from_labels(labels)
    supervoxels = distance_transform_watershed(boundaries, resolution=(40, 10, 10), two_d=True)
    return in_core_graph_features(supervoxels, boundaries)[1]


def test_costs_are_log_odds_with_boundary_bias(edge_features):
    probabilities, _ = edge_features
    for beta in (0.3, 0.5, 0.7):
        costs = probabilities_to_costs(probabilities, beta=beta)
        assert costs.dtype == np.float64 and costs.shape == probabilities.shape
        p = np.clip(probabilities, 1e-3, 1 - 1e-3)
        np.testing.assert_allclose(costs, np.log((1 - p) / p) + np.log((1 - beta) / beta), rtol=1e-12)

    costs = probabilities_to_costs(probabilities)
    # Positive = attractive: low boundary evidence merges, high evidence cuts.
    assert ((costs > 0) == (probabilities < 0.5)).all()
    order = np.argsort(probabilities, kind="stable")
    assert (np.diff(costs[order]) <= 0).all()
    assert (probabilities_to_costs(probabilities, beta=0.7) < costs).all()


def test_extreme_probabilities_stay_finite():
    costs = probabilities_to_costs(np.array([0.0, 0.5, 1.0]))
    assert np.isfinite(costs).all()
    np.testing.assert_allclose(costs, [np.log(999.0), 0.0, -np.log(999.0)], rtol=1e-9, atol=1e-12)


def test_size_weighting_scales_by_relative_edge_size(edge_features):
    probabilities, sizes = edge_features
    weighted = probabilities_to_costs(probabilities, edge_sizes=sizes, weighting="size")
    unweighted = probabilities_to_costs(probabilities)
    np.testing.assert_allclose(weighted, unweighted * sizes / sizes.max(), rtol=1e-12)
    largest = np.argmax(sizes)
    assert weighted[largest] == unweighted[largest]
    assert (np.abs(weighted) <= np.abs(unweighted)).all()


def test_orientation_weighting_normalises_z_and_in_plane_edges_apart(per_section_features):
    probabilities = per_section_features[:, FEATURE_NAMES.index("mean")]
    sizes, z_sizes = per_section_features[:, FEATURE_NAMES.index("size")], per_section_features[:, FEATURE_NAMES.index("z_size")]
    between_sections = z_sizes == sizes
    weighted = probabilities_to_costs(probabilities, beta=0.4, edge_sizes=sizes, z_sizes=z_sizes, weighting="orientation")
    unweighted = probabilities_to_costs(probabilities, beta=0.4)
    # Per-section supervoxels: each edge is of one kind, and each kind is scaled by its own largest edge.
    for kind in (between_sections, ~between_sections):
        np.testing.assert_allclose(weighted[kind], unweighted[kind] * sizes[kind] / sizes[kind].max(), rtol=1e-12)
    # The overlaps between sections are far larger than the in-plane contact lines (here the largest
    # 50x): one size scale would shrink the in-plane costs by that factor.
    assert sizes[between_sections].max() > 10 * sizes[~between_sections].max()


def test_orientation_weighting_of_mixed_edges(graph_features):
    probabilities = graph_features[:, FEATURE_NAMES.index("mean")]
    sizes, z_sizes = graph_features[:, FEATURE_NAMES.index("size")], graph_features[:, FEATURE_NAMES.index("z_size")]
    weighted = probabilities_to_costs(probabilities, edge_sizes=sizes, z_sizes=z_sizes, weighting="orientation")
    in_plane = sizes - z_sizes
    expected = probabilities_to_costs(probabilities) * (z_sizes / z_sizes.max() + in_plane / in_plane.max())
    np.testing.assert_allclose(weighted, expected, rtol=1e-12)
    # Without pairs of one orientation, that term drops out and it is size weighting.
    np.testing.assert_allclose(
        probabilities_to_costs(probabilities, edge_sizes=sizes, z_sizes=np.zeros_like(sizes), weighting="orientation"),
        probabilities_to_costs(probabilities, edge_sizes=sizes, weighting="size"),
        rtol=1e-12,
    )


def test_invalid_cost_parameters():
    probabilities = np.array([0.2, 0.8])
    for beta in (0.0, 1.0, -0.5, 1.5):
        with pytest.raises(ValueError, match="beta"):
            probabilities_to_costs(probabilities, beta=beta)
    with pytest.raises(ValueError, match="NaN"):
        probabilities_to_costs(np.array([0.2, np.nan]))
    with pytest.raises(ValueError, match="weighting"):
        probabilities_to_costs(probabilities, weighting="area")
    with pytest.raises(ValueError, match="edge_sizes"):
        probabilities_to_costs(probabilities, weighting="size")
    with pytest.raises(ValueError, match="edge_sizes"):
        probabilities_to_costs(probabilities, edge_sizes=np.array([1.0]), weighting="size")
    with pytest.raises(ValueError, match="edge_sizes"):
        probabilities_to_costs(probabilities, edge_sizes=np.array([1.0, 0.0]), weighting="size")
    with pytest.raises(ValueError, match="z_sizes"):
        probabilities_to_costs(probabilities, edge_sizes=np.array([1.0, 2.0]), weighting="orientation")
    with pytest.raises(ValueError, match="z_sizes"):
        probabilities_to_costs(probabilities, edge_sizes=np.array([1.0, 2.0]), z_sizes=np.array([0.0, 3.0]), weighting="orientation")


@pytest.mark.parametrize("weighting", ["none", "size", "orientation"])
def test_costs_from_graph_features_use_mean_and_sizes(graph_features, edge_features, weighting):
    probabilities, sizes = edge_features
    z_sizes = graph_features[:, FEATURE_NAMES.index("z_size")]
    np.testing.assert_array_equal(
        edge_costs_from_features(graph_features, beta=0.4, weighting=weighting),
        probabilities_to_costs(probabilities, beta=0.4, edge_sizes=sizes, z_sizes=z_sizes, weighting=weighting),
    )
    with pytest.raises(ValueError, match="shape"):
        edge_costs_from_features(graph_features[:, :4])
