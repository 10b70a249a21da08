import numpy as np
import pytest
from bioimage_cpp.distance import distance_transform
from bioimage_cpp.filters import gaussian_smoothing
from bioimage_cpp.segmentation import watershed
from scipy import ndimage
from skimage.morphology import local_maxima as skimage_local_maxima

from emflow.boundaries import boundaries_from_labels
from emflow.supervoxels import distance_transform_watershed, local_maxima, size_filter, use_two_d

MIN_SIZE = 25


@pytest.fixture(scope="module")
def boundaries(flyem_crop):
    return boundaries_from_labels(flyem_crop["neuron_ids"])


@pytest.fixture(scope="module")
def supervoxels(boundaries):
    return distance_transform_watershed(boundaries, resolution=(10.0, 10.0, 10.0), min_size=MIN_SIZE)


def _assert_consecutive(labels):
    ids = np.unique(labels)
    np.testing.assert_array_equal(ids[ids != 0], np.arange(1, labels.max() + 1))


def _largest_overlap_fraction(segmentation, reference):
    """Fraction of voxels that lie in the reference object a segment overlaps most."""
    stride = np.uint64(reference.max()) + np.uint64(1)
    pairs, counts = np.unique(segmentation * stride + reference.astype(np.uint64), return_counts=True)
    best = np.zeros(int(segmentation.max()) + 1)
    np.maximum.at(best, (pairs // stride).astype(np.int64), counts)
    return best.sum() / segmentation.size


def test_supervoxels_cover_the_volume_with_consecutive_large_segments(supervoxels, flyem_crop):
    neuron_ids = flyem_crop["neuron_ids"]
    assert supervoxels.dtype == np.uint64 and supervoxels.shape == neuron_ids.shape
    assert (supervoxels != 0).all()
    _assert_consecutive(supervoxels)
    assert np.bincount(supervoxels.ravel())[1:].min() >= MIN_SIZE
    # An over-segmentation of the neurons: more segments than neurons, hardly any crossing a membrane.
    assert supervoxels.max() > len(np.unique(neuron_ids))
    assert _largest_overlap_fraction(supervoxels, neuron_ids) > 0.9


def test_supervoxels_are_deterministic(supervoxels, boundaries):
    again = distance_transform_watershed(boundaries.copy(), resolution=(10.0, 10.0, 10.0), min_size=MIN_SIZE)
    np.testing.assert_array_equal(again, supervoxels)


def test_min_size_controls_the_smallest_segment(boundaries):
    coarse = distance_transform_watershed(boundaries, resolution=(10.0, 10.0, 10.0), min_size=2000)
    assert (coarse != 0).all()
    assert np.bincount(coarse.ravel())[1:].min() >= 2000


def test_two_d_supervoxels_on_anisotropic_data(flyem_crop):
    # Every 4th slice of the isotropic cube: 10 x 10 x 40 nm, like serial-section data.
    neuron_ids = flyem_crop["neuron_ids"][::4]
    resolution = (40.0, 10.0, 10.0)
    assert use_two_d(resolution)
    supervoxels = distance_transform_watershed(boundaries_from_labels(neuron_ids), resolution=resolution, two_d=True, min_size=MIN_SIZE)
    assert (supervoxels != 0).all()
    _assert_consecutive(supervoxels)
    assert np.bincount(supervoxels.ravel())[1:].min() >= MIN_SIZE
    slices_per_id = np.zeros(int(supervoxels.max()) + 1, dtype=np.int64)
    for z in range(supervoxels.shape[0]):
        slices_per_id[np.unique(supervoxels[z])] += 1
    assert (slices_per_id[1:] == 1).all()
    assert _largest_overlap_fraction(supervoxels, neuron_ids) > 0.9


def test_mask_is_respected(boundaries, flyem_crop):
    neuron_ids = flyem_crop["neuron_ids"]
    mask = neuron_ids != np.bincount(neuron_ids.ravel()).argmax()
    for two_d in (False, True):
        supervoxels = distance_transform_watershed(boundaries, resolution=(10.0, 10.0, 10.0), mask=mask, two_d=two_d, min_size=MIN_SIZE)
        np.testing.assert_array_equal(supervoxels != 0, mask)
        _assert_consecutive(supervoxels)
        # A segment may only be small when it fills a whole connected piece of the mask.
        structure = ndimage.generate_binary_structure(3, 1)
        if two_d:
            structure[[0, 2]] = False
        pieces, _ = ndimage.label(mask, structure=structure)
        sizes = np.bincount(supervoxels.ravel())
        piece_sizes = np.bincount(pieces.ravel())
        for small in np.flatnonzero(sizes < MIN_SIZE)[1:]:
            covered = np.unique(pieces[supervoxels == small])
            assert len(covered) == 1 and piece_sizes[covered[0]] == sizes[small]


@pytest.mark.parametrize("value", [0.0, 1.0])
@pytest.mark.parametrize("two_d", [False, True])
def test_constant_boundaries_give_a_valid_labeling(value, two_d):
    boundaries = np.full((6, 32, 40), value, dtype=np.float32)
    supervoxels = distance_transform_watershed(boundaries, two_d=two_d)
    assert (supervoxels != 0).all()
    _assert_consecutive(supervoxels)
    mask = np.zeros(boundaries.shape, dtype=bool)
    mask[:, 4:20, 8:30] = True
    masked = distance_transform_watershed(boundaries, two_d=two_d, mask=mask)
    np.testing.assert_array_equal(masked != 0, mask)


def test_invalid_boundaries(boundaries):
    with_nan = boundaries.copy()
    with_nan[3, 4, 5] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        distance_transform_watershed(with_nan)
    with pytest.raises(ValueError, match="3D"):
        distance_transform_watershed(boundaries[0])
    with pytest.raises(ValueError, match="mask"):
        distance_transform_watershed(boundaries, mask=np.ones(boundaries.shape, dtype=np.uint8))
    with pytest.raises(ValueError, match="resolution"):
        distance_transform_watershed(boundaries, resolution=(10.0, 10.0))


def test_size_filter_keeps_large_segments_and_dissolves_small_ones(flyem_crop, boundaries):
    segmentation = flyem_crop["oversegmentation"]
    min_size = 5000
    sizes = dict(zip(*np.unique(segmentation, return_counts=True)))
    assert min(sizes.values()) < min_size < max(sizes.values())
    filtered = size_filter(segmentation, boundaries, min_size)
    assert (filtered != 0).all()
    _assert_consecutive(filtered)
    assert np.bincount(filtered.ravel())[1:].min() >= min_size
    large = [segment for segment, size in sizes.items() if size >= min_size]
    assert filtered.max() == len(large)
    # Each large segment keeps all its voxels, under its own new id.
    new_ids = [np.unique(filtered[segmentation == segment]) for segment in large]
    assert all(len(ids) == 1 for ids in new_ids)
    assert len(np.unique(np.concatenate(new_ids))) == len(large)


def test_use_two_d():
    assert use_two_d((40.0, 4.0, 4.0))
    assert use_two_d((20.0, 10.0, 12.0))
    assert not use_two_d((10.0, 10.0, 10.0))
    assert not use_two_d((20.0, 10.0, 10.0), anisotropy_threshold=3.0)
    with pytest.raises(ValueError):
        use_two_d((0.0, 1.0, 1.0))


def test_size_filter_equals_flooding_the_whole_block(flyem_crop, boundaries):
    """The restricted re-flooding gives what a watershed from every kept voxel gives."""
    segmentation = flyem_crop["oversegmentation"].astype(np.uint64)
    min_size = 5000
    sizes = np.bincount(segmentation.ravel())
    kept = np.where(sizes[segmentation] >= min_size, segmentation, 0).astype(np.uint64)
    reference = watershed(boundaries, kept)
    assert (reference != 0).all()
    filtered = size_filter(segmentation, boundaries, min_size)
    # Same partition of the volume (ids are renumbered by size_filter).
    pairs = np.unique(np.stack([reference.ravel(), filtered.ravel()]), axis=1)
    assert pairs.shape[1] == len(np.unique(reference)) == len(np.unique(filtered))


@pytest.mark.parametrize("dtype", [np.uint32, np.int64])
def test_size_filter_numbers_segments_in_the_order_of_their_ids(flyem_crop, boundaries, dtype):
    # Gaps between the ids (every third id used) and signed input must not change the numbering.
    segmentation = flyem_crop["oversegmentation"].astype(dtype) * dtype(3) + dtype(1)
    ids = np.unique(segmentation)
    np.testing.assert_array_equal(size_filter(segmentation, boundaries, 0), np.searchsorted(ids, segmentation) + 1)
    # Ids that occur only outside the mask get no number.
    mask = np.ones(segmentation.shape, dtype=bool)
    mask[:, :, 64:] = False
    filtered = size_filter(segmentation, boundaries, 0, mask=mask)
    np.testing.assert_array_equal(filtered[~mask], 0)
    np.testing.assert_array_equal(filtered[mask], np.searchsorted(np.unique(segmentation[mask]), segmentation[mask]) + 1)


@pytest.mark.parametrize("sigma", [0.0, 1.0, 2.0])
def test_local_maxima_equal_scikit_images_on_distance_maps_of_real_data(flyem_crop, sigma):
    # What the seeds are taken from: the distance to the membranes of thresholded raw data,
    # smoothed or not (sigma 0 leaves wide plateaus, among them the membranes' zeros).
    interior = flyem_crop["raw"] > 110
    distance = distance_transform(interior, sampling=(1.0, 1.0, 1.0))
    if sigma:
        distance = gaussian_smoothing(distance, sigma)
    maxima = local_maxima(distance)
    np.testing.assert_array_equal(maxima, skimage_local_maxima(distance, allow_borders=True).astype(bool))
    assert 0 < maxima.sum() < maxima.size


@pytest.mark.parametrize("shape", [(1, 1, 1), (1, 6, 9), (7, 9, 11), (40, 40)])
def test_local_maxima_equal_scikit_images_on_plateaus_and_borders(shape):
    rng = np.random.default_rng(7)
    # Few levels: plateaus everywhere, touching the borders, some of them maxima only in part.
    for image in (rng.integers(0, 3, shape).astype(np.float32), rng.random(shape), np.ones(shape, np.float32)):
        np.testing.assert_array_equal(local_maxima(image), skimage_local_maxima(image, allow_borders=True).astype(bool))
    assert local_maxima(np.zeros((0, 3))).shape == (0, 3)
