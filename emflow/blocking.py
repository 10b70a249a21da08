"""Regular blockings of an n-dimensional volume.

All coordinates are integer voxel indices in the array's axis order
(``(z, y, x)`` for 3D volumes); ``end`` is exclusive.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


def _as_index_tuple(values, name: str) -> tuple[int, ...]:
    try:
        return tuple(int(value) for value in values)
    except TypeError as error:
        raise TypeError(f"{name} must be a sequence of integers, got {values!r}") from error


@dataclass(frozen=True)
class Box:
    """Axis-aligned box ``[begin, end)`` in voxel coordinates."""

    begin: tuple[int, ...]
    end: tuple[int, ...]

    def __post_init__(self):
        begin = _as_index_tuple(self.begin, "begin")
        end = _as_index_tuple(self.end, "end")
        if len(begin) != len(end):
            raise ValueError(f"begin and end must have the same length, got {begin} and {end}")
        if any(b < 0 or e < b for b, e in zip(begin, end)):
            raise ValueError(f"box needs 0 <= begin <= end per axis, got begin={begin}, end={end}")
        # Normalised to plain int tuples so that boxes compare and hash by value.
        object.__setattr__(self, "begin", begin)
        object.__setattr__(self, "end", end)

    @property
    def shape(self) -> tuple[int, ...]:
        """Extent of the box per axis, in voxels."""
        return tuple(e - b for b, e in zip(self.begin, self.end))

    @property
    def slicing(self) -> tuple[slice, ...]:
        """Slices that cut this box out of the array it refers to."""
        return tuple(slice(b, e) for b, e in zip(self.begin, self.end))

    def local_to(self, outer: Box) -> Box:
        """This box in the coordinates of ``outer``, which must contain it."""
        if len(outer.begin) != len(self.begin):
            raise ValueError(f"boxes have different ndim: {self} and {outer}")
        if any(ob > b or e > oe for b, e, ob, oe in zip(self.begin, self.end, outer.begin, outer.end)):
            raise ValueError(f"{self} is not contained in {outer}")
        return Box(
            tuple(b - ob for b, ob in zip(self.begin, outer.begin)),
            tuple(e - ob for e, ob in zip(self.end, outer.begin)),
        )


def face_slabs(box: Box, region: Box) -> list[Box]:
    """``box`` and, per axis along which ``region`` reaches past the upper face of ``box``, the slab
    of ``region`` beyond that face, as wide as ``box`` along the other axes.

    These are the voxels that pairs ``(p, p + step along one axis)`` with ``p`` in ``box`` reach, for
    steps up to the region's extent past each face; the region's edges and corners past two or three
    faces are not among them. ``region`` must contain ``box`` and start where it starts.
    """
    if region.begin != box.begin or any(end < box_end for end, box_end in zip(region.end, box.end)):
        raise ValueError(f"{region} must start at {box.begin} and contain {box}")
    slabs = [box]
    for axis, (box_end, region_end) in enumerate(zip(box.end, region.end)):
        if region_end > box_end:
            slabs.append(
                Box(
                    tuple(box_end if index == axis else begin for index, begin in enumerate(box.begin)),
                    tuple(region_end if index == axis else end for index, end in enumerate(box.end)),
                )
            )
    return slabs


@dataclass(frozen=True)
class Blocking:
    """Tiling of a volume of ``shape`` into blocks of ``block_shape``.

    Blocks are numbered in C order over the block grid (last axis fastest).
    Blocks at the upper border are clipped to the volume, so they may be
    smaller than ``block_shape``.
    """

    shape: tuple[int, ...]
    block_shape: tuple[int, ...]

    def __post_init__(self):
        shape = _as_index_tuple(self.shape, "shape")
        block_shape = _as_index_tuple(self.block_shape, "block_shape")
        if len(shape) != len(block_shape):
            raise ValueError(f"shape and block_shape must have the same ndim, got {shape} and {block_shape}")
        for axis, (size, block_size) in enumerate(zip(shape, block_shape)):
            if size <= 0 or block_size <= 0:
                raise ValueError(f"shape and block_shape must be positive, got {size} and {block_size} along axis {axis}")
            if block_size > size:
                raise ValueError(f"block_shape {block_size} is larger than the volume ({size}) along axis {axis}")
        object.__setattr__(self, "shape", shape)
        object.__setattr__(self, "block_shape", block_shape)

    @property
    def blocks_per_axis(self) -> tuple[int, ...]:
        """Number of blocks along each axis."""
        return tuple(math.ceil(s / b) for s, b in zip(self.shape, self.block_shape))

    @property
    def number_of_blocks(self) -> int:
        """Total number of blocks."""
        return math.prod(self.blocks_per_axis)

    def block_grid_position(self, block_id: int) -> tuple[int, ...]:
        """Position of block ``block_id`` in the block grid (C order)."""
        block_id = int(block_id)
        if not 0 <= block_id < self.number_of_blocks:
            raise IndexError(f"block_id {block_id} out of range for {self.number_of_blocks} blocks")
        position = []
        for blocks in reversed(self.blocks_per_axis):
            block_id, index = divmod(block_id, blocks)
            position.append(index)
        return tuple(reversed(position))

    def block(self, block_id: int) -> Box:
        """Inner box of block ``block_id``, clipped to the volume."""
        position = self.block_grid_position(block_id)
        begin = tuple(p * b for p, b in zip(position, self.block_shape))
        end = tuple(min(start + b, s) for start, b, s in zip(begin, self.block_shape, self.shape))
        return Box(begin, end)

    def block_with_halo(self, block_id: int, halo) -> tuple[Box, Box]:
        """Block ``block_id`` enlarged by ``halo`` voxels on both sides.

        Returns ``(outer, inner_local)``: ``outer`` is the haloed box clipped
        to the volume, in volume coordinates; ``inner_local`` is the block's
        inner box in the coordinates of ``outer`` (i.e. its position inside
        an array read with ``outer.slicing``).
        """
        halo = _as_index_tuple(halo, "halo")
        if len(halo) != len(self.shape):
            raise ValueError(f"halo must have ndim {len(self.shape)}, got {halo}")
        if any(h < 0 for h in halo):
            raise ValueError(f"halo must be non-negative, got {halo}")
        inner = self.block(block_id)
        outer = Box(
            tuple(max(b - h, 0) for b, h in zip(inner.begin, halo)),
            tuple(min(e + h, s) for e, h, s in zip(inner.end, halo, self.shape)),
        )
        return outer, inner.local_to(outer)

    def boxes_with_halo(self, halo) -> np.ndarray:
        """Every block's box enlarged by ``halo`` and clipped to the volume, at once.

        Returns int64 (number_of_blocks, 2, ndim): ``[block_id, 0]`` the begin and ``[block_id, 1]``
        the end of block ``block_id``'s box, as `block_with_halo`'s ``outer`` (halo 0: `block`).
        """
        halo = np.asarray(_as_index_tuple(halo, "halo"), dtype=np.int64)
        if halo.size != len(self.shape) or (halo < 0).any():
            raise ValueError(f"halo must be {len(self.shape)} non-negative integers, got {tuple(halo)}")
        positions = np.stack(np.unravel_index(np.arange(self.number_of_blocks), self.blocks_per_axis), axis=1)
        block_shape, shape = np.asarray(self.block_shape, dtype=np.int64), np.asarray(self.shape, dtype=np.int64)
        begin = np.maximum(positions * block_shape - halo, 0)
        end = np.minimum(positions * block_shape + block_shape + halo, shape)
        return np.stack([begin, end], axis=1)

    def blocks_intersecting(self, begin, end) -> list[int]:
        """Ids (ascending) of the blocks whose box intersects [begin, end), which may reach past the volume."""
        ranges = []
        for first, last, size, block_size in zip(begin, end, self.shape, self.block_shape):
            first, last = max(int(first), 0), min(int(last), size)
            if last <= first:
                return []
            ranges.append(range(first // block_size, (last - 1) // block_size + 1))
        # C order over the ranges, each ascending, gives the ids ascending. In Python, not through
        # np.meshgrid and np.ravel_multi_index: 4.7 instead of 35 µs for a box of a few blocks (the
        # content key of every kept pyramid-level segmentation block asks for one).
        ids = [0]
        for axis_range, count in zip(ranges, self.blocks_per_axis):
            ids = [previous * count + index for previous in ids for index in axis_range]
        return ids
