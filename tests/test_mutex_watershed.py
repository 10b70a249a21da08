import numpy as np
import pytest
from bioimage_cpp.segmentation import label
from test_affinity_statistics import OFFSETS, noisy_affinities

from emflow.affinity_statistics import long_range_channels, nearest_neighbour_channels, pair_statistics
from emflow.blocking import Blocking, Box
from emflow.evaluation import adapted_rand_error
from emflow.labels import relabel_consecutive
from emflow.mutex_watershed import blockwise_mutex_watershed, fragment_mutex_watershed, mutex_watershed, mutex_watershed_fragments

# Noise at which the grid mutex watershed starts to err (adapted Rand error about 0.03 on the crop):
# 0.2 gives an almost perfect result, 0.3 merges a third of the crop.
NOISE = 0.25


@pytest.fixture(scope="module")
def affinities(flyem_crop):
    return noisy_affinities(flyem_crop["neuron_ids"], noise=NOISE)


def test_blockwise_is_close_to_in_memory(affinities, flyem_crop):
    """Measured on the crop: in memory 0.028 against the groundtruth, blockwise 0.018, 0.011 between them."""
    groundtruth = flyem_crop["neuron_ids"]
    whole = mutex_watershed(affinities, OFFSETS, strides=(1, 2, 2), min_size=50)
    blockwise, fragments = blockwise_mutex_watershed(affinities, OFFSETS, (32, 64, 64), (8, 8, 8), strides=(1, 2, 2), min_size=50)
    whole_error, blockwise_error = adapted_rand_error(whole, groundtruth)[0], adapted_rand_error(blockwise, groundtruth)[0]
    assert whole_error < 0.05 and blockwise_error < whole_error + 0.01
    assert adapted_rand_error(blockwise, whole)[0] < 0.03

    # Fragments stay inside their block, are connected and are at least min_size voxels.
    blocking = Blocking(fragments.shape, (32, 64, 64))
    seen = set()
    for block_id in range(blocking.number_of_blocks):
        block = fragments[blocking.block(block_id).slicing]
        ids = set(np.unique(block).tolist())
        assert not ids & seen
        seen |= ids
        assert label(block, connectivity=1).max() == len(ids)
    assert np.bincount(fragments.ravel())[1:].min() >= 50


def test_fragments_of_one_block_are_its_part_of_a_larger_run(affinities):
    """A block's fragments are the mutex watershed of its haloed box, cut to the inner box."""
    affinities = affinities[:, :48, :96, :96]
    inner_slicing = (slice(8, 40), slice(16, 80), slice(16, 80))
    fragments = mutex_watershed_fragments(affinities, OFFSETS, Box((8, 16, 16), (40, 80, 80)))
    whole = mutex_watershed(affinities, OFFSETS)
    assert fragments.shape == (32, 64, 64)
    assert np.array_equal(fragments, relabel_consecutive(label(whole[inner_slicing], connectivity=1))[0])


def test_randomized_strides_are_seeded(affinities):
    crop = affinities[:, :32, :64, :64]
    state = np.random.get_state()
    first = mutex_watershed(crop, OFFSETS, strides=(2, 4, 4), randomized_strides=True, seed=3)
    assert np.array_equal(first, mutex_watershed(crop, OFFSETS, strides=(2, 4, 4), randomized_strides=True, seed=3))
    assert not np.array_equal(first, mutex_watershed(crop, OFFSETS, strides=(2, 4, 4), randomized_strides=True, seed=4))
    # The caller's global NumPy state is left as it was.
    assert all(np.array_equal(a, b) for a, b in zip(np.random.get_state()[1:3], state[1:3]))


def test_mask_gives_background(affinities):
    affinities = affinities[:, :32]
    mask = np.ones(affinities.shape[1:], dtype=bool)
    mask[:, :20] = False
    segmentation = mutex_watershed(affinities, OFFSETS, mask=mask, min_size=20)
    assert (segmentation[~mask] == 0).all() and (segmentation[mask] > 0).all()


@pytest.mark.parametrize("noise", [0.0, NOISE])
def test_fragment_graph_rejoins_groundtruth_pieces(flyem_crop, noise):
    """Groundtruth neurons cut into pieces at a block grid are joined back exactly, into the
    groundtruth's connected components, by the fragment graph's mutex watershed."""
    groundtruth = flyem_crop["neuron_ids"][:, :64]
    blocking = Blocking(groundtruth.shape, (32, 32, 64))
    pieces = np.zeros(groundtruth.shape, dtype=np.uint64)
    for block_id in range(blocking.number_of_blocks):
        slicing = blocking.block(block_id).slicing
        block_pieces = label(groundtruth[slicing], connectivity=1)
        pieces[slicing] = np.where(block_pieces > 0, block_pieces + pieces.max(), 0)
    affinities = noisy_affinities(groundtruth, noise=noise)
    number_of_nodes = int(pieces.max()) + 1
    node_labels = fragment_mutex_watershed(
        number_of_nodes,
        pair_statistics(pieces, affinities, OFFSETS, channels=nearest_neighbour_channels(OFFSETS)),
        pair_statistics(pieces, affinities, OFFSETS, channels=long_range_channels(OFFSETS)),
    )
    assert node_labels.dtype == np.uint64 and node_labels[0] == 0 and number_of_nodes > 50
    segmentation, components = node_labels[pieces].ravel(), label(groundtruth, connectivity=1).ravel()
    joint = len(np.unique(np.stack([segmentation, components], axis=1), axis=0))
    assert joint == len(np.unique(segmentation)) == len(np.unique(components))


def test_rejects_offsets_without_nearest_neighbours(affinities):
    with pytest.raises(ValueError, match="nearest-neighbour"):
        mutex_watershed(affinities[3:], OFFSETS[3:])
