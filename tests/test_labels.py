import numpy as np
import pytest

from emflow.blocking import Blocking
from emflow.labels import block_offsets, block_supervoxel_ids, map_labels, node_ids, relabel_consecutive, supervoxel_id_stride


def _assert_order_preserving_consecutive(old, new, keep_zero=True):
    old_ids, inverse = np.unique(old, return_inverse=True)
    expected = np.arange(len(old_ids), dtype=np.uint64)
    if not (keep_zero and old_ids[0] == 0):
        expected += 1
    np.testing.assert_array_equal(new.ravel(), expected[inverse.ravel()])


def test_relabel_consecutive_on_real_supervoxels(flyem_crop):
    segmentation = flyem_crop["oversegmentation"]
    relabeled, max_id = relabel_consecutive(segmentation)
    assert relabeled.dtype == np.uint64 and relabeled.shape == segmentation.shape
    assert max_id == len(np.unique(segmentation)) == relabeled.max()
    _assert_order_preserving_consecutive(segmentation, relabeled)


@pytest.mark.parametrize("keep_zero", [True, False])
def test_relabel_consecutive_with_background(flyem_crop, keep_zero):
    segmentation = flyem_crop["oversegmentation"].astype(np.int64)
    segmentation[flyem_crop["neuron_ids"] == np.bincount(flyem_crop["neuron_ids"].ravel()).argmax()] = 0
    relabeled, max_id = relabel_consecutive(segmentation, keep_zero=keep_zero)
    _assert_order_preserving_consecutive(segmentation, relabeled, keep_zero=keep_zero)
    assert max_id == relabeled.max() == len(np.unique(segmentation)) - keep_zero
    if keep_zero:
        np.testing.assert_array_equal(relabeled == 0, segmentation == 0)
    else:
        assert relabeled.min() == 1


def test_relabel_consecutive_handles_sparse_global_ids(flyem_crop):
    segmentation = flyem_crop["oversegmentation"]
    sparse = segmentation.astype(np.uint64) * np.uint64(2**40)
    dense, max_id = relabel_consecutive(segmentation)
    relabeled, sparse_max_id = relabel_consecutive(sparse)
    np.testing.assert_array_equal(relabeled, dense)
    assert sparse_max_id == max_id


def test_map_labels_round_trip(flyem_crop):
    segmentation, _ = relabel_consecutive(flyem_crop["oversegmentation"])
    keys = np.unique(segmentation)
    values = np.random.default_rng(0).permutation(len(keys)).astype(np.uint64) + 1
    mapped = map_labels(segmentation, keys, values)
    assert mapped.dtype == np.uint64
    np.testing.assert_array_equal(mapped, values[segmentation - 1])
    inverse_order = np.argsort(values)
    np.testing.assert_array_equal(map_labels(mapped, values[inverse_order], keys[inverse_order]), segmentation)


def test_map_labels_zero_and_missing_ids():
    labels = np.array([[0, 3], [7, 3]], dtype=np.uint32)
    keys = np.array([3, 7], dtype=np.uint64)
    np.testing.assert_array_equal(map_labels(labels, keys, np.array([10, 20], np.uint64)), [[0, 10], [20, 10]])
    with_zero = map_labels(labels, np.array([0, 3, 7], np.uint64), np.array([5, 10, 20], np.uint64))
    np.testing.assert_array_equal(with_zero, [[5, 10], [20, 10]])
    with pytest.raises(ValueError, match="no mapping"):
        map_labels(labels, np.array([3], np.uint64), np.array([1], np.uint64))
    with pytest.raises(ValueError, match="sorted"):
        map_labels(labels, np.array([7, 3], np.uint64), np.array([1, 2], np.uint64))
    with pytest.raises(ValueError):
        map_labels(labels, keys, np.array([1], np.uint64))


def test_block_offsets_make_blockwise_ids_globally_unique(flyem_crop):
    segmentation = flyem_crop["oversegmentation"]
    blocking = Blocking(segmentation.shape, (24, 48, 40))
    local_labels = [relabel_consecutive(segmentation[blocking.block(block_id).slicing]) for block_id in range(blocking.number_of_blocks)]
    counts = np.array([count for _, count in local_labels])
    offsets = block_offsets(counts)
    assert offsets.dtype == np.uint64
    assert offsets[0] == 0 and (np.diff(offsets.astype(np.int64)) == counts[:-1]).all()

    global_labels = np.zeros(segmentation.shape, dtype=np.uint64)
    for block_id, (labels, _) in enumerate(local_labels):
        global_labels[blocking.block(block_id).slicing] = labels + offsets[block_id]
    np.testing.assert_array_equal(np.unique(global_labels), np.arange(1, counts.sum() + 1))

    np.testing.assert_array_equal(block_offsets([3, 0, 5]), [0, 3, 3])
    assert block_offsets([]).shape == (0,)


def test_volume_wide_block_ids_map_onto_consecutive_node_ids(flyem_crop):
    segmentation = flyem_crop["oversegmentation"]
    blocking = Blocking(segmentation.shape, (24, 48, 40))
    stride = supervoxel_id_stride(blocking.block_shape)
    assert stride == 100_000 and supervoxel_id_stride((10, 10, 10)) == 10_000  # 46,080 and 1,000 voxels
    local_labels = [relabel_consecutive(segmentation[blocking.block(block_id).slicing]) for block_id in range(blocking.number_of_blocks)]
    offsets = block_offsets(np.array([count for _, count in local_labels]))
    stored = np.zeros(segmentation.shape, dtype=np.uint64)
    consecutive = np.zeros(segmentation.shape, dtype=np.uint64)
    for block_id, (labels, _) in enumerate(local_labels):
        box = blocking.block(block_id).slicing
        stored[box] = block_supervoxel_ids(labels, block_id, stride)
        consecutive[box] = labels + offsets[block_id]
        # A block's ids read as its id followed by its own numbering.
        assert np.unique(stored[box])[0] == block_id * stride + 1
    # Node ids are exactly the consecutive global ids, and the map keeps the order of ids.
    np.testing.assert_array_equal(node_ids(stored, offsets, stride), consecutive)
    np.testing.assert_array_equal(node_ids(stored, offsets, stride), relabel_consecutive(stored)[0])
    assert node_ids(np.zeros(3, dtype=np.uint64), offsets, stride).tolist() == [0, 0, 0]

    with_background = block_supervoxel_ids(np.array([0, 1, 2]), 3, 10)
    assert with_background.tolist() == [0, 31, 32]
    with pytest.raises(ValueError, match="block 3 has supervoxel 10, not below the id stride 10"):
        block_supervoxel_ids(np.array([10]), 3, 10)
