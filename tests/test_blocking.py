import numpy as np
import pytest

from emflow.blocking import Blocking, Box, face_slabs


def test_box_shape_slicing_and_local_coordinates():
    box = Box((2, 3, 4), (5, 9, 4))
    assert box.shape == (3, 6, 0)
    assert box.slicing == (slice(2, 5), slice(3, 9), slice(4, 4))

    outer = Box((1, 0, 2), (6, 10, 8))
    local = box.local_to(outer)
    assert local == Box((1, 3, 2), (4, 9, 2))
    volume = np.arange(7 * 11 * 9).reshape(7, 11, 9)
    np.testing.assert_array_equal(volume[outer.slicing][local.slicing], volume[box.slicing])

    with pytest.raises(ValueError, match="not contained"):
        outer.local_to(box)
    with pytest.raises(ValueError):
        Box((0, 5), (1, 4))
    with pytest.raises(ValueError):
        Box((0, 0), (1, 1, 1))


def test_blocks_tile_the_volume_exactly_once():
    blocking = Blocking((64, 128, 128), (24, 48, 40))
    assert blocking.blocks_per_axis == (3, 3, 4)
    assert blocking.number_of_blocks == 36

    coverage = np.zeros(blocking.shape, dtype=np.int32)
    for block_id in range(blocking.number_of_blocks):
        box = blocking.block(block_id)
        assert all(0 < s <= b for s, b in zip(box.shape, blocking.block_shape))
        coverage[box.slicing] += 1
    assert (coverage == 1).all()


def test_block_ids_are_c_order_over_the_block_grid():
    blocking = Blocking((10, 20, 30), (4, 7, 30))
    for block_id in range(blocking.number_of_blocks):
        position = blocking.block_grid_position(block_id)
        assert position == tuple(int(p) for p in np.unravel_index(block_id, blocking.blocks_per_axis))
        assert blocking.block(block_id).begin == tuple(p * b for p, b in zip(position, blocking.block_shape))
    last = blocking.block(blocking.number_of_blocks - 1)
    assert last == Box((8, 14, 0), (10, 20, 30))
    with pytest.raises(IndexError):
        blocking.block(blocking.number_of_blocks)
    with pytest.raises(IndexError):
        blocking.block(-1)


def test_block_with_halo_reads_the_inner_block_from_the_outer_one(flyem_crop):
    volume = flyem_crop["oversegmentation"]
    blocking = Blocking(volume.shape, (24, 48, 40))
    halo = (2, 3, 1)
    for block_id in range(blocking.number_of_blocks):
        inner = blocking.block(block_id)
        outer, inner_local = blocking.block_with_halo(block_id, halo)
        for axis in range(3):
            assert outer.begin[axis] == max(inner.begin[axis] - halo[axis], 0)
            assert outer.end[axis] == min(inner.end[axis] + halo[axis], volume.shape[axis])
        np.testing.assert_array_equal(volume[outer.slicing][inner_local.slicing], volume[inner.slicing])

    with pytest.raises(ValueError):
        blocking.block_with_halo(0, (1, 1))
    with pytest.raises(ValueError):
        blocking.block_with_halo(0, (1, -1, 1))


def test_invalid_blockings_are_rejected():
    with pytest.raises(ValueError, match="axis 1"):
        Blocking((64, 32, 128), (16, 64, 16))
    with pytest.raises(ValueError, match="ndim"):
        Blocking((64, 64, 64), (16, 16))
    with pytest.raises(ValueError, match="positive"):
        Blocking((64, 0, 64), (16, 16, 16))
    with pytest.raises(ValueError, match="positive"):
        Blocking((64, 64, 64), (16, 0, 16))


def test_blocking_is_a_value():
    assert Blocking([8, 8], np.array([4, 4])) == Blocking((8, 8), (4, 4))
    assert hash(Blocking((8, 8), (4, 4))) == hash(Blocking((8, 8), (4, 4)))


@pytest.mark.parametrize(
    "shape, block_shape, halo",
    [((125, 250, 250), (32, 64, 64), (8, 16, 16)), ((40, 72, 80), (16, 32, 32), (0, 0, 0)), ((7, 9, 11), (7, 4, 5), (3, 9, 1))],
)
def test_boxes_with_halo_equal_each_block_with_halo(shape, block_shape, halo):
    blocking = Blocking(shape, block_shape)
    boxes = blocking.boxes_with_halo(halo)
    assert boxes.shape == (blocking.number_of_blocks, 2, 3) and boxes.dtype == np.int64
    for block_id in range(blocking.number_of_blocks):
        outer, _ = blocking.block_with_halo(block_id, halo)
        assert (tuple(boxes[block_id, 0]), tuple(boxes[block_id, 1])) == (outer.begin, outer.end)
    with pytest.raises(ValueError, match="non-negative"):
        blocking.boxes_with_halo((1, -1, 0))


@pytest.mark.parametrize("reach", [(1, 1, 1), (2, 0, 3), (0, 0, 0)])
def test_face_slabs_hold_exactly_what_axis_steps_from_the_box_reach(reach):
    box = Box((3, 5, 7), (7, 10, 13))
    region = Box(box.begin, tuple(end + step for end, step in zip(box.end, reach)))

    slabs = face_slabs(box, region)

    covered = np.zeros(region.shape, dtype=np.int64)
    for slab in slabs:
        covered[slab.local_to(region).slicing] += 1
    # Every voxel p + k e_axis (p in the box, 1 <= k <= reach[axis]) and nothing else, each once.
    reached = np.zeros(region.shape, dtype=bool)
    reached[box.local_to(region).slicing] = True
    for axis, step in enumerate(reach):
        for k in range(1, step + 1):
            shifted = [slice(0, extent) for extent in box.shape]
            shifted[axis] = slice(k, k + box.shape[axis])
            reached[tuple(shifted)] = True
    np.testing.assert_array_equal(covered, reached.astype(np.int64))
    assert slabs[0] == box and len(slabs) == 1 + sum(step > 0 for step in reach)
    with pytest.raises(ValueError, match="must start at"):
        face_slabs(box, Box((2, 5, 7), region.end))
