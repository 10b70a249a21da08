"""The output zarr group: creating its arrays and reading and writing whole (global) arrays.

Block-wise arrays are chunked with the block shape, so that each block writes whole chunks and no
two blocks ever write the same chunk file. zarr's local store writes each chunk to a temporary
name and renames it, so a killed writer never leaves a torn chunk.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from emflow.errors import OutputError
from emflow.targets.atomic import atomic_write_text

from .chunk_io import (
    DirectLayout,
    LocalArray,
    bytes_layout,
    local_array,
    metadata_document,
    open_local_array,
    read_chunks,
    read_selection,
    write_chunks,
)
from .ome import axis_names, level_path, level_shapes, multiscale_attributes, ome_multiscales
from .volumes import metadata_state

if TYPE_CHECKING:
    import zarr

# Marks a zarr group as created by emflow, so that emflow never writes into anyone else's data.
OWNER_ATTRIBUTE = "emflow"


class ForeignOutputError(OutputError, FileExistsError):
    """The output path holds data that emflow did not create."""


def open_output_group(path: str | Path) -> zarr.Group:
    """Open emflow's output group through zarr. Refuses (ForeignOutputError) a path that exists but
    is not a group emflow created."""
    path = Path(path)
    state = metadata_state(path / "zarr.json")
    if state is not None:
        return _opened_output_group(str(path), state)
    if path.exists():
        return _open_existing_group(path)
    raise FileNotFoundError(f"output group {path} does not exist (the workflow has not run yet)")


def create_output_group(path: str | Path) -> None:
    """Make emflow's output group (zarr v3) where nothing is yet; refuse (ForeignOutputError) a
    path that holds something emflow did not create."""
    path = Path(path)
    if path.exists():
        output_group_attributes(path)
        return
    # Made under a temporary name and renamed: a run killed in between must not leave a group
    # without emflow's mark, which every later run would refuse as someone else's data.
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial"))
    try:
        atomic_write_text(temporary / "zarr.json", _document(group_metadata({OWNER_ATTRIBUTE: {"created": True}})))
        os.rename(temporary, path)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise


def set_group_attributes(path: str | Path, attributes: dict[str, Any]) -> None:
    """Set `attributes` of the zarr v3 group at `path` (its other attributes stay), rewriting its
    metadata document as zarr does."""
    folder = Path(path)
    metadata = metadata_document(folder)
    metadata["attributes"] = {**metadata.get("attributes", {}), **attributes}
    atomic_write_text(folder / "zarr.json", _document(metadata))


@functools.lru_cache(maxsize=16)
def _opened_output_group(path: str, state: tuple[int, int, int]) -> zarr.Group:
    # Opened once per process and state of the group's metadata, and kept by the worker processes
    # forked from the building process: the stages of the reprocessing benchmark's one-chunk run
    # opened the group 26 times in their workers, 1.0-1.5 ms each (zarr's event loop, on cores
    # busy with blocks).
    return _open_existing_group(Path(path))


def _open_existing_group(path: Path) -> zarr.Group:
    import zarr

    try:
        group = zarr.open_group(str(path), mode="r+")
    except Exception as error:  # zarr raises several types for "not a group here"
        raise _not_a_group(path) from error
    _check_owner(path, group.attrs)
    return group


def _not_a_group(path: Path) -> ForeignOutputError:
    return ForeignOutputError(f"output path {path} exists and is not a zarr group; choose another output path")


def _check_owner(path: Path, attributes) -> None:
    if OWNER_ATTRIBUTE not in attributes:
        raise ForeignOutputError(f"output path {path} holds a zarr group that emflow did not create; refusing to write into it")


def output_group_attributes(path: str | Path) -> dict[str, Any]:
    """The attributes of emflow's output group at `path`, read from its metadata document (what
    `open_output_group` opens through zarr, which a run's checks need not import). Refuses
    (ForeignOutputError) a path that is not a group emflow created; FileNotFoundError where there
    is nothing."""
    path = Path(path)
    try:
        metadata = metadata_document(path)
    except FileNotFoundError:
        if path.exists():
            return dict(_open_existing_group(path).attrs)  # zarr v2, or not a group: zarr says which
        raise FileNotFoundError(f"output group {path} does not exist (the workflow has not run yet)") from None
    except (OSError, ValueError) as error:
        raise _not_a_group(path) from error
    attributes = metadata.get("attributes", {}) if metadata.get("node_type") == "group" else None
    if not isinstance(attributes, dict):
        raise _not_a_group(path)
    _check_owner(path, attributes)
    return attributes


def create_block_image(
    folder: str | Path,
    name: str,
    shape,
    block_shape,
    dtype,
    resolution,
    level_factors=(),
    *,
    label: bool = False,
    channel: bool = False,
    compressed: bool = True,
    attributes: dict[str, Any] | None = None,
) -> LocalArray:
    """(Re)create the OME-Zarr image (or label image) `name` of the zarr group in `folder`: levels
    `s0..sN`, N = len(`level_factors`) (shapes from them, `emflow.storage.ome.level_shapes`), each
    chunked by `block_shape` and filled with zeros (no chunk stored), and the metadata describing
    them all (`multiscale_attributes`). Returns `s0`, whose attributes are `attributes`.

    `shape` and `block_shape` include the channel axis first when `channel` (predictions);
    `resolution` is the voxel size in nm (z, y, x). `compressed=False` stores chunks as raw
    bytes, for data compression barely shrinks (float network outputs) while costing as much time
    as computing them. The metadata documents are written here, as zarr's `create_group` and
    `create_array` write them, without importing zarr (`emflow.storage.chunk_io.LocalArray`);
    `output_array(path, name)` opens `s0`.
    """
    image = Path(folder) / name
    shutil.rmtree(image, ignore_errors=True)  # the node it replaces, with its chunks, as zarr's overwrite
    shape, block_shape = tuple(int(size) for size in shape), tuple(int(size) for size in block_shape)
    ome = multiscale_attributes(
        resolution, level_factors, channel=channel, name=name, label=label, downsampling="mode" if label else "mean"
    )
    names = axis_names(len(tuple(resolution)), channel=channel)
    channels = shape[:1] if channel else ()
    documents = [
        array_metadata(
            channels + level_shape, block_shape, dtype, attributes if level == 0 else None, compressed=compressed, dimension_names=names
        )
        for level, level_shape in enumerate(level_shapes(shape[int(channel) :], level_factors))
    ]
    for level, metadata in enumerate(documents):
        (image / level_path(level)).mkdir(parents=True)
        atomic_write_text(image / level_path(level) / "zarr.json", _document(metadata))
    atomic_write_text(image / "zarr.json", _document(group_metadata({"ome": ome})))
    first = local_array(str(image / level_path(0)), documents[0])
    assert first is not None, "the metadata written above is of a LocalArray"
    return first


def write_global_array(path: str | Path, name: str, data: np.ndarray, attributes: dict[str, Any] | None = None) -> None:
    """Write a whole array (graph, features, costs, node labels) as `name` in the output group.

    Floating-point arrays are stored without compression: the edge features of the reprocessing
    benchmark's graph (92,966 x 6 float64, 4.5 MB) compress to 55 %, their edge costs to 95 %, and
    zstd took 22 of the 30 ms writing the features and 7 of the 10 ms reading them, in the serial
    global stages of every run. Integer arrays (edges, node labels) shrink to a seventh and keep it.

    The array (zarr v3: its `zarr.json`, `global_array_metadata`, as zarr writes it, and its chunk
    files) replaces any node of that name, written here rather than by zarr's `create_array`, whose
    event loop took 5-8 ms of each table's 7-13 ms: 31 ms of the serial global stages of
    benchmarks/reprocessing.py's cron run, which writes four tables one after the other.
    """
    # Canonical dtype: C extensions may hand back uint64 as 'Q' (unsigned long long), which zarr
    # does not recognise although it is the same type as numpy's 'L' on 64-bit Linux.
    data = np.ascontiguousarray(data, dtype=np.dtype(data.dtype.str))
    # One chunk of up to ~64 MiB along the first axis keeps graph-sized arrays in few files.
    rows = max(1, min(max(data.shape[0], 1), (64 << 20) // max(1, data.itemsize * int(np.prod(data.shape[1:])))))
    chunks = (rows, *data.shape[1:])
    metadata = global_array_metadata(data.shape, chunks, data.dtype, attributes)
    output_group_attributes(path)  # refuses a path emflow did not create
    _create_parent_groups(Path(path), name)
    folder = Path(path) / name
    shutil.rmtree(folder, ignore_errors=True)  # the node it replaces, with chunks of another grid
    folder.mkdir(parents=True)
    if data.size:
        write_chunks(table_layout(str(folder), metadata), tuple(slice(0, extent) for extent in data.shape), data)  # type: ignore[arg-type]
    atomic_write_text(folder / "zarr.json", _document(metadata))


def global_array_metadata(shape: tuple[int, ...], chunks: tuple[int, ...], dtype: np.dtype, attributes: dict[str, Any] | None) -> dict:
    """The zarr v3 metadata (`zarr.json`) of a `write_global_array` array: `array_metadata`
    compressed for all but floating-point data."""
    return array_metadata(shape, chunks, dtype, attributes, compressed=np.dtype(dtype).kind != "f")


def array_metadata(
    shape: tuple[int, ...],
    chunks: tuple[int, ...],
    dtype: Any,
    attributes: dict[str, Any] | None,
    *,
    compressed: bool,
    dimension_names: tuple[str, ...] | None = None,
) -> dict:
    """The zarr v3 metadata document (`zarr.json`) zarr's `create_array` writes for an array of
    `shape`, `chunks` and `dtype` filled with 0: regular chunks, default "c/" keys, the bytes codec
    (little-endian) and, where `compressed`, zstd (level 0, zarr's default)."""
    dtype = np.dtype(dtype)
    codecs: list[dict[str, Any]] = [{"name": "bytes", **({"configuration": {"endian": "little"}} if dtype.itemsize > 1 else {})}]
    if compressed:
        codecs.append({"name": "zstd", "configuration": {"level": 0, "checksum": False}})
    return {
        "shape": list(shape),
        "data_type": dtype.name,
        "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": list(chunks)}},
        "chunk_key_encoding": {"name": "default", "configuration": {"separator": "/"}},
        "fill_value": dtype.type(0).item(),
        "codecs": codecs,
        "attributes": attributes or {},
        **({"dimension_names": list(dimension_names)} if dimension_names is not None else {}),
        "zarr_format": 3,
        "node_type": "array",
        "storage_transformers": [],
    }


def group_metadata(attributes: dict[str, Any]) -> dict:
    """The zarr v3 metadata document (`zarr.json`) of a group with `attributes`."""
    return {"attributes": attributes, "zarr_format": 3, "node_type": "group"}


def _document(metadata: dict) -> str:
    """A metadata document's text, as zarr writes it."""
    return json.dumps(metadata, indent=2, default=_json_scalar)


def table_layout(folder: str, metadata: dict) -> DirectLayout | None:
    """Where and how the chunk files of an array with `global_array_metadata` are read and
    written (`read_chunks`, `write_chunks`); None for an array with other metadata."""
    try:
        shape, chunks = tuple(metadata["shape"]), tuple(metadata["chunk_grid"]["configuration"]["chunk_shape"])
        dtype = np.dtype(metadata["data_type"])
        if metadata != global_array_metadata(shape, chunks, dtype, metadata["attributes"]):
            return None
    except (KeyError, TypeError, ValueError):
        return None
    zstd = metadata["codecs"][1]["configuration"] if len(metadata["codecs"]) > 1 else None
    return bytes_layout(folder, shape, chunks, dtype, metadata["fill_value"], lambda position: "c/" + "/".join(map(str, position)), zstd)


def read_global_array(path: str | Path, name: str) -> np.ndarray:
    """A whole array of the output group, as `write_global_array` wrote it: from its metadata
    document and chunk files (`table_layout`), or through zarr where it has other metadata."""
    folder = Path(path) / name
    layout = table_layout(str(folder), global_array_document(path, name))
    if layout is None:
        array = output_array(path, name)
        return read_selection(array, (slice(None),) * array.ndim)
    return read_chunks(layout, tuple(slice(0, extent) for extent in layout.shape))


def global_array_document(path: str | Path, name: str) -> dict:
    """The zarr v3 metadata document (`zarr.json`) of array `name` of the output group; its
    "attributes" are the array's attributes."""
    return metadata_document(Path(path) / name)


def _create_parent_groups(root: Path, name: str) -> None:
    """The groups above node `name` of the group at `root` (zarr v3: a folder with a `zarr.json`)."""
    for depth in range(1, len(Path(name).parts)):
        metadata = root.joinpath(*Path(name).parts[:depth]) / "zarr.json"
        if not metadata.exists():
            metadata.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(metadata, _document(group_metadata({})))


def _json_scalar(value: Any) -> Any:
    """JSON for numpy scalars and arrays in attributes, as zarr's encoder gives it."""
    if isinstance(value, (np.generic, np.ndarray)):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def opened_output_array(path: str | Path, name: str) -> zarr.Array | LocalArray:
    """`output_array`, opened once per process while its node's metadata is unchanged
    (`metadata_state`: an array created again, by this process or another, may have another
    chunking). Every block task of a stage writes the same arrays, and the worker processes keep
    those the building process opened before it forked them."""
    return _opened_output_array(str(path), name, metadata_state(Path(path) / name / "zarr.json"))


@functools.lru_cache(maxsize=64)
def _opened_output_array(path: str, name: str, state: tuple[int, int, int] | None) -> zarr.Array | LocalArray:
    return output_array(path, name)


def output_array(path: str | Path, name: str) -> zarr.Array | LocalArray:
    """An array of the output group, open for block reads and writes and for its attributes; for an
    OME-Zarr image `name` (see `create_block_image`), its full-resolution level. A `LocalArray`
    (its attributes read only) where the array is of that kind, as emflow's own arrays are; zarr's
    otherwise."""
    output_group_attributes(path)  # refuses a path emflow did not create
    local = open_local_array(str(Path(path) / name))
    if local is not None:
        return local
    import zarr

    node = open_output_group(path)[name]
    multiscales = ome_multiscales(node.attrs) if isinstance(node, zarr.Group) else None
    return node[multiscales[0]["datasets"][0]["path"]] if multiscales else node
