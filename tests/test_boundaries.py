import numpy as np
import pytest
from scipy import ndimage

from emflow.boundaries import boundaries_from_labels


def _boundary_mask(labels):
    """Voxels with a differing 6-neighbour, or unlabeled, via grey-value morphology."""
    cross = ndimage.generate_binary_structure(labels.ndim, 1)
    differs = ndimage.maximum_filter(labels, footprint=cross, mode="nearest") != ndimage.minimum_filter(
        labels, footprint=cross, mode="nearest"
    )
    return differs | (labels == 0)


def test_unsmoothed_noiseless_boundaries_are_the_label_borders(flyem_crop):
    neuron_ids = flyem_crop["neuron_ids"]
    boundaries = boundaries_from_labels(neuron_ids, sigma=0, noise=0)
    assert boundaries.dtype == np.float32 and boundaries.shape == neuron_ids.shape
    np.testing.assert_array_equal(boundaries == 1, _boundary_mask(neuron_ids))
    assert np.isin(boundaries, [0, 1]).all()


def test_boundaries_are_probabilities_on_dark_membranes(flyem_crop):
    neuron_ids, raw = flyem_crop["neuron_ids"], flyem_crop["raw"]
    boundaries = boundaries_from_labels(neuron_ids)
    assert boundaries.min() >= 0 and boundaries.max() <= 1
    assert boundaries.max() > 0.99
    on_border = _boundary_mask(neuron_ids)
    assert boundaries[on_border].mean() > boundaries[~on_border].mean() + 0.3
    # The membranes of the GT labeling are dark in the FIB-SEM raw data.
    assert raw[boundaries > 0.5].mean() < raw[boundaries < 0.2].mean() - 10


def test_noise_is_reproducible_per_seed(flyem_crop):
    neuron_ids = flyem_crop["neuron_ids"][:16]
    first = boundaries_from_labels(neuron_ids, seed=3)
    np.testing.assert_array_equal(first, boundaries_from_labels(neuron_ids, seed=3))
    assert not np.array_equal(first, boundaries_from_labels(neuron_ids, seed=4))
    noiseless = boundaries_from_labels(neuron_ids, noise=0)
    residual = (first - noiseless)[(noiseless > 0.2) & (noiseless < 0.8)]
    assert 0.08 < residual.std() < 0.12


def test_two_d_labels_and_invalid_parameters(flyem_crop):
    slice_ids = flyem_crop["neuron_ids"][0]
    boundaries = boundaries_from_labels(slice_ids, sigma=0, noise=0)
    np.testing.assert_array_equal(boundaries == 1, _boundary_mask(slice_ids))
    with pytest.raises(ValueError):
        boundaries_from_labels(slice_ids, sigma=-1)
    with pytest.raises(ValueError):
        boundaries_from_labels(slice_ids[0])
