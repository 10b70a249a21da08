"""Sliding-window inference with blending, block by block, equal to a whole-volume prediction.

Patches lie on one grid fixed by the volume (not by the block being predicted): along each axis
they start at -overlap // 2 + k * (patch - overlap), and the grid runs until the volume plus that
margin is covered. A voxel's prediction is the blending-weighted mean over every grid patch that
covers it. Outside the volume, raw data are mirrored (numpy's "reflect"), so voxels at the border
see context like any other and every block reads the same mirrored values.

Block-wise, without computing any patch twice (overlap-add): each patch belongs to the block that
holds its centre (`PatchGrid.patches_of_block`). A block runs its own patches and keeps their
weighted sums over their span (`accumulate_patches`), which reaches past the block by up to a
patch; the final value of a voxel is the sum of the accumulations of every block whose span
covers it (`blend_sums`). Letting each block instead run every patch that touches it would
repeat the patches along block faces: for 64×128×128 blocks and 32×96×96 patches, about 4× the
network evaluations of a whole-volume run.

The blending weight is a Gaussian per axis with sigma patch / 8 (as in nnU-Net): patch centres,
which see the most context, dominate, and seams between patches vanish. The weights are
normalised on the grid (`PatchGrid.axis_weights`): along each axis, a patch's Gaussian divided by
the sum of the Gaussians of every patch covering the position. The patches form a product grid
and the weight is a product over the axes, so the normalised weights of the patches covering a
voxel add up to 1: the weighted sums are the prediction, with no sum of weights to keep and no
division. Where one patch alone covers a voxel, its weight is exactly 1, and its prediction is
taken as it is: only the overlaps are multiplied.

A block's sums are probabilities weighted by weights that add up to at most 1, so they lie in
[0, 1]; stored, they are float16 (`encode_sums`): half the bytes of float32, each sum within 2^-11
of its value (relatively). The sums are not negative, so a blended voxel is within 2^-11 of its
value (4.9e-4 at most) of a whole-volume prediction however many blocks' sums reach it, an eighth
of the 1/255 step of predictions stored as uint8.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np


def axis_gaussian(size: int) -> np.ndarray:
    """Gaussian over the `size` voxels of a patch along one axis, centred on it (sigma = size / 8),
    max 1; float64 (size,). Its smallest value, at the patch's faces, is about exp(-8) ≈ 3e-4."""
    centres = np.arange(size) + 0.5 - size / 2
    weights = np.exp(-0.5 * (centres / (size / 8)) ** 2)
    return weights / weights.max()


@dataclass(frozen=True)
class PatchGrid:
    """The patch grid of a volume: shapes (z, y, x) in voxels; overlap < patch along every axis."""

    volume_shape: tuple[int, int, int]
    patch_shape: tuple[int, int, int]
    overlap: tuple[int, int, int]

    def __post_init__(self):
        for name in ("volume_shape", "patch_shape", "overlap"):
            object.__setattr__(self, name, tuple(int(value) for value in getattr(self, name)))
        if any(size <= 0 for size in self.volume_shape + self.patch_shape):
            raise ValueError(f"volume shape {self.volume_shape} and patch shape {self.patch_shape} must be positive")
        if any(not 0 <= overlap < patch for overlap, patch in zip(self.overlap, self.patch_shape)):
            raise ValueError(f"overlap {self.overlap} must be at least 0 and less than the patch shape {self.patch_shape}")

    @property
    def stride(self) -> tuple[int, ...]:
        return tuple(patch - overlap for patch, overlap in zip(self.patch_shape, self.overlap))

    def origins(self, axis: int) -> np.ndarray:
        """All patch origins along one axis (int64; the first is -overlap // 2, possibly outside)."""
        margin = self.overlap[axis] // 2
        span = self.volume_shape[axis] + 2 * margin
        count = max(1, math.ceil((span - self.patch_shape[axis]) / self.stride[axis]) + 1)
        return -margin + self.stride[axis] * np.arange(count, dtype=np.int64)

    def covering(self, start: Sequence[int], stop: Sequence[int]) -> list[np.ndarray]:
        """Per axis, the origins of the patches that overlap [start, stop)."""
        covering = []
        for axis in range(3):
            origins = self.origins(axis)
            keep = (origins < stop[axis]) & (origins + self.patch_shape[axis] > start[axis])
            covering.append(origins[keep])
        return covering

    def axis_weights(self, axis: int) -> np.ndarray:
        """The blending weights along one axis: float32 (number of origins, patch size), row k for
        the patch at `origins(axis)[k]`, its Gaussian (`axis_gaussian`) divided by the sum of the
        Gaussians of all the patches covering each position, so that at every position the
        weights of the covering patches add up to 1; exactly 1 where one patch alone covers."""
        origins, size = self.origins(axis), self.patch_shape[axis]
        gaussian = axis_gaussian(size)
        positions = origins[:, None] - origins[0] + np.arange(size)  # (origins, size), from the first origin
        covering_sum = np.zeros(int(origins[-1] - origins[0]) + size)
        np.add.at(covering_sum, positions, np.broadcast_to(gaussian, positions.shape))
        return (gaussian / covering_sum[positions]).astype(np.float32)

    def patches_of_block(self, begin: Sequence[int], end: Sequence[int]) -> list[np.ndarray]:
        """Per axis, the origins of the patches that belong to the block [begin, end): those whose
        centre, clamped into the volume, lies inside it. Every patch belongs to exactly one block."""
        owned = []
        for axis in range(3):
            origins = self.origins(axis)
            centres = np.clip(origins + self.patch_shape[axis] // 2, 0, self.volume_shape[axis] - 1)
            owned.append(origins[(centres >= begin[axis]) & (centres < end[axis])])
        return owned

    def number_of_patches(self) -> int:
        return math.prod(len(self.origins(axis)) for axis in range(3))

    def block_spans(self, blocking) -> np.ndarray:
        """Per block of `blocking` (an `emflow.blocking.Blocking` of the volume), the box spanned by
        the patches it owns, clipped to the volume: int64 (number_of_blocks, 2, 3), begin and end;
        begin = end (the block's corner) where it owns none.

        Which patches a block owns is decided per axis (`patches_of_block`), so the spans are
        computed per position along each axis and combined, not block by block.
        """
        first_block = blocking.block(0)
        axis_spans = []  # per axis: (begin, end) of the span at each block position along it
        for axis, (blocks, block_size, size) in enumerate(zip(blocking.blocks_per_axis, blocking.block_shape, self.volume_shape)):
            position_spans = []
            for position in range(blocks):
                begin, end = list(first_block.begin), list(first_block.end)
                begin[axis], end[axis] = position * block_size, min((position + 1) * block_size, size)
                origins = self.patches_of_block(begin, end)[axis]
                if len(origins) == 0:
                    position_spans.append((begin[axis], begin[axis]))
                else:
                    position_spans.append((max(int(origins[0]), 0), min(int(origins[-1]) + self.patch_shape[axis], size)))
            axis_spans.append(np.asarray(position_spans, dtype=np.int64))
        positions = np.stack(np.unravel_index(np.arange(blocking.number_of_blocks), blocking.blocks_per_axis), axis=1)
        spans = np.stack([axis_spans[axis][positions[:, axis]] for axis in range(3)], axis=2)  # (blocks, 2, 3)
        # A block that owns no patch along one axis owns none at all: its span is empty on every axis.
        empty = (spans[:, 0] == spans[:, 1]).any(axis=1)
        corners = blocking.boxes_with_halo((0, 0, 0))[:, 0]
        spans[empty, 0] = corners[empty]
        spans[empty, 1] = corners[empty]
        return spans


def reflect_indices(coordinates: np.ndarray, size: int) -> np.ndarray:
    """Map coordinates outside 0..size-1 into the volume by mirroring without repeating the edge
    (numpy.pad's "reflect", applied as often as needed)."""
    if size == 1:
        return np.zeros_like(coordinates)
    period = 2 * (size - 1)
    folded = np.mod(coordinates, period)
    return np.where(folded >= size, period - folded, folded)


def read_mirrored(volume, start: Sequence[int], stop: Sequence[int]) -> np.ndarray:
    """volume[start:stop] for a box that may extend past the volume, mirrored there.

    volume: any 3D array-like that supports slicing (numpy, zarr, h5py); only the bounding box of
    the voxels needed is read.
    """
    indices = [reflect_indices(np.arange(first, last), size) for first, last, size in zip(start, stop, volume.shape)]
    low = [int(axis_indices.min()) for axis_indices in indices]
    high = [int(axis_indices.max()) + 1 for axis_indices in indices]
    region = np.asarray(volume[tuple(slice(first, last) for first, last in zip(low, high))])
    local = [axis_indices - first for axis_indices, first in zip(indices, low)]
    # Most boxes lie inside the volume, or reach past it by less than what they read inside it (a
    # patch at the border): the region's own reflection is the volume's, one `np.pad` (0.6 ms for
    # a 64x128x128 float32 patch past three faces, against 4.6 ms gathering along each axis).
    widths = [(max(0, -first), max(0, last - size)) for first, last, size in zip(start, stop, volume.shape)]
    if all(
        np.array_equal(axis_local, np.pad(np.arange(size), width, mode="reflect")) if size > 1 else not any(width)
        for axis_local, size, width in zip(local, region.shape, widths)
    ):
        return np.pad(region, widths, mode="reflect") if any(map(any, widths)) else region
    for axis, axis_local in enumerate(local):
        if axis_local[0] != 0 or axis_local.size != region.shape[axis] or np.any(np.diff(axis_local) != 1):
            region = np.take(region, axis_local, axis=axis)
    return region


PredictPatches = Callable[[np.ndarray], np.ndarray]


def _weighted_runs(weights: np.ndarray) -> np.ndarray:
    """[start, stop) of each run of positions whose weight is not 1: int (runs, 2)."""
    not_one = np.concatenate(([0], (weights != 1).astype(np.int8), [0]))
    return np.flatnonzero(np.diff(not_one)).reshape(-1, 2)


def accumulate_patches(
    predict_patches: PredictPatches,
    volume,
    grid: PatchGrid,
    origins: Sequence[np.ndarray],
    *,
    batch_size: int = 1,
) -> tuple[tuple[int, ...], np.ndarray]:
    """Run the patches at every combination of the per-axis `origins` and add them up, weighted.

    predict_patches: maps float32 (N, 1, *patch_shape) network input to float32 (N, C,
    *patch_shape) probabilities (which it may hand over: they are weighted in place). volume: 3D
    array-like of network input (already normalised), read once over the patches' span, mirrored
    outside. Returns (span_start, accumulated): accumulated is float32 (C, *span shape), the sums
    of the C channels weighted by `PatchGrid.axis_weights`, over the box the patches span, which
    starts at span_start (volume coordinates, possibly negative). Where every patch covering a
    voxel is among them, the sum is the blended prediction.
    """
    import torch  # loaded where a model runs: see `encode_sums`

    span_start = tuple(int(axis_origins[0]) for axis_origins in origins)
    span_stop = [int(axis_origins[-1]) + size for axis_origins, size in zip(origins, grid.patch_shape)]
    region = read_mirrored(volume, span_start, span_stop).astype(np.float32, copy=False)
    # Per axis and origin: the weights, and the runs where they differ from 1 (the overlaps with other patches).
    axis_weights = [
        {origin: (weights, _weighted_runs(weights)) for origin, weights in zip(grid.origins(axis).tolist(), grid.axis_weights(axis))}
        for axis in range(3)
    ]
    span_shape = tuple(last - first for first, last in zip(span_start, span_stop))
    accumulated = None
    patch_origins = list(itertools.product(*(axis_origins.tolist() for axis_origins in origins)))
    for first in range(0, len(patch_origins), batch_size):
        batch_origins = patch_origins[first : first + batch_size]
        slicings = [
            tuple(
                slice(origin - offset, origin - offset + size) for origin, offset, size in zip(patch_origin, span_start, grid.patch_shape)
            )
            for patch_origin in batch_origins
        ]
        predictions = predict_patches(np.stack([region[slicing] for slicing in slicings])[:, None])
        for patch_origin, slicing, prediction in zip(batch_origins, slicings, predictions):
            # Weighted in place, through torch, whose threads share the work: 1.5 ms against numpy's
            # 4.0 for a 9x64x128x128 patch at a corner of the grid on this project's 2 cores.
            weighted = torch.from_numpy(prediction)
            for axis, origin in enumerate(patch_origin):
                weights, runs = axis_weights[axis][origin]
                for run_start, run_stop in runs:
                    shape = [1, 1, 1]
                    shape[axis] = run_stop - run_start
                    run = (slice(None),) * (axis + 1) + (slice(run_start, run_stop),)
                    weighted[run] *= torch.from_numpy(weights[run_start:run_stop].reshape(shape))
            if len(patch_origins) == 1:
                # A lone patch spans the whole span: its weighted prediction is the sum, with no
                # zeroed array to add it to (10 of the 17 ms the sums cost a 64x128x128 patch).
                accumulated = prediction
                continue
            if accumulated is None:
                accumulated = np.zeros((predictions.shape[1],) + span_shape, dtype=np.float32)
            accumulated[(slice(None),) + slicing] += prediction
    if accumulated is None:
        raise ValueError("no patches to accumulate: every axis needs at least one origin")
    return span_start, accumulated


def inside_volume(start: Sequence[int], sums: np.ndarray, volume_shape: Sequence[int]) -> tuple[tuple[int, ...], np.ndarray]:
    """The part of `sums` (channels first, placed at `start`, which may lie outside the volume)
    inside a volume of `volume_shape`, and where it starts (`start` clipped to the volume): a view."""
    clipped = clipped_start(start)
    inside = tuple(
        slice(first - offset, min(offset + size, extent) - offset)
        for first, offset, size, extent in zip(clipped, start, sums.shape[1:], volume_shape)
    )
    return clipped, sums[(slice(None),) + inside]


def clipped_start(start: Sequence[int]) -> tuple[int, ...]:
    """`start` (z, y, x voxels) clipped to the volume's first voxel."""
    return tuple(max(0, int(first)) for first in start)


def fixed_point(values: np.ndarray, dtype) -> np.ndarray:
    """float values in [0, 1] (any shape) as unsigned integers of `dtype`, `round(values * top)`
    with top the dtype's largest value, clipped to [0, top] (float rounding may put a value a hair
    above 1), rounding half to even as `np.rint` does. A 3D slice at a time (a channel) through one
    reused float32 buffer: the whole-array temporaries of `np.round(values * 255).astype(np.uint8)`
    took 29-41 ms for a block of CNN predictions (9x64x128x128), a channel at a time 10-14 ms (2D
    slices: 21 ms); the clip adds 0.5 of 6 ms on a faster machine."""
    values = np.asarray(values)
    top = np.iinfo(dtype).max
    result = np.empty(values.shape, dtype=dtype)
    scaled = np.empty(values.shape[-3:], dtype=np.float32)
    for index in np.ndindex(values.shape[:-3]):
        np.multiply(values[(*index, ...)], np.float32(top), out=scaled)
        np.clip(scaled, 0, top, out=scaled)
        np.rint(scaled, out=scaled)
        np.copyto(result[(*index, ...)], scaled, casting="unsafe")
    return result


# The uint16 fixed point in which an emflow before float16 sums stored them: value x SUM_SCALE,
# rounded (`decode_sums` reads such partials, so an upgrade runs no block's network again).
SUM_SCALE = int(np.iinfo(np.uint16).max)


def encode_sums(sums: np.ndarray) -> np.ndarray:
    """float32 sums in [0, 1] (C, Z, Y, X; `accumulate_patches`) as float16, each within 2^-11 of
    its value times the value (4.9e-4 at most, the sums being at most 1; within 3e-8 below 6.1e-5,
    where float16 is subnormal).

    Converted by torch, which uses the CPU's float16 conversion instructions: 1.6 ms for 54 MB of
    sums (9 channels over 72x144x144) on this project's 2 cores, against 27 ms for numpy's
    `astype` and 12 ms for the 16-bit fixed point emflow stored before (`SUM_SCALE`); decoding
    them back (`decode_sums`) 1.6 ms against 4. torch is imported here, not with the module:
    storage imports this module in every run, and only a run that predicts has torch loaded."""
    import torch

    return torch.from_numpy(sums).to(torch.float16).numpy()


def decode_sums(stored: np.ndarray, out: np.ndarray) -> None:
    """Write the float32 values of stored sums into `out` (float32, the same shape): float16 from
    `encode_sums`, or what an earlier emflow stored, uint16 fixed point (`SUM_SCALE`) or float32.
    float16 sums held in a read-only array (a read-only memory map) take numpy's slower path:
    torch does not take arrays it may not write."""
    if stored.dtype == np.float16 and stored.flags.writeable:
        import torch

        torch.from_numpy(out).copy_(torch.from_numpy(stored))
    elif stored.dtype == np.uint16:
        np.multiply(stored, np.float32(1 / SUM_SCALE), out=out)
    else:
        np.copyto(out, stored)


def _overlap(start: Sequence[int], shape: Sequence[int], part_start: Sequence[int], part_shape: Sequence[int]):
    """The overlap of box [start, start + shape) and box [part_start, part_start + part_shape), as
    slicings local to each (z, y, x); None where they do not overlap."""
    box_slicing, part_slicing = [], []
    for first_box, size_box, first_part, size_part in zip(start, shape, part_start, part_shape):
        first, last = max(first_box, first_part), min(first_box + size_box, first_part + size_part)
        if last <= first:
            return None
        box_slicing.append(slice(first - first_box, last - first_box))
        part_slicing.append(slice(first - first_part, last - first_part))
    return tuple(box_slicing), tuple(part_slicing)


def _zero_outside(total: np.ndarray, inner: tuple[slice, ...]) -> None:
    """Set total (C, Z, Y, X) to 0 outside the box `inner` (z, y, x slicing): one slab below and one
    above the box along each axis, within the box along the axes before it."""
    for axis, axis_inner in enumerate(inner):
        outer = [slice(None)] + [inner[other] if other < axis else slice(None) for other in range(3)]
        for outside in (slice(0, axis_inner.start), slice(axis_inner.stop, None)):
            outer[axis + 1] = outside
            total[tuple(outer)] = 0


def blend_sums(parts: Sequence[tuple[np.ndarray, Sequence[int]]], start: Sequence[int], shape: Sequence[int], channels: int) -> np.ndarray:
    """The sum of the stored sums `parts` over the box [start, start + shape) (z, y, x voxels):
    float32 (channels, *shape), 0 where no part reaches.

    parts: (stored sums (channels, Z, Y, X; `encode_sums`, or an earlier emflow's, `decode_sums`),
    where they start (z, y, x)). The part that overlaps the box most (the first of equals) is
    decoded into it and the rest of the box zeroed; the others are decoded through one buffer and
    added, in the order given, so that the same parts give the same float sums. Blending the 8 blocks of a 112x224x224 crop (9 channels, 64x128x128 blocks, parts
    of 60x120x120) in a fresh process took 66-74 ms so, against 270-290 ms for a zeroed box with
    each part decoded into a new array of its overlap and added.
    """
    overlaps = [(part, _overlap(start, shape, part_start, part.shape[1:])) for part, part_start in parts]
    overlaps = [(part, slicings) for part, slicings in overlaps if slicings is not None]
    if not overlaps:
        return np.zeros((channels, *shape), dtype=np.float32)
    total = np.empty((channels, *shape), dtype=np.float32)
    largest = max(range(len(overlaps)), key=lambda index: math.prod(axis.stop - axis.start for axis in overlaps[index][1][0]))
    part, (box_slicing, part_slicing) = overlaps[largest]
    _zero_outside(total, box_slicing)
    decode_sums(part[(slice(None), *part_slicing)], total[(slice(None), *box_slicing)])
    rest = [overlap for index, overlap in enumerate(overlaps) if index != largest]
    buffer = np.empty(
        max((channels * math.prod(axis.stop - axis.start for axis in slicings[0]) for _, slicings in rest), default=0), np.float32
    )
    for part, (box_slicing, part_slicing) in rest:
        target = total[(slice(None), *box_slicing)]
        decoded = buffer[: target.size].reshape(target.shape)
        decode_sums(part[(slice(None), *part_slicing)], decoded)
        target += decoded
    return total


def predict_box(
    predict_patches: PredictPatches,
    volume,
    grid: PatchGrid,
    start: Sequence[int],
    stop: Sequence[int],
    *,
    batch_size: int = 1,
) -> np.ndarray:
    """Blended prediction of the box [start, stop) in one go, running every patch that covers it.

    Returns float32 (C, *box shape), the values a prediction of the whole volume has there (a
    view into the sums over the patches' span).
    """
    span_start, accumulated = accumulate_patches(predict_patches, volume, grid, grid.covering(start, stop), batch_size=batch_size)
    inner = tuple(slice(first - offset, last - offset) for first, last, offset in zip(start, stop, span_start))
    return accumulated[(slice(None),) + inner]
