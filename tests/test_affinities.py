"""Training targets and affinity-derived boundaries, checked against independent implementations."""

import numpy as np
import pytest
from bioimage_cpp.affinities import compute_affinities

from emflow.affinities import NEAREST_OFFSETS, affinities_from_labels, boundaries_from_affinities, boundary_target
from emflow.boundaries import boundaries_from_labels

OFFSETS = list(NEAREST_OFFSETS) + [(-3, 0, 0), (0, -9, 0), (0, 0, -9), (2, 1, 0)]


@pytest.fixture
def labels(flyem_crop):
    return flyem_crop["neuron_ids"][:24, :48, :48].astype(np.int64)


def test_affinities_equal_bioimage_cpp_on_dense_ground_truth(labels):
    # bioimage-cpp gives two voxels of label 0 affinity 1; emflow treats 0 as boundary. Without
    # zeros the two must agree.
    labels = np.where(labels == 0, labels.max() + 1, labels)
    affinities, mask = affinities_from_labels(labels, OFFSETS)
    expected, expected_mask = compute_affinities(labels.astype(np.uint64), np.array(OFFSETS))
    np.testing.assert_array_equal(affinities, expected)
    np.testing.assert_array_equal(mask, expected_mask.astype(np.float32))
    assert 0 < affinities[mask > 0].mean() < 1


def test_label_zero_has_affinity_zero_to_everything(labels):
    with_boundaries = labels.copy()
    with_boundaries[boundary_target(labels) > 0] = 0
    affinities, mask = affinities_from_labels(with_boundaries, OFFSETS)
    expected, expected_mask = compute_affinities(with_boundaries.astype(np.uint64), np.array(OFFSETS))
    for channel, offset in enumerate(OFFSETS):
        shifted = np.zeros_like(with_boundaries)
        here = tuple(slice(max(-step, 0), size - max(step, 0)) for step, size in zip(offset, labels.shape))
        there = tuple(slice(max(step, 0), size - max(-step, 0)) for step, size in zip(offset, labels.shape))
        shifted[here] = with_boundaries[there]
        both_labelled = (with_boundaries != 0) & (shifted != 0)
        np.testing.assert_array_equal(affinities[channel], expected[channel] * both_labelled)
    np.testing.assert_array_equal(mask, expected_mask.astype(np.float32))


def test_boundary_target_equals_the_unsmoothed_synthetic_boundaries(labels):
    np.testing.assert_array_equal(boundary_target(labels), boundaries_from_labels(labels, sigma=0, noise=0))


def test_boundaries_from_ground_truth_affinities_mark_exactly_the_boundary_voxels(labels):
    affinities, _ = affinities_from_labels(labels, OFFSETS)
    boundaries = boundaries_from_affinities(affinities, OFFSETS)
    assert boundaries.dtype == np.float32 and boundaries.shape == labels.shape
    np.testing.assert_array_equal(boundaries > 0, boundary_target(labels) > 0)
    assert boundaries.max() <= 1 and boundaries.min() >= 0


@pytest.mark.parametrize("shape", [(4, 5, 6), (1, 3, 4), (3, 1, 1), (1, 1, 1)])
def test_boundaries_are_one_less_the_mean_affinity_to_the_neighbours_inside_the_array(shape):
    rng = np.random.default_rng(sum(shape))
    affinities = rng.random((len(OFFSETS),) + shape, dtype=np.float32)
    expected = np.ones(shape, dtype=np.float32)
    for voxel in np.ndindex(shape):
        # The affinity to the neighbour one voxel back along an axis is stored at the voxel, the
        # one to the neighbour one voxel on at that neighbour.
        values = []
        for axis in range(3):
            channel = affinities[OFFSETS.index(tuple(-1 if other == axis else 0 for other in range(3)))]
            if voxel[axis] >= 1:
                values.append(channel[voxel])
            if voxel[axis] + 1 < shape[axis]:
                values.append(channel[tuple(index + (other == axis) for other, index in enumerate(voxel))])
        if values:
            expected[voxel] = 1 - np.float32(sum(values)) / len(values)
    np.testing.assert_allclose(boundaries_from_affinities(affinities, OFFSETS), expected, rtol=0, atol=1e-6)


def test_boundaries_of_a_box_grown_by_one_voxel_equal_the_whole_volumes(labels):
    rng = np.random.default_rng(0)
    affinities = rng.random((len(OFFSETS),) + labels.shape, dtype=np.float32)
    whole = boundaries_from_affinities(affinities, OFFSETS)
    begin, end = (5, 10, 0), (17, 30, 20)
    grown = tuple(slice(max(first - 1, 0), min(last + 1, size)) for first, last, size in zip(begin, end, labels.shape))
    part = boundaries_from_affinities(affinities[(slice(None),) + grown], OFFSETS)
    inner = tuple(slice(first - slicing.start, last - slicing.start) for first, last, slicing in zip(begin, end, grown))
    np.testing.assert_array_equal(part[inner], whole[tuple(slice(first, last) for first, last in zip(begin, end))])


@pytest.mark.parametrize(
    "offsets, message",
    [([], "non-empty"), ([(0, 0, 0)], "(0, 0, 0)"), ([(1, 0)], "3 integers"), ([(0.5, 0, 0)], "3 integers")],
)
def test_bad_offsets_are_named(labels, offsets, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        affinities_from_labels(labels, offsets)


def test_boundaries_need_the_nearest_neighbour_channels():
    with pytest.raises(ValueError, match="nearest-neighbour"):
        boundaries_from_affinities(np.zeros((2, 4, 4, 4), np.float32), [(-1, 0, 0), (0, -1, 0)])
