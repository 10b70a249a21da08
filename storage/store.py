"""Named arrays of a run, wherever they live: the one API stages read and write through.

Kinds of named array:

- an *input* dataset, by its role ("raw", "boundaries", "mask", ...): read by box;
- a *volume*: an array of the output group chunked by blocks (`Volume`), written block by block,
  whole chunks at a time, read by box;
- a *table*: a whole array of the output group (graph edges, costs, node labels), written at once;
- a stage's *global bundle*: named .npy files in the work folder (`<work>/global/<stage>/`), read
  memory-mapped by block tasks, a slice at a time;
- a stage's *partials*: one file per block in the work folder (`<work>/blocks/<stage>/`).

Every write is atomic (zarr's local store renames each chunk into place; files are written under a
temporary name and renamed), so a reader never sees half a result.
"""

from __future__ import annotations

import functools
import os
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from emflow.blocking import Box
from emflow.errors import InputError
from emflow.inference import fixed_point
from emflow.targets import atomic_save_npy, atomic_save_npz
from emflow.targets.atomic import writing

from .chunk_io import LocalArray, read_selection, write_selection
from .inputs import InputDataset
from .layout import Layout
from .npz import read_npz
from .ome import level_path
from .output import (
    OWNER_ATTRIBUTE,
    create_block_image,
    create_output_group,
    global_array_document,
    opened_output_array,
    read_global_array,
    set_group_attributes,
    write_global_array,
)
from .volumes import opened_volume, read_region

if TYPE_CHECKING:
    import zarr


@dataclass(frozen=True)
class Volume:
    """An output array written block by block: level `level` of the OME-Zarr image (or label image,
    `label`) `image` of the output group, of `dtype`, with an optional leading channel axis of
    `channels`. `quantized`: uint8 holding values in [0, 1] times 255, read back as float32;
    `compressed`: zstd chunks (False for data compression barely shrinks, such as float network
    outputs). `attributes`: (name, JSON-able value) pairs written into the level-0 array's
    attributes (the `offsets` of affinity predictions)."""

    image: str
    dtype: str
    level: int = 0
    channels: int | None = None
    quantized: bool = False
    compressed: bool = True
    label: bool = False
    attributes: tuple[tuple[str, Any], ...] = ()

    @property
    def path(self) -> str:
        return f"{self.image}/{level_path(self.level)}"


def level_name(name: str, level: int) -> str:
    """The name of level `level` of the volume named `name` (level 0 is `name` itself)."""
    return name if level == 0 else f"{name}_s{level}"


def describe_box(box: Box) -> str:
    """A box as messages show it: "z 0:40, y 0:72, x 56:128"."""
    return ", ".join(f"{axis} {begin}:{end}" for axis, begin, end in zip("zyx", box.begin, box.end))


def describe_slicing(slicing: tuple[slice, ...]) -> str:
    """A selection of bounded slices (z, y, x last) as messages show a box: "z 0:40, y 0:72, x 56:128"."""
    axes = ("zyx" if len(slicing) <= 3 else "c" * (len(slicing) - 3) + "zyx")[-len(slicing) :]
    return ", ".join(f"{axis} {part.start}:{part.stop}" for axis, part in zip(axes, slicing))


class Store:
    """The named arrays of one run (see the module docstring)."""

    def __init__(self, layout: Layout, inputs: dict[str, InputDataset], volumes: dict[str, Volume]):
        self.layout = layout
        self.inputs = inputs
        self.volumes = volumes

    # --- volumes and inputs ---------------------------------------------------------------------

    def has(self, name: str) -> bool:
        return name in self.inputs or name in self.volumes

    def read(self, name: str, box: Box, *, channels: bool = True) -> np.ndarray:
        """Array `name` (an input role or a volume) inside `box`; a volume with channels keeps its
        channel axis first. A damaged input chunk raises DamagedDataError naming the dataset, the
        box and the chunk's file. The boundary map and affinities come back as float32 in [0, 1], checked."""
        if name in self.inputs:
            dataset = self.inputs[name]
            # Every channel of an input with a channel axis (affinities).
            selection = (slice(None),) * (len(dataset.shape) - len(box.begin)) + box.slicing
            with opened_volume(dataset.path, dataset.key) as volume:
                data = read_region(volume, selection, dataset.location)
            return _checked_values(data, box, dataset) if name in ("boundaries", "affinities") else data
        volume = self.volumes[name]
        selection = ((slice(None),) if volume.channels else ()) + box.slicing
        data = read_selection(self.output_array(name), selection)
        return data.astype(np.float32) / np.float32(255) if volume.quantized else data

    def write(self, name: str, box: Box, data: np.ndarray) -> None:
        """Write a block of volume `name` (whole chunks: `box` is a block's box); values of a
        quantized volume are given in [0, 1]."""
        volume = self.volumes[name]
        if volume.quantized:
            data = fixed_point(data, np.uint8)
        selection = ((slice(None),) if volume.channels else ()) + box.slicing
        # Every chunk is stored, even one that holds only the fill value: zarr's test for a chunk it
        # need not store took more than half of writing one (4.3 of 8.0 ms for a 64x128x128 uint64
        # label chunk, 14 of 34 ms for a 38 MB float chunk), and a stored chunk of zeros costs a
        # file of about a hundred bytes, compressed.
        with writing(f"{self.layout.output_path / volume.path} (box {describe_box(box)})"):
            write_selection(self.output_array(name), selection, data)

    @contextmanager
    def opened_input(self, name: str) -> Iterator[Any]:
        """Input `name` opened for lazy, region by region reads (e.g. a CNN's mirrored patches)."""
        dataset = self.inputs[name]
        with opened_volume(dataset.path, dataset.key) as volume:
            yield volume

    def output_array(self, name: str) -> zarr.Array | LocalArray:
        return opened_output_array(self.layout.output_path, self.volumes[name].path)

    def create_volumes(self, shape: tuple[int, ...], block_shape: tuple[int, ...], resolution, level_factors) -> None:
        """(Re)create every volume's OME-Zarr image in the output group, level 0 chunked by
        `block_shape` with the volume's `shape`; images with more levels get them, shapes from
        `level_factors` (`emflow.storage.ome.level_shapes`), and metadata describing all of them."""
        for volume in self.volumes.values():
            if volume.level:
                continue
            levels = max(other.level for other in self.volumes.values() if other.image == volume.image)
            prefix = (volume.channels,) if volume.channels else ()
            with writing(self.layout.output_path / volume.image):
                create_block_image(
                    self.layout.output_path,
                    volume.image,
                    prefix + tuple(shape),
                    prefix + tuple(block_shape),
                    volume.dtype,
                    resolution,
                    level_factors[:levels],
                    label=volume.label,
                    channel=bool(volume.channels),
                    compressed=volume.compressed,
                    attributes={key: _json_value(value) for key, value in volume.attributes},
                )

    # --- tables -------------------------------------------------------------------------------

    def write_table(self, path: str, data: np.ndarray, attributes: dict[str, Any] | None = None) -> None:
        """Write a whole array of the output group (`graph/edges`, ...)."""
        with writing(self.layout.output_path / path):
            write_global_array(self.layout.output_path, path, data, attributes)

    def read_table(self, path: str) -> np.ndarray:
        return read_global_array(self.layout.output_path, path)

    def table_attributes(self, path: str) -> dict[str, Any]:
        return global_array_document(self.layout.output_path, path)["attributes"]

    def mark_output(self, owner: Any) -> None:
        """Create the output group if there is none (refusing a path emflow did not create), and
        mark it as the output of the run `owner` describes."""
        with writing(self.layout.output_path):
            create_output_group(self.layout.output_path)
            set_group_attributes(self.layout.output_path, {OWNER_ATTRIBUTE: owner})

    # --- global bundles and partials ------------------------------------------------------------

    def save_global(self, stage: str, **fields: np.ndarray) -> None:
        for field, array in fields.items():
            atomic_save_npy(self.layout.global_field(stage, field), array)

    def load_global(self, stage: str, field: str, *, mmap: bool = False) -> np.ndarray:
        """One array of a global stage's bundle; memory-mapped with `mmap` (read a slice or the pages
        of some entries), read-only, and mapped once per process and file (`_mapped_npy`)."""
        path = self.layout.global_field(stage, field)
        if not mmap:
            return np.load(path)
        return _mapped_npy(str(path), *_file_identity(path))

    def save_partial(self, stage: str, block_id: int, **fields: np.ndarray) -> None:
        """A block's partial result: several arrays in one .npz file."""
        atomic_save_npz(self.layout.partial(stage, block_id, ".npz"), **fields)

    def load_partial(self, stage: str, block_id: int, *fields: str) -> tuple[np.ndarray, ...]:
        """Arrays of a block's partial result, from one read of its file."""
        partial = read_npz(self.layout.partial(stage, block_id, ".npz"))
        return tuple(partial[field] for field in fields)

    def load_partials(self, stage: str, number_of_blocks: int, fields: tuple[str, ...], cache: Path) -> list[tuple[np.ndarray, ...]]:
        """`load_partial(stage, block_id, *fields)` of blocks 0..number_of_blocks-1, through the
        .npz file `cache`: the arrays read last time, each block's concatenated along the first
        axis, with the identity (inode, size, modification time) of the file each block's came
        from. A partial is written atomically, as a new file, so only the blocks whose file has
        another identity are read again, and the cache is written anew when any was.

        For what is read at the end of every run that changed something: the run report's
        supervoxel sizes took 1.8 s at 20,480 blocks, one file each, after new data in one input
        chunk (benchmarks/noop_rerun.py's volume). Arrays of more than `MOST_CACHED_BYTES` in all
        are not cached (writing the cache holds them twice more, reading it once more): what a
        cache saves is the opening of many small files, not the reading of much data."""
        paths = self.layout.partial_paths(stage, number_of_blocks, ".npz")
        identities = np.array([_file_identity(path) for path in paths], dtype=np.int64).reshape(-1, 3)
        cached_identities, cached = _read_partials_cache(cache, fields, number_of_blocks)
        same = (identities == cached_identities).all(axis=1) if cached else np.zeros(number_of_blocks, dtype=bool)
        blocks = [
            cached[block_id] if same[block_id] else self.load_partial(stage, block_id, *fields) for block_id in range(number_of_blocks)
        ]
        if same.all():
            return blocks
        if sum(array.nbytes for block in blocks for array in block) > MOST_CACHED_BYTES:
            cache.unlink(missing_ok=True)
            return blocks
        arrays = {"identities": identities}
        for index, field in enumerate(fields):
            arrays[field] = np.concatenate([block[index] for block in blocks]) if blocks else np.zeros(0)
            arrays[f"{field}_counts"] = np.array([len(block[index]) for block in blocks], dtype=np.int64)
        atomic_save_npz(cache, digest=False, **arrays)  # no record names a cache: its digest would go unread
        return blocks

    def load_partial_bundle(self, stage: str, block_id: int) -> dict[str, np.ndarray]:
        """Every array of a block's partial result, by name."""
        return read_npz(self.layout.partial(stage, block_id, ".npz"))

    def save_partial_array(self, stage: str, block_id: int, array: np.ndarray | None) -> None:
        """A block's partial result as one .npy file (other blocks read it memory-mapped); None: the
        block has none (an earlier attempt's file goes)."""
        path = self.layout.partial(stage, block_id, ".npy")
        if array is None:
            path.unlink(missing_ok=True)
        else:
            atomic_save_npy(path, array)

    def load_partial_array(self, stage: str, block_id: int) -> np.ndarray:
        """A block's partial result, memory-mapped copy-on-write: writable in memory, so that torch
        takes it (`emflow.inference.decode_sums`), while the file stays as it is."""
        return np.load(self.layout.partial(stage, block_id, ".npy"), mmap_mode="c")


# The most bytes of arrays `Store.load_partials` keeps in a cache. The graph merge's block graphs
# at 20,480 blocks of 8x8x8 voxels: 7 MB; at 1 GVox in 1,024 blocks of 64x128x128, 64 bytes for
# each of ~1.5 M edges (93,000 edges took 6 MB), 100 MB, in only twice as many files as the 512
# that took 0.04-0.11 s to read (a cache of them 0.015 s).
MOST_CACHED_BYTES = 64 << 20


def _file_identity(path: str | Path) -> tuple[int, int, int]:
    """A file's inode, size and modification time: a file written atomically is a new inode."""
    status = os.stat(path)
    return status.st_ino, status.st_size, status.st_mtime_ns


def _read_partials_cache(cache: Path, fields: tuple[str, ...], number_of_blocks: int) -> tuple[np.ndarray, list[tuple[np.ndarray, ...]]]:
    """The file identities and each block's arrays that `Store.load_partials` kept in `cache`;
    none where it holds nothing usable (absent, unreadable, another blocking or other fields)."""
    nothing = np.zeros((0, 3), dtype=np.int64), []
    try:
        kept = read_npz(cache)
        identities = kept["identities"]
        starts = {field: np.concatenate([[0], np.cumsum(kept[f"{field}_counts"])]) for field in fields}
    except (OSError, ValueError, KeyError, zipfile.BadZipFile):
        return nothing
    if identities.shape != (number_of_blocks, 3) or any(
        len(starts[field]) != number_of_blocks + 1 or starts[field][-1] != len(kept[field]) for field in fields
    ):
        return nothing
    blocks = [
        tuple(kept[field][starts[field][block_id] : starts[field][block_id + 1]] for field in fields)
        for block_id in range(number_of_blocks)
    ]
    return identities, blocks


@functools.lru_cache(maxsize=32)
def _mapped_npy(path: str, *identity: int) -> np.ndarray:
    """A .npy file memory-mapped read-only, kept per process: `identity` (inode, size, modification
    time) names one content, since bundles are written atomically (a new file each time). Each
    block of write_segmentation maps two bundle arrays, for its content key and its labels: opening
    and mapping a .npy costs 0.2 ms, a `stat` 4 µs (1,430 mappings, 0.27 s, of an incremental
    run in benchmarks/reprocessing.py)."""
    return np.load(path, mmap_mode="r")


def _json_value(value: Any) -> Any:
    return [_json_value(item) for item in value] if isinstance(value, tuple) else value


def _checked_values(values: np.ndarray, box: Box, dataset: InputDataset) -> np.ndarray:
    """An input boundary map's (or affinities') values as float32 in [0, 1]: unsigned integers
    divided by their dtype's maximum (uint8 affinities, as emflow's predictions and the lsd / volara
    pipelines store them: / 255), floats refused (InputError) if not finite or outside [0, 1]."""
    if np.issubdtype(values.dtype, np.unsignedinteger):
        return values.astype(np.float32) / np.float32(np.iinfo(values.dtype).max)
    values = values.astype(np.float32, copy=False)
    what = f"{dataset.description} {dataset.location}"
    for name, bad in (("NaN", np.isnan), ("infinite", np.isinf)):
        where = np.flatnonzero(bad(values))
        if where.size:
            # The voxel (z, y, x) of the first one; a channel axis of affinities goes first.
            position = np.unravel_index(where[0], values.shape)[values.ndim - len(box.begin) :]
            first = tuple(int(start + index) for start, index in zip(box.begin, position))
            raise InputError(
                f"{what} holds {where.size} {name} value{'s' if where.size > 1 else ''} in box {describe_box(box)} "
                f"(the first at voxel (z, y, x) = {first}); {dataset.description} values must lie in [0, 1]: "
                f"fix the {dataset.description} and run again"
            )
    if values.size and (values.min() < 0 or values.max() > 1):
        raise InputError(f"{what} has values outside [0, 1] in box {describe_box(box)} (min {values.min()}, max {values.max()})")
    return values
