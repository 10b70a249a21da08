"""Multiscale pyramids: the levels of an image or label volume, each downsampled from the one before.

Level ``k + 1`` is level ``k`` downsampled by whole factors per axis (:func:`pyramid_factors`):
each of its voxels stands for the window of ``factors`` voxels of level ``k`` starting at
``index * factors``, clipped to the volume at the upper faces. Windows never overlap, so a block of
level ``k + 1`` is computed from the block of level ``k`` it covers (:func:`source_box`), with no
halo, and blockwise downsampling equals downsampling the whole level.

Images are averaged (:func:`downsample_image`); labels take the most frequent id of each window
(:func:`downsample_labels`), so that every id of a level exists in the level below and no id is
ever blended with another.
"""

from __future__ import annotations

import itertools
import math

import numpy as np

from .blocking import Box

# Voxel sizes within this ratio count as equal when choosing factors: (40, 4, 4) nm takes three
# in-plane levels to (40, 32, 32), then halves every axis, since 40/32 < √2; (50, 4, 4) nm takes
# four, to (50, 64, 64), since 50/32 > √2.
_ISOTROPY_RATIO = math.sqrt(2)


def pyramid_factors(resolution, shape, block_shape) -> list[tuple[int, ...]]:
    """Downsampling factors from each level to the next, until a level fits into one block.

    Every level halves the axes whose voxel size is smallest relative to the largest: an axis is
    downsampled by 2 when its voxel size is less than the largest divided by √2, or when no axis
    is (the voxels are then near isotropic, and every axis is halved). Anisotropic data (e.g.
    ssTEM at 4 × 4 × 40 nm) is thus first downsampled in-plane only, until the in-plane voxel
    size nears the section thickness. The √2 makes each level as near isotropic as whole factors
    of 2 can. An axis already one voxel long is never downsampled.

    Args:
        resolution: voxel size of level 0 per axis (z, y, x), positive, any unit.
        shape: shape of level 0, voxels.
        block_shape: the block shape; the last level fits into one block.

    Returns:
        ``[factors_0, factors_1, ...]``: ``factors_k`` (one int per axis, 1 or 2) takes level
        ``k`` to level ``k + 1``; empty if level 0 already fits into one block.
    """
    resolution = np.asarray(resolution, dtype=np.float64)
    shape = np.asarray(shape, dtype=np.int64)
    block_shape = np.asarray(block_shape, dtype=np.int64)
    if (
        not (resolution.shape == shape.shape == block_shape.shape)
        or (resolution <= 0).any()
        or (shape < 1).any()
        or (block_shape < 1).any()
    ):
        raise ValueError(
            f"resolution {tuple(resolution)}, shape {tuple(shape)} and block_shape {tuple(block_shape)} must be positive, one value per axis"
        )
    factors_per_level = []
    while (shape > block_shape).any():
        candidates = shape > 1
        coarse = resolution[candidates].max()
        finer = candidates & (resolution * _ISOTROPY_RATIO < coarse)
        factors = np.where(finer if finer.any() else candidates, 2, 1)
        factors_per_level.append(tuple(int(factor) for factor in factors))
        resolution = resolution * factors
        shape = -(-shape // factors)
    return factors_per_level


def source_box(box: Box, factors, source_shape) -> Box:
    """The box of level ``k`` that ``box`` of level ``k + 1`` is computed from (no halo needed)."""
    return Box(
        tuple(begin * factor for begin, factor in zip(box.begin, factors)),
        tuple(min(end * factor, size) for end, factor, size in zip(box.end, factors, source_shape)),
    )


def source_parts(source: Box, chunk_shape, factors) -> list[Box]:
    """``source`` (a box of level ``k``, :func:`source_box`) cut at the borders of level ``k``'s
    chunks where a border is also one between windows: parts, in C order, that can be read and
    downsampled one at a time. Every part but the last along an axis is whole windows, so the
    downsampled parts, put side by side at ``(part.begin - source.begin) // factors``, equal the
    downsampled box. Along an axis whose factor does not divide the chunks there are fewer cuts, or none.

    A part is one chunk where the factors divide the chunks: a block of the next level holds a
    chunk's worth of arrays at a time instead of all its source chunks at once (a first
    ``pyramid_s1`` block of uint64 supervoxels, 64x128x128 blocks, took 82-85 ms instead of
    113-296 ms in a fresh process, the later ones 58-60 instead of 60-88 ms: less new memory).
    """
    axes = []
    for begin, end, chunk, factor in zip(source.begin, source.end, chunk_shape, factors):
        cuts = [cut for cut in range((begin // chunk + 1) * chunk, end, chunk) if (cut - begin) % factor == 0]
        bounds = [begin, *cuts, end]
        axes.append(list(zip(bounds[:-1], bounds[1:])))
    return [Box(tuple(first for first, _ in ranges), tuple(last for _, last in ranges)) for ranges in itertools.product(*axes)]


def downsample_labels(labels: np.ndarray, factors) -> np.ndarray:
    """The most frequent id of each window of ``factors`` voxels (ties: the smallest id).

    Args:
        labels: integer ids, any ndim; windows at the upper faces are clipped to the array.
        factors: whole factors, one per axis.

    Returns:
        the downsampled ids, shape ``ceil(labels.shape / factors)``, the dtype of ``labels``.
        Background 0 counts like any other id.
    """
    labels = np.asarray(labels)
    factors = _check_factors(labels, factors)
    if not np.issubdtype(labels.dtype, np.integer):
        raise TypeError(f"labels must be integer ids, got dtype {labels.dtype}")
    if np.issubdtype(labels.dtype, np.signedinteger) and labels.size and labels.min() < 0:
        raise ValueError("labels must not be negative")
    if all(factor == 1 for factor in factors):
        return labels.copy()
    labels = np.ascontiguousarray(labels)
    result = np.empty(_downsampled_shape(labels.shape, factors), dtype=labels.dtype)
    # The windows clipped at an upper face are whole windows of the clipped factors: each box of
    # (per axis) whole windows or the one clipped window is counted on its own, with no padding.
    for parts in itertools.product(*(_window_parts(size, factor) for size, factor in zip(labels.shape, factors))):
        source, target, part_factors = zip(*parts)
        result[target] = _mode_of_whole_windows(labels, source, part_factors)
    return result


def _mode_of_whole_windows(labels: np.ndarray, source: tuple[slice, ...], factors: tuple[int, ...]) -> np.ndarray:
    """The mode (smallest of the most frequent id) of each window of ``labels[source]``, whose shape the factors divide.

    ``labels`` is C-contiguous, so that the voxels of a window are gathered by their flat indices.
    """
    # Most windows hold one id (81 % of the 2 x 2 x 2 windows of the dev cube's supervoxels, 88 % of
    # its neuron ids): these are found axis by axis on strided views, the contiguous last axis first
    # (25 ms for 8.4 MVox against 48 ms comparing every voxel of a window with its first one), and
    # only the other windows are gathered, sorted and counted.
    first_voxels = labels[source]
    mixed: np.ndarray | None = None
    for axis in reversed(range(labels.ndim)):
        if factors[axis] == 1:
            continue
        along_axis = [first_voxels[(slice(None),) * axis + (slice(offset, None, factors[axis]),)] for offset in range(factors[axis])]
        differs = along_axis[0] != along_axis[1]
        for voxels in along_axis[2:]:
            differs |= along_axis[0] != voxels
        if mixed is not None:
            for offset in range(factors[axis]):
                differs |= mixed[(slice(None),) * axis + (slice(offset, None, factors[axis]),)]
        first_voxels, mixed = along_axis[0], differs
    modes = first_voxels.copy()
    if mixed is None:
        return modes
    mixed_windows = np.flatnonzero(mixed)
    if mixed_windows.size == 0:
        return modes
    # One row per mixed window: its voxels, by their flat indices in ``labels``, sorted.
    window_origins = [
        window_source.start + index * factor
        for window_source, index, factor in zip(source, np.unravel_index(mixed_windows, modes.shape), factors)
    ]
    in_window = np.ravel_multi_index(np.array(list(itertools.product(*(range(factor) for factor in factors)))).T, labels.shape)
    flat_indices = np.ravel_multi_index(window_origins, labels.shape)[:, None] + in_window
    values = np.sort(labels.reshape(-1)[flat_indices], axis=1).ravel()
    # Runs of equal ids within each row; a row always starts a run.
    run_starts = np.ones(values.size, dtype=bool)
    run_starts[1:] = values[1:] != values[:-1]
    run_starts[:: in_window.size] = True
    starts = np.flatnonzero(run_starts)
    lengths = np.diff(starts, append=values.size)
    row_of_run = starts // in_window.size
    longest = np.maximum.reduceat(lengths, np.flatnonzero(starts % in_window.size == 0))
    # Rows are sorted, so the first longest run of a row holds the smallest of its most frequent ids.
    candidates = np.flatnonzero(lengths == longest[row_of_run])
    first_of_row = np.ones(candidates.size, dtype=bool)
    first_of_row[1:] = row_of_run[candidates[1:]] != row_of_run[candidates[:-1]]
    modes.reshape(-1)[mixed_windows] = values[starts[candidates[first_of_row]]]
    return modes


def _window_parts(size: int, factor: int) -> list[tuple[slice, slice, int]]:
    """(source slice, target slice, factor) of the whole windows along one axis and of the clipped last one."""
    whole = size // factor
    parts = [(slice(0, whole * factor), slice(0, whole), factor)] if whole else []
    if size % factor:
        parts.append((slice(whole * factor, size), slice(whole, whole + 1), size % factor))
    return parts


def downsample_image(image: np.ndarray, factors) -> np.ndarray:
    """The mean of each window of ``factors`` voxels, in the dtype of ``image``.

    Args:
        image: intensities (integer or float), any ndim; windows at the upper faces are clipped to
            the array and averaged over the voxels they hold.
        factors: whole factors, one per axis.

    Returns:
        the downsampled image, shape ``ceil(image.shape / factors)``. Integer means are rounded to
        the nearest integer (halves up), so that the mean of a constant window is that constant.
    """
    image = np.asarray(image)
    factors = _check_factors(image, factors)
    if not (np.issubdtype(image.dtype, np.integer) or np.issubdtype(image.dtype, np.floating)):
        raise TypeError(f"image must be integer or float, got dtype {image.dtype}")
    shape = _downsampled_shape(image.shape, factors)
    if image.ndim and shape[-1] > 1 and factors[-1] < 8:
        sums = np.empty(shape, dtype=np.float64)
        for parts in itertools.product(*(_window_parts(size, factor) for size, factor in zip(image.shape, factors))):
            source, target, part_factors = zip(*parts)
            sums[target] = _window_sums(image[source], part_factors)
    else:
        # numpy merges the window axes when the last axis holds one window, and sums 8 or more
        # voxels in pairs: that order is kept by summing the padded windows with numpy.
        padded = np.zeros(tuple(size * factor for size, factor in zip(shape, factors)), dtype=np.float64)
        padded[tuple(slice(0, size) for size in image.shape)] = image
        windows = padded.reshape(tuple(value for size, factor in zip(shape, factors) for value in (size, factor)))
        sums = windows.sum(axis=tuple(range(1, 2 * image.ndim, 2)))
    # Voxels per window: the outer product of the per-axis counts, smaller only at the upper faces.
    counts = np.ones(shape, dtype=np.float64)
    for axis, (size, factor) in enumerate(zip(image.shape, factors)):
        per_axis = np.minimum(factor, size - np.arange(shape[axis]) * factor).astype(np.float64)
        counts = counts * per_axis.reshape((-1,) + (1,) * (image.ndim - axis - 1))
    means = sums / counts
    if np.issubdtype(image.dtype, np.integer):
        return np.floor(means + 0.5).astype(image.dtype)
    return means.astype(image.dtype)


def _window_sums(image: np.ndarray, factors: tuple[int, ...]) -> np.ndarray:
    """The float64 sum of each window of ``image``, whose shape the factors divide, in numpy's order.

    The order is the one numpy's sum over the window axes of a C-contiguous (size, factor, ...)
    float64 array takes (which this module used until it took 62 ms of 75 for an 8.4 MVox float32
    block; 15 ms now) when the last axis holds more than one window and its factor is below 8:
    from +0, the voxels along the last axis summed first, these rows then added in C order of
    their offsets. Means, and their rounding to the image's dtype, are thus the same bit for bit
    (compared on floats spanning 30 decades); zeros padding a clipped window change no sum.
    """
    last = image.ndim - 1
    sums = np.zeros(tuple(size // factor for size, factor in zip(image.shape, factors)), dtype=np.float64)
    for offset in itertools.product(*(range(factor) for factor in factors[:last])):
        leading = tuple(slice(begin, None, factor) for begin, factor in zip(offset, factors))
        row = image[leading + (slice(0, None, factors[last]),)].astype(np.float64)
        for begin in range(1, factors[last]):
            row += image[leading + (slice(begin, None, factors[last]),)]
        sums += row
    return sums


def _check_factors(array: np.ndarray, factors) -> tuple[int, ...]:
    factors = tuple(int(factor) for factor in factors)
    if len(factors) != array.ndim or min(factors, default=1) < 1:
        raise ValueError(f"factors {factors} must be one whole number of at least 1 per axis of an array of shape {array.shape}")
    return factors


def _downsampled_shape(shape, factors) -> tuple[int, ...]:
    return tuple(-(-size // factor) for size, factor in zip(shape, factors))
