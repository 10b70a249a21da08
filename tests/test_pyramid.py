"""emflow.pyramid: mode and mean downsampling of real EM data, blockwise equal to whole-volume."""

import itertools

import h5py
import numpy as np
import pytest
from bioimage_cpp.label_multiset import multiset_from_labels

from emflow.blocking import Blocking, Box
from emflow.pyramid import downsample_image, downsample_labels, pyramid_factors, source_box, source_parts


def direct_mode(labels: np.ndarray, factors) -> np.ndarray:
    """The most frequent id of every window, smallest id on ties, counted window by window."""
    shape = tuple(-(-size // factor) for size, factor in zip(labels.shape, factors))
    result = np.zeros(shape, dtype=labels.dtype)
    for index in itertools.product(*(range(size) for size in shape)):
        window = labels[tuple(slice(i * f, (i + 1) * f) for i, f in zip(index, factors))]
        ids, counts = np.unique(window, return_counts=True)
        result[index] = ids[np.argmax(counts)]  # np.unique sorts: argmax takes the smallest of the most frequent
    return result


def count_ties(labels: np.ndarray, factors) -> int:
    shape = tuple(-(-size // factor) for size, factor in zip(labels.shape, factors))
    ties = 0
    for index in itertools.product(*(range(size) for size in shape)):
        _, counts = np.unique(labels[tuple(slice(i * f, (i + 1) * f) for i, f in zip(index, factors))], return_counts=True)
        ties += int((counts == counts.max()).sum() > 1)
    return ties


@pytest.mark.parametrize("factors", [(2, 2, 2), (1, 2, 2), (2, 3, 1)])
def test_mode_equals_a_direct_count_on_real_labels(flyem_crop, factors):
    # Odd extents: the windows at the upper faces are clipped.
    labels = flyem_crop["oversegmentation"][:17, :33, :31]
    assert count_ties(labels, factors) > 10, "the crop must hold ties for the tie rule to be tested"
    result = downsample_labels(labels, factors)
    assert result.dtype == labels.dtype
    np.testing.assert_array_equal(result, direct_mode(labels, factors))


def multiset_mode(labels: np.ndarray, factors) -> np.ndarray:
    """The mode as the argmax of bioimage-cpp's histogram of every window (smallest id on ties):
    emflow.pyramid's former implementation, fast enough for the whole dev cube."""
    shape = tuple(-(-size // factor) for size, factor in zip(labels.shape, factors))
    multiset = multiset_from_labels(np.ascontiguousarray(labels, dtype=np.uint64), tuple(factors))
    return multiset.argmax.reshape(shape).astype(labels.dtype)


def count_whole_window_ties(labels: np.ndarray, factors) -> int:
    """Windows (whole ones only) whose highest count is reached by more than one id."""
    shape = tuple(size // factor for size, factor in zip(labels.shape, factors))
    whole = labels[tuple(slice(0, size * factor) for size, factor in zip(shape, factors))]
    split = whole.reshape(tuple(value for size, factor in zip(shape, factors) for value in (size, factor)))
    rows = split.transpose((0, 2, 4, 1, 3, 5)).reshape(-1, int(np.prod(factors)))
    counts = (rows[:, :, None] == rows[:, None, :]).sum(axis=2)
    # Each id reaching the highest count m is counted m times.
    highest = counts.max(axis=1)
    return int(((counts == highest[:, None]).sum(axis=1) > highest).sum())


@pytest.fixture(scope="module")
def dev_cube_labels(data_dir) -> dict[str, np.ndarray]:
    """The whole FlyEM dev cube's oversegmentation and neuron ids (125, 250, 250), as uint64."""
    with h5py.File(data_dir / "flyem_medulla_dev" / "volume.h5", "r") as f:
        return {name: f[f"labels/{name}"][:].astype(np.uint64) for name in ("oversegmentation", "neuron_ids")}


@pytest.mark.parametrize("name", ["oversegmentation", "neuron_ids"])
@pytest.mark.parametrize("factors", [(2, 2, 2), (1, 2, 2), (3, 2, 3)])
def test_mode_equals_the_label_multiset_on_the_dev_cube(dev_cube_labels, name, factors):
    # The whole cube (125 slices: clipped windows in z) and a view of it with odd, offset extents on
    # every axis (not contiguous in memory).
    for labels in (dev_cube_labels[name], dev_cube_labels[name][2:, 1:, 3:]):
        if factors == (2, 2, 2):
            assert count_whole_window_ties(labels[:32, :64, :64], factors) > 100, "the labels must hold ties for the tie rule to be tested"
        result = downsample_labels(labels, factors)
        assert result.dtype == labels.dtype
        np.testing.assert_array_equal(result, multiset_mode(labels, factors))


def test_mode_keeps_only_existing_ids_and_other_dtypes(flyem_crop):
    labels = flyem_crop["neuron_ids"]
    result = downsample_labels(labels.astype(np.int32), (2, 2, 2))
    assert result.dtype == np.int32 and result.shape == (32, 64, 64)
    assert set(np.unique(result)) <= set(np.unique(labels))
    np.testing.assert_array_equal(result, downsample_labels(labels, (2, 2, 2)))
    with pytest.raises(ValueError, match="negative"):
        downsample_labels(-np.ones((2, 2, 2), dtype=np.int64), (2, 2, 2))
    with pytest.raises(TypeError, match="integer"):
        downsample_labels(np.zeros((2, 2, 2), dtype=np.float32), (2, 2, 2))


def test_mean_equals_a_direct_mean_rounded_half_up(flyem_crop):
    raw = flyem_crop["raw"][:9, :21, :20]
    factors = (2, 4, 3)
    result = downsample_image(raw, factors)
    assert result.dtype == np.uint8 and result.shape == (5, 6, 7)
    for index in itertools.product(*(range(size) for size in result.shape)):
        window = raw[tuple(slice(i * f, (i + 1) * f) for i, f in zip(index, factors))].astype(np.float64)
        assert result[index] == np.floor(window.mean() + 0.5)
    floats = downsample_image(raw.astype(np.float32) / 255, factors)
    assert floats.dtype == np.float32
    np.testing.assert_allclose(floats * 255, downsample_image(raw.astype(np.float64), factors), rtol=1e-6)


def padded_window_mean(image: np.ndarray, factors) -> np.ndarray:
    """The mean as numpy's sum over the window axes of the zero-padded image, as float64, cast back
    (rounded half up for integers): emflow.pyramid's former implementation."""
    shape = tuple(-(-size // factor) for size, factor in zip(image.shape, factors))
    padded = np.zeros(tuple(size * factor for size, factor in zip(shape, factors)), dtype=np.float64)
    padded[tuple(slice(0, size) for size in image.shape)] = image
    sums = padded.reshape(tuple(value for size, factor in zip(shape, factors) for value in (size, factor))).sum(axis=(1, 3, 5))
    counts = np.ones(shape)
    for axis, (size, factor) in enumerate(zip(image.shape, factors)):
        counts = counts * np.minimum(factor, size - np.arange(shape[axis]) * factor).reshape((-1,) + (1,) * (2 - axis))
    means = sums / counts
    return (np.floor(means + 0.5) if np.issubdtype(image.dtype, np.integer) else means).astype(image.dtype)


@pytest.mark.parametrize("factors", [(2, 2, 2), (1, 2, 2), (3, 2, 3), (2, 9, 1), (1, 2, 8)])
def test_mean_equals_the_padded_window_sum_bit_for_bit(flyem_crop, factors):
    raw = flyem_crop["raw"]
    # Floats spanning 30 decades, where the order of a sum decides its rounding; the crop and a
    # view of it with odd, offset extents (not contiguous); a slab whose last axis is one window.
    spread = (10.0 ** (-30 * raw.astype(np.float64) / 255)).astype(np.float32)
    for image in (raw, spread, spread.astype(np.float64), spread[1:, 3:, 2:], spread[:, :, :3]):
        result = downsample_image(image, factors)
        expected = padded_window_mean(image, factors)
        assert result.dtype == expected.dtype and result.shape == expected.shape
        assert result.tobytes() == expected.tobytes()


def build_pyramid_blockwise(level0: np.ndarray, level_factors, block_shape, downsample) -> list[np.ndarray]:
    """Every level computed block by block: each block of level k + 1 reads only its source box of level k."""
    levels = [level0]
    for factors in level_factors:
        source = levels[-1]
        shape = tuple(-(-size // factor) for size, factor in zip(source.shape, factors))
        target = np.full(shape, 255, dtype=source.dtype)
        blocking = Blocking(shape, tuple(min(b, s) for b, s in zip(block_shape, shape)))
        for block_id in range(blocking.number_of_blocks):
            box = blocking.block(block_id)
            target[box.slicing] = downsample(source[source_box(box, factors, source.shape).slicing], factors)
        levels.append(target)
    return levels


@pytest.mark.parametrize("kind", ["labels", "raw"])
def test_blockwise_pyramid_equals_whole_volume(flyem_crop, kind):
    volume = flyem_crop["neuron_ids" if kind == "labels" else "raw"][:, :, :125]
    downsample = downsample_labels if kind == "labels" else downsample_image
    block_shape = (12, 20, 24)
    level_factors = pyramid_factors((10, 10, 10), volume.shape, block_shape)
    assert level_factors == [(2, 2, 2), (2, 2, 2), (2, 2, 2)]
    blockwise = build_pyramid_blockwise(volume, level_factors, block_shape, downsample)
    whole = volume
    for factors, level in zip(level_factors, blockwise[1:]):
        whole = downsample(whole, factors)
        np.testing.assert_array_equal(level, whole)
    assert all(size <= block for size, block in zip(blockwise[-1].shape, block_shape))


@pytest.mark.parametrize(
    ("chunk_shape", "factors"),
    [((12, 20, 24), (2, 2, 2)), ((8, 16, 16), (1, 2, 2)), ((7, 9, 10), (2, 3, 2)), ((6, 20, 5), (3, 2, 2))],
)
def test_downsampling_a_box_part_by_part_equals_the_whole_box(flyem_crop, chunk_shape, factors):
    raw = flyem_crop["raw"]
    spread = (10.0 ** (-30 * raw.astype(np.float64) / 255)).astype(np.float32)  # sums whose order shows
    labels = flyem_crop["neuron_ids"]
    # Boxes starting on chunk borders (as a block's source box does) and off them, ending inside
    # the volume and at its upper faces.
    boxes = [
        Box((0, 0, 0), raw.shape),
        Box((chunk_shape[0], 3, chunk_shape[2]), (raw.shape[0] - 1, 101, raw.shape[2])),
        Box((5, 40, 11), (31, 77, 90)),
    ]
    for box in boxes:
        parts = source_parts(box, chunk_shape, factors)
        covered = np.zeros(box.shape, dtype=np.int64)
        for part in parts:
            covered[part.local_to(box).slicing] += 1
        assert (covered == 1).all()
        # Along an axis whose factor divides the chunks and the box's start (a block's source box),
        # every part lies within one chunk.
        for part in parts:
            for first, last, origin, chunk, factor in zip(part.begin, part.end, box.begin, chunk_shape, factors):
                assert chunk % factor or origin % factor or first // chunk == (last - 1) // chunk
        for volume, downsample in ((labels, downsample_labels), (spread, downsample_image), (raw, downsample_image)):
            whole = downsample(volume[box.slicing], factors)
            assembled = np.full(whole.shape, 7, dtype=whole.dtype)
            for part in parts:
                values = downsample(volume[part.slicing], factors)
                target = tuple((first - origin) // factor for first, origin, factor in zip(part.begin, box.begin, factors))
                assembled[tuple(slice(first, first + size) for first, size in zip(target, values.shape))] = values
            assert assembled.tobytes() == whole.tobytes()


def test_factors_follow_the_voxel_size():
    # ssTEM (ISBI 2012): in-plane only until the in-plane voxel size nears the section thickness.
    assert pyramid_factors((50, 4, 4), (30, 512, 512), (8, 32, 32)) == [(1, 2, 2)] * 4 + [(2, 2, 2)] * 2
    assert pyramid_factors((10, 10, 10), (125, 250, 250), (64, 64, 64)) == [(2, 2, 2)] * 2
    assert pyramid_factors((10, 10, 10), (64, 128, 128), (64, 128, 128)) == []
    # An axis one voxel long is never downsampled.
    assert pyramid_factors((10, 10, 10), (1, 100, 100), (1, 30, 30)) == [(1, 2, 2)] * 2
    with pytest.raises(ValueError, match="positive"):
        pyramid_factors((10, 0, 10), (8, 8, 8), (4, 4, 4))
