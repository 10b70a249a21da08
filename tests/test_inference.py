"""Sliding-window inference: the patch grid, mirroring, blending, and block-wise = whole-volume prediction."""

import itertools

import numpy as np
import pytest
import torch

from emflow.blocking import Blocking
from emflow.inference import (
    SUM_SCALE,
    PatchGrid,
    accumulate_patches,
    axis_gaussian,
    blend_sums,
    decode_sums,
    encode_sums,
    fixed_point,
    inside_volume,
    predict_box,
    read_mirrored,
    reflect_indices,
)
from emflow.storage.models import load_model
from emflow.unet import UNet3D, UNetConfig, check_patch_shape


def test_blending_gaussian_peaks_in_the_centre_and_stays_positive():
    weights = axis_gaussian(48)
    assert weights.shape == (48,) and weights.min() > 1e-4 and weights.max() == pytest.approx(1, abs=0.01)
    np.testing.assert_allclose(weights, weights[::-1], rtol=1e-12)
    assert weights[24] > weights[12] > weights[0]


@pytest.mark.parametrize("overlap", [0, 4, 12, 20])
def test_blending_weights_of_the_patches_covering_a_voxel_add_up_to_one(overlap):
    grid = PatchGrid((50, 70, 33), (16, 32, 24), (min(overlap, 15), overlap, overlap))
    for axis in range(3):
        origins, weights = grid.origins(axis), grid.axis_weights(axis)
        assert weights.dtype == np.float32 and weights.shape == (len(origins), grid.patch_shape[axis]) and weights.min() > 0
        covering_sum = np.zeros(grid.volume_shape[axis])
        covering_count = np.zeros(grid.volume_shape[axis], dtype=int)
        for origin, patch_weights in zip(origins, weights):
            inside = slice(max(-origin, 0), min(grid.volume_shape[axis] - origin, grid.patch_shape[axis]))
            covering_sum[origin + inside.start : origin + inside.stop] += patch_weights[inside]
            covering_count[origin + inside.start : origin + inside.stop] += 1
        np.testing.assert_allclose(covering_sum, 1, rtol=1e-6)
        # One patch alone: its prediction is taken as it is, unweighted.
        alone = [patch_weights[covered == 1] for patch_weights, covered in zip(weights, _coverage_per_patch(origins, grid, axis))]
        assert all((patch_alone == 1).all() for patch_alone in alone)
        assert (covering_count > 1).any() == (grid.overlap[axis] > 0)


def _coverage_per_patch(origins, grid, axis):
    """Per patch, how many patches cover each of its positions."""
    positions = origins[:, None] + np.arange(grid.patch_shape[axis])
    starts, stops = origins, origins + grid.patch_shape[axis]
    return ((positions[..., None] >= starts) & (positions[..., None] < stops)).sum(axis=-1)


@pytest.mark.parametrize("size", [1, 2, 7])
def test_mirrored_reads_equal_numpys_reflect_padding_even_past_a_whole_period(size):
    volume = np.arange(size * 5 * 6).reshape(size, 5, 6)
    pad = ((9, 11), (4, 13), (0, 2))
    expected = np.pad(volume, pad, mode="reflect")
    start = [-before for before, _ in pad]
    stop = [shape + after for shape, (_, after) in zip(volume.shape, pad)]
    np.testing.assert_array_equal(read_mirrored(volume, start, stop), expected)
    np.testing.assert_array_equal(reflect_indices(np.arange(-3, 3), 1), np.zeros(6, dtype=int))


@pytest.mark.parametrize("shape", [(7, 5, 6), (1, 5, 6), (30, 40, 20), (2, 3, 2)])
def test_mirrored_reads_of_any_box_equal_gathering_the_reflected_coordinates(shape):
    # Boxes inside the volume, past one or both faces of an axis, past a whole period, or lying
    # wholly outside: read with one reflection padding where the box reaches past the volume by
    # less than it reads inside, gathered otherwise; both give the reflected voxels.
    rng = np.random.default_rng(sum(shape))
    volume = rng.random(shape, dtype=np.float32)
    for _ in range(300):
        start = [int(rng.integers(-2 * size - 3, size + 2)) for size in shape]
        stop = [first + int(rng.integers(1, 2 * size + 6)) for first, size in zip(start, shape)]
        expected = volume[np.ix_(*(reflect_indices(np.arange(first, last), size) for first, last, size in zip(start, stop, shape)))]
        np.testing.assert_array_equal(read_mirrored(volume, start, stop), expected)


def test_every_voxel_is_covered_and_every_patch_belongs_to_one_block():
    grid = PatchGrid((50, 70, 33), (16, 32, 32), (4, 8, 8))
    coverage = np.zeros(grid.volume_shape, dtype=int)
    for origin_z in grid.origins(0):
        for origin_y in grid.origins(1):
            for origin_x in grid.origins(2):
                begin = np.maximum([origin_z, origin_y, origin_x], 0)
                end = np.minimum(np.array([origin_z, origin_y, origin_x]) + grid.patch_shape, grid.volume_shape)
                coverage[tuple(slice(first, last) for first, last in zip(begin, end))] += 1
    assert coverage.min() >= 1
    blocking = Blocking(grid.volume_shape, (20, 30, 16))
    owners = [0] * grid.number_of_patches()
    for block_id in range(blocking.number_of_blocks):
        box = blocking.block(block_id)
        owned = grid.patches_of_block(box.begin, box.end)
        for origin in np.stack(np.meshgrid(*owned, indexing="ij"), -1).reshape(-1, 3):
            index = np.ravel_multi_index(
                [list(grid.origins(axis)).index(origin[axis]) for axis in range(3)], [len(grid.origins(a)) for a in range(3)]
            )
            owners[index] += 1
    assert owners == [1] * grid.number_of_patches()


@pytest.mark.parametrize("overlap", [(0, 0, 0), (4, 12, 12)])
def test_overlap_add_over_blocks_equals_a_whole_volume_prediction(flyem_crop, small_affinity_model, overlap):
    model = load_model(small_affinity_model)
    volume = model.normalize(flyem_crop["raw"][:40, :72, :60])
    grid = PatchGrid(volume.shape, model.patch_shape, overlap)
    predictor = model.predictor("cpu")
    whole = predict_box(predictor, volume, grid, (0, 0, 0), volume.shape, batch_size=3)
    assert whole.shape == (model.out_channels,) + volume.shape and np.isfinite(whole).all()

    blocking = Blocking(volume.shape, (16, 32, 24))
    stored_parts, float_parts = [], []
    reaching = np.zeros(volume.shape, dtype=np.int64)  # per voxel, the blocks whose sums reach it
    dropped = 0
    for block_id in range(blocking.number_of_blocks):
        box = blocking.block(block_id)
        origins = grid.patches_of_block(box.begin, box.end)
        if all(len(axis_origins) for axis_origins in origins):
            span_start, accumulated = accumulate_patches(predictor, volume, grid, origins)
            # What a block stores: its sums inside the volume, which are all that blending needs,
            # as float16.
            start, inside = inside_volume(span_start, accumulated, volume.shape)
            assert all(0 <= first and first + size <= extent for first, size, extent in zip(start, inside.shape[1:], volume.shape))
            dropped += accumulated[0].size - inside[0].size
            stored_parts.append((encode_sums(inside), start))
            float_parts.append((inside.copy(), start))
            reaching[tuple(slice(first, first + size) for first, size in zip(start, inside.shape[1:]))] += 1
    total = blend_sums(stored_parts, (0, 0, 0), volume.shape, model.out_channels)
    total_float = blend_sums(float_parts, (0, 0, 0), volume.shape, model.out_channels)
    # The float sums add up to the whole-volume prediction but for the order of the sums; the
    # stored ones within float16's relative rounding (2^-11) of the sums, whatever the number of
    # blocks whose sums reach the voxel: the sums are not negative.
    np.testing.assert_allclose(total_float, whole, rtol=1e-5, atol=1e-6)
    error = np.abs(total - whole)
    assert (error <= 2**-11 * whole + 1e-6).all()
    assert error.max() > 1e-6  # float16 is not float32
    assert (reaching.max() > 1) == any(overlap)  # with overlap, blocks' sums meet
    assert dropped > 0  # the spans of the blocks at the volume's faces reach past it


def test_stored_sums_are_float16_within_its_relative_rounding():
    rng = np.random.default_rng(7)
    sums = rng.random((3, 4, 5, 6), dtype=np.float32)
    sums[0, 0, 0, :4] = [0, 1, np.nextafter(np.float32(1), np.float32(2)), 1e-6]  # float rounding may pass 1; subnormal
    encoded = encode_sums(sums[:, :, 1:])  # a view, as `inside_volume` gives
    assert encoded.dtype == np.float16 and encoded.shape == (3, 4, 4, 6)
    encoded = encode_sums(sums)
    assert encoded[0, 0, 0, :3].tolist() == [0, 1, 1]
    decoded = np.empty(sums.shape, dtype=np.float32)
    decode_sums(encoded, decoded)
    # 2^-11 relative for normal float16 values, 2^-25 (half its spacing) below 6.1e-5.
    assert (np.abs(decoded - sums) <= 2**-11 * sums + 2**-25).all()
    np.testing.assert_array_equal(decoded, encoded.astype(np.float32))
    # A read-only array (a memory map opened read-only) decodes alike, through numpy.
    encoded.flags.writeable = False
    decoded_read_only = np.empty(sums.shape, dtype=np.float32)
    decode_sums(encoded, decoded_read_only)
    np.testing.assert_array_equal(decoded_read_only, decoded)


def test_sums_stored_by_an_earlier_emflow_decode_to_their_values():
    rng = np.random.default_rng(8)
    sums = rng.random((2, 3, 4, 5), dtype=np.float32)
    fixed = fixed_point(sums, np.uint16)  # what emflow stored until stop 42
    decoded = np.empty(sums.shape, dtype=np.float32)
    decode_sums(fixed, decoded)
    np.testing.assert_array_equal(decoded, fixed * np.float32(1 / SUM_SCALE))
    assert np.abs(decoded - sums).max() <= 0.5 / SUM_SCALE + 1e-7
    decode_sums(sums, decoded)  # before them, the float32 sums themselves
    np.testing.assert_array_equal(decoded, sums)


def test_blended_sums_add_every_part_where_it_overlaps_the_box():
    rng = np.random.default_rng(9)
    # Parts of three kinds, partly outside the box [2, 12) x [1, 9) x [0, 7), one not reaching it.
    parts = [
        (encode_sums(rng.random((2, 6, 8, 7), dtype=np.float32) / 4), (0, 0, 0)),
        (encode_sums(rng.random((2, 10, 6, 9), dtype=np.float32) / 4), (4, 3, -2)),
        (fixed_point(rng.random((2, 3, 3, 3), dtype=np.float32) / 4, np.uint16), (10, 7, 5)),
        (rng.random((2, 4, 4, 4), dtype=np.float32) / 4, (6, 0, 2)),
        (encode_sums(rng.random((2, 2, 2, 2), dtype=np.float32)), (20, 0, 0)),
    ]
    start, shape = (2, 1, 0), (10, 8, 7)
    total = blend_sums(parts, start, shape, channels=2)
    assert total.dtype == np.float32 and total.shape == (2, *shape)
    # The reference: each part decoded whole and added into a zeroed volume, the part that
    # overlaps the box most (the second) first, then the others in the order given.
    volume = np.zeros((2, 30, 20, 20), dtype=np.float32)
    offset = np.array((0, 0, 3))  # the volume starts at (0, 0, -3)
    for part, part_start in [parts[1], parts[0], parts[2], parts[3], parts[4]]:
        decoded = np.empty(part.shape, dtype=np.float32)
        decode_sums(part, decoded)
        first = np.array(part_start) + offset
        volume[(slice(None), *(slice(a, a + n) for a, n in zip(first, part.shape[1:])))] += decoded
    expected = volume[(slice(None), *(slice(a + o, a + o + n) for a, o, n in zip(start, offset, shape)))]
    np.testing.assert_array_equal(total, expected)
    assert (total[:, -1, 0, -1] == 0).all()  # no part reaches that corner: 0, not what np.empty held
    np.testing.assert_array_equal(blend_sums(parts[4:], start, shape, channels=2), np.zeros((2, *shape), dtype=np.float32))


def test_blended_prediction_is_the_gaussian_weighted_mean_of_the_covering_patches(flyem_crop, small_affinity_model):
    model = load_model(small_affinity_model)
    volume = model.normalize(flyem_crop["raw"][:24, :56, :40])
    grid = PatchGrid(volume.shape, model.patch_shape, (4, 12, 12))
    predictor = model.predictor("cpu")
    weighted_sum = np.zeros((model.out_channels,) + volume.shape)
    weight_sum = np.zeros(volume.shape)
    gaussian = np.einsum("i,j,k->ijk", *(axis_gaussian(size) for size in grid.patch_shape))
    for origin in itertools.product(*(grid.origins(axis) for axis in range(3))):
        stop = [first + size for first, size in zip(origin, grid.patch_shape)]
        prediction = predictor(read_mirrored(volume, origin, stop)[None, None])[0]
        inside = tuple(
            slice(max(-first, 0), min(size, shape - first)) for first, size, shape in zip(origin, grid.patch_shape, volume.shape)
        )
        placed = tuple(slice(first + part.start, first + part.stop) for first, part in zip(origin, inside))
        weighted_sum[(slice(None),) + placed] += gaussian[inside] * prediction[(slice(None),) + inside]
        weight_sum[placed] += gaussian[inside]
    blended = predict_box(predictor, volume, grid, (0, 0, 0), volume.shape)
    np.testing.assert_allclose(blended, weighted_sum / weight_sum, rtol=1e-5, atol=1e-6)


def test_patch_shapes_must_fit_the_networks_downsampling():
    config = UNetConfig(depth=3, pooling=((1, 2, 2), (2, 2, 2)))
    assert check_patch_shape((8, 16, 32), config) == (8, 16, 32)
    with pytest.raises(ValueError, match=r"downsampling \(2, 4, 4\)"):
        check_patch_shape((8, 18, 32), config)
    with pytest.raises(ValueError, match="overlap"):
        PatchGrid((10, 10, 10), (8, 8, 8), (8, 0, 0))


def test_anisotropic_hybrid_unet_keeps_the_patch_shape_and_is_batch_independent():
    torch.manual_seed(0)
    network = UNet3D(UNetConfig(out_channels=3, depth=3, width=4, pooling=((1, 2, 2), (2, 2, 2)), two_d_levels=1)).eval()
    assert network.encoders[0][0].kernel_size == (1, 3, 3) and network.encoders[1][0].kernel_size == (3, 3, 3)
    patches = torch.randn(2, 1, 8, 16, 24)
    with torch.inference_mode():
        together = network(patches)
        alone = network(patches[1:])
    assert together.shape == (2, 3, 8, 16, 24)
    torch.testing.assert_close(together[1:], alone, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "keywords, message",
    [
        ({"depth": 2, "pooling": ()}, "pooling"),
        ({"norm": "batch"}, "norm"),
        ({"two_d_levels": 4}, "two_d_levels"),
        ({"width": 0}, "positive"),
    ],
)
def test_bad_network_configs_are_named(keywords, message):
    with pytest.raises(ValueError, match=message):
        UNetConfig(**keywords)
