"""The stored state of an input volume's chunks: what tells a rerun which blocks saw new data.

A chunk's state is the size and modification time (ns) of its file, or None while the chunk is
not written (it then reads as the fill value); like `make` and `rsync`, the content is not read,
so checking a finished run costs one `stat` per chunk. Writing new data into a zarr input changes
the state of exactly the chunks written. Rewriting a chunk with the same bytes changes its state
too, and recomputes the blocks that read it, with the same result.

An HDF5 dataset has no files of its own: its state is the whole file's, so any write to the file
counts as a change to every chunk.
"""

from __future__ import annotations

import functools
import itertools
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zarr

from .volumes import HDF5Volume, open_volume


@dataclass(frozen=True)
class ChunkLayout:
    """Where the chunk files of one stored array are: `folder / key_of(chunk grid position)`.

    `grid_shape` is the shape of the unit stored as one file: the chunk, or the shard when the
    array is sharded; `shape` the array's. `folder` None: the array is not a folder of chunk files
    (an HDF5 dataset); `file` is then the one file holding it.
    """

    shape: tuple[int, ...]
    grid_shape: tuple[int, ...]
    folder: Path | None
    key_of: Callable[[tuple[int, ...]], str] | None
    file: Path | None = None


def region_states(path: str | Path, key: str, regions: np.ndarray) -> list[bytes]:
    """For each region, the state of every stored chunk of dataset `key` in `path` it intersects.

    `regions`: int (number_of_regions, 2, ndim), begin and end of each box (a dataset with more
    axes, such as affinities (C, z, y, x), is read along all of its leading axes). Returns one bytes
    string per region: the (size, modification time) pairs of its chunks in grid order, -1 for a
    chunk not written; equal bytes, equal chunk states. The states of a dataset's chunks are read
    once per process, with one `stat` per chunk, and kept until `forget_chunk_states()`. A state
    read earlier than the data is safe: a block that reads newer data than its record says is
    only recomputed once more.
    """
    layout, states = _dataset_states(str(path), key)
    if layout.folder is None:
        return [states.tobytes()] * len(regions)
    grid_shape = np.asarray(layout.grid_shape, dtype=np.int64)
    regions = np.asarray(regions, dtype=np.int64)
    leading = len(layout.shape) - regions.shape[2]
    if leading:  # a dataset with channel axes first (affinities): every channel of the region
        whole = np.asarray(layout.shape[:leading], dtype=np.int64)
        regions = np.concatenate([np.stack([np.zeros_like(whole), whole])[None].repeat(len(regions), axis=0), regions], axis=2)
    first = regions[:, 0] // grid_shape
    stop = np.where(regions[:, 1] > regions[:, 0], (regions[:, 1] - 1) // grid_shape + 1, first)
    return [states[tuple(slice(begin, end) for begin, end in zip(low, high))].tobytes() for low, high in zip(first.tolist(), stop.tolist())]


def forget_chunk_states() -> None:
    """Read the chunks' states again on next use (new data may have been written since)."""
    _dataset_states.cache_clear()


@functools.lru_cache(maxsize=32)
def _dataset_states(path: str, key: str) -> tuple[ChunkLayout, np.ndarray]:
    """The layout and the states of all chunks: int64 (*chunk grid shape, 2), (size, modification time ns)."""
    layout = _chunk_layout(path, key)
    if layout.folder is None:
        return layout, np.asarray(_file_state(layout.file) or (-1, -1), dtype=np.int64)
    grid = tuple(-(-size // chunk) for size, chunk in zip(layout.shape, layout.grid_shape))
    folder = str(layout.folder)
    states = np.empty((math.prod(grid), 2), dtype=np.int64)
    for index, position in enumerate(itertools.product(*(range(count) for count in grid))):
        states[index] = _file_state(f"{folder}/{layout.key_of(position)}") or (-1, -1)
    return layout, states.reshape(grid + (2,))


def _chunk_layout(path: str, key: str) -> ChunkLayout:
    volume = open_volume(path, key)
    shape = tuple(volume.shape)
    if isinstance(volume, HDF5Volume):
        volume.close()
    root = getattr(volume.store_path.store, "root", None) if isinstance(volume, zarr.Array) else None
    if root is None:  # HDF5, or not a folder of files (e.g. a zip store): the whole container is one unit
        return ChunkLayout(shape=shape, grid_shape=(), folder=None, key_of=None, file=Path(path))
    metadata = volume.metadata
    grid_shape = tuple(metadata.chunk_grid.chunk_shape) if metadata.zarr_format == 3 else tuple(metadata.chunks)
    return ChunkLayout(shape=shape, grid_shape=grid_shape, folder=Path(root) / volume.store_path.path, key_of=metadata.encode_chunk_key)


def _file_state(path: str | Path) -> tuple[int, int] | None:
    try:
        status = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    return status.st_size, status.st_mtime_ns
