"""The stored state of a volume's chunks: what tells a rerun which blocks saw new data, and which
recorded output is no longer what its task wrote.

A chunk's state is the size and modification time (ns) of its file, or None while the chunk is
not written (it then reads as the fill value); like `make` and `rsync`, the content is not read,
so checking a finished run costs one `stat` per chunk. Writing new data into a zarr input changes
the state of exactly the chunks written. Rewriting a chunk with the same bytes changes its state
too, and recomputes the blocks that read it, with the same result.

An HDF5 dataset has no files of its own: its state is the whole file's, so any write to the file
counts as a change to every chunk.

Output files are described the same way (`file_states`): what a task wrote is the (size, mtime)
of each file it wrote, taken right after it wrote them, and a digest of each file's bytes
(`emflow.targets.atomic.DIGEST_PREFIX`) for `emflow verify`; `chunk_files` names the chunk files
of an output array that a box covers.
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

from emflow.targets.atomic import file_digest, written_digest

from .chunk_io import open_local_array, stored_units
from .output import opened_output_array
from .volumes import HDF5Volume, metadata_state, open_volume


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
    local = open_local_array(str(Path(path) / key))
    return _layout_of(local if local is not None else open_volume(path, key), path)


def _layout_of(volume, path: str) -> ChunkLayout:
    shape = tuple(volume.shape)
    if isinstance(volume, HDF5Volume):
        volume.close()
        units = None
    else:  # a zarr array or a LocalArray
        units = stored_units(volume)
    if units is None:  # HDF5, or not a folder of files (e.g. a zip store): the whole container is one unit
        return ChunkLayout(shape=shape, grid_shape=(), folder=None, key_of=None, file=Path(path))
    return ChunkLayout(shape=shape, grid_shape=units.unit_shape, folder=Path(units.folder), key_of=units.key_of)


def _file_state(path: str | Path) -> tuple[int, int] | None:
    try:
        status = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    return status.st_size, status.st_mtime_ns


def stored_chunks(path: str | Path, key: str) -> tuple[ChunkLayout, np.ndarray | None]:
    """The layout of dataset `key` in `path` and the grid positions (int64 (K, ndim), C order) of
    its stored chunks; None for a dataset that is not a folder of chunk files (HDF5).

    Uses the states `region_states` reads (one `stat` per chunk, once per process)."""
    layout, states = _dataset_states(str(path), key)
    return layout, None if layout.folder is None else np.argwhere(states[..., 0] >= 0)


def missing_chunks(path: str | Path, key: str) -> tuple[ChunkLayout, np.ndarray] | None:
    """Grid positions (int64 (K, ndim)) of the chunks of zarr dataset `key` in `path` that are not
    stored although they lie inside the written region (the bounding box of the stored chunks),
    with the dataset's layout; None for a dataset that is not a folder of chunk files (HDF5)."""
    layout, states = _dataset_states(str(path), key)
    if layout.folder is None:
        return None
    stored = states[..., 0] >= 0
    if not stored.any():
        return layout, np.zeros((0, stored.ndim), dtype=np.int64)
    present = np.argwhere(stored)
    inside = tuple(slice(low, high + 1) for low, high in zip(present.min(axis=0), present.max(axis=0)))
    holes = np.argwhere(~stored[inside]) + np.array([part.start for part in inside])
    return layout, holes.astype(np.int64)


def chunk_box(layout: ChunkLayout, position) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Begin and end (voxels) of the chunk at grid `position`, clipped to the array."""
    begin = tuple(int(index) * size for index, size in zip(position, layout.grid_shape))
    return begin, tuple(min(start + size, extent) for start, size, extent in zip(begin, layout.grid_shape, layout.shape))


def chunk_files(path: str | Path, key: str, boxes: np.ndarray) -> list[list[str]]:
    """For each box (int (number_of_boxes, 2, ndim) over the array's last ndim axes; leading axes,
    such as channels, are covered whole), the paths of the chunk files of array `key` in the zarr
    group `path` that it covers, in grid order."""
    layout = _output_layout(str(path), key, metadata_state(Path(path) / key / "zarr.json"))
    assert layout.folder is not None and layout.key_of is not None, f"{path}:{key} is not a folder of chunk files"
    boxes = np.asarray(boxes, dtype=np.int64)
    leading = len(layout.shape) - boxes.shape[-1]
    grid = np.asarray(layout.grid_shape[leading:], dtype=np.int64)
    first = boxes[:, 0] // grid
    stop = np.where(boxes[:, 1] > boxes[:, 0], (boxes[:, 1] - 1) // grid + 1, first)
    leading_ranges = [range(-(-extent // size)) for extent, size in zip(layout.shape[:leading], layout.grid_shape[:leading])]
    key_of, folder = layout.key_of, str(layout.folder)
    files = []
    for low, high in zip(first.tolist(), stop.tolist()):
        positions = itertools.product(*leading_ranges, *(range(begin, end) for begin, end in zip(low, high)))
        files.append([f"{folder}/{key_of(position)}" for position in positions])
    return files


def states_array(paths: list[str]) -> np.ndarray:
    """(size, mtime_ns) of each file, -1 for one that does not exist: int64 (len(paths), 2); one `stat` each."""
    sizes, times = [], []
    stat = os.stat
    for path in paths:
        try:
            status = stat(path)
        except (FileNotFoundError, NotADirectoryError):
            sizes.append(-1)
            times.append(-1)
        else:
            sizes.append(status.st_size)
            times.append(status.st_mtime_ns)
    return np.array([sizes, times], dtype=np.int64).T.reshape(-1, 2)


@functools.lru_cache(maxsize=64)
def _output_layout(path: str, key: str, state: tuple[int, int, int] | None) -> ChunkLayout:
    # Keyed by the state of the array's metadata file: an array created again (a new run's
    # prepare_output in the same process) may have another chunking. The array is opened through
    # the process's cache (`opened_output_array`), which the worker processes forked from the
    # building process keep: opening an array there took 1.5-2.5 ms (zarr's event loop, on
    # cores busy with blocks).
    return _layout_of(opened_output_array(path, key), path)


def file_state(path: str | Path, *, digest: bool = False, read_back: bool = False, like: str = "") -> list | None:
    """[size, mtime_ns, digest of the bytes ("" without `digest`)] of a file, or None if there is
    none. The digest (`emflow.targets.atomic.DIGEST_PREFIX`) is the one taken while this process
    wrote the file (`written_digest`) if the file is unchanged since (same inode, size and
    modification time), else, or with `read_back` (verification: what is on disk now), the file is
    read back and hashed, of the kind of the recorded digest `like` (`file_digest`)."""
    try:
        if not digest:
            status = os.stat(path)
            return [status.st_size, status.st_mtime_ns, ""]
        status = os.stat(path)
        remembered = None if read_back else written_digest(path, status)
        if remembered is not None:
            return [status.st_size, status.st_mtime_ns, remembered]
        with open(path, "rb") as handle:
            status = os.fstat(handle.fileno())
            return [status.st_size, status.st_mtime_ns, file_digest(handle, like)]
    except (FileNotFoundError, NotADirectoryError):
        return None


def file_states(paths, *, digest: bool = False) -> list[list | None]:
    """`file_state` of each path."""
    return [file_state(path, digest=digest) for path in paths]


def same_state(recorded: list | None, current: list | None) -> bool:
    """Whether a file is as it was recorded: both absent, or the same size and modification time."""
    if recorded is None or current is None:
        return recorded is current
    return recorded[0] == current[0] and recorded[1] == current[1]


def folder_states(folder: str | Path, root: str | Path, *, digest: bool = False) -> dict[str, list]:
    """`file_state` of every file under `folder`, keyed by its path relative to `root`; temporary
    files of writers (names starting with "." or ending in ".partial") are left out."""
    folder, root = Path(folder), Path(root)
    states = {}
    for directory, subfolders, names in os.walk(folder):
        subfolders[:] = sorted(name for name in subfolders if not name.startswith("."))
        for name in sorted(names):
            if name.startswith(".") or name.endswith(".partial"):
                continue
            path = Path(directory) / name
            state = file_state(path, digest=digest)
            if state is not None:
                states[str(path.relative_to(root))] = state
    return states
