"""Opening, importing and annotating the volumes emflow reads and writes (I/O only, no algorithms).

Locations are written ``path:key``: a zarr store (v2 or v3) or an HDF5 file, and the path of an
array inside it. Axes are z, y, x; resolutions are nanometres per voxel in that order.
"""

from __future__ import annotations

import itertools
import math
import os
import re
from contextlib import ExitStack, aclosing, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from emflow.blocking import Blocking
from emflow.errors import InputError, OutputError
from emflow.pyramid import downsample_image, pyramid_factors, source_box

from .chunk_io import LocalArray, is_zarr_array, metadata_document, open_local_array, read_chunks, read_selection
from .ome import (
    create_level,
    create_levels,
    level_path,
    nanometers_per,
    ome_multiscales,
    write_multiscale_metadata,
)

if TYPE_CHECKING:
    import h5py
    import tifffile
    import zarr

ZARR_SUFFIXES = (".zarr",)
HDF5_SUFFIXES = (".h5", ".hdf5", ".hdf")
TIFF_SUFFIXES = (".tif", ".tiff")

# Set on an imported array after its last block is written; an array without it is the leftover
# of an interrupted import.
IMPORT_COMPLETE_ATTRIBUTE = "emflow_import_complete"
RESOLUTION_ATTRIBUTE = "resolution_nm_zyx"

# 64**3 voxels per default chunk, spread evenly over the axes (64^3 in 3D, 512^2 in 2D).
_DEFAULT_CHUNK_VOXELS = 64**3
# Largest block copied at once by import_volume.
_COPY_BLOCK_BYTES = 256 * 2**20


class VolumeNotFoundError(InputError, FileNotFoundError):
    """No volume file or folder at the given path."""


class DatasetNotFoundError(InputError, KeyError):
    """No dataset at the given key of a volume; the message lists what exists there."""

    def __str__(self) -> str:  # KeyError's own quotes the message
        return str(self.args[0])


class UnusableVolumeError(InputError, ValueError):
    """A path or key that names something emflow cannot read as a volume (format, group, location)."""


class ExistingArrayError(OutputError, FileExistsError):
    """An array emflow would write exists already; it is never overwritten."""


_LOCATION_PATTERN = re.compile(
    r"^(?P<path>.+?(?:" + "|".join(re.escape(s) for s in ZARR_SUFFIXES + HDF5_SUFFIXES) + r"))"
    r"(?::(?P<key>.*))?$",
    re.IGNORECASE,
)


def parse_location(text: str) -> tuple[str, str]:
    """Split ``"path:key"`` into ``(path, key)``.

    The split happens after the first ``.zarr``/``.h5``/``.hdf5``/``.hdf`` path component that is
    followed by ``:``, so keys may contain ``:`` and ``/``; other paths split at their last ``:``.
    The key is returned as written (``"/abs/f.hdf5:/group/ds"`` -> ``("/abs/f.hdf5", "/group/ds")``).

    Raises:
        ValueError: if there is no key (or only slashes) after the path.
    """
    match = _LOCATION_PATTERN.match(text)
    if match is not None:
        path, key = match.group("path"), match.group("key")
    else:
        path, separator, key = text.rpartition(":")
        if not separator:
            path, key = text, None
    if not key or not key.strip("/"):
        if Path(path).suffix.lower() in TIFF_SUFFIXES:
            raise UnusableVolumeError(_tiff_message(Path(path)))
        raise UnusableVolumeError(f"location {text!r} names no dataset: write it as 'volume.zarr:key' or 'volume.h5:group/dataset'")
    return path, key


class HDF5Volume:
    """An HDF5 dataset that keeps its file open until ``close()`` (or the end of a ``with``).

    Supports ``shape``, ``dtype``, ``ndim``, ``chunks``, ``attrs`` and numpy-style slicing for
    reading and, if opened with mode ``"r+"``, writing.
    """

    def __init__(self, file: h5py.File, dataset: h5py.Dataset):
        self.file = file
        self.dataset = dataset

    @property
    def shape(self) -> tuple[int, ...]:
        return self.dataset.shape

    @property
    def dtype(self) -> np.dtype:
        return self.dataset.dtype

    @property
    def ndim(self) -> int:
        return self.dataset.ndim

    @property
    def chunks(self) -> tuple[int, ...] | None:
        return self.dataset.chunks

    @property
    def attrs(self) -> h5py.AttributeManager:
        return self.dataset.attrs

    def __getitem__(self, selection):
        return self.dataset[selection]

    def __setitem__(self, selection, values):
        self.dataset[selection] = values

    def close(self) -> None:
        self.file.close()

    def __enter__(self) -> HDF5Volume:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def __repr__(self) -> str:
        if not self.file.id.valid:
            return "<HDF5Volume (closed)>"
        return f"<HDF5Volume {self.file.filename}:{self.dataset.name} shape={self.shape} dtype={self.dtype}>"


def _is_zarr_path(path: Path) -> bool:
    if path.suffix.lower() in ZARR_SUFFIXES:
        return True
    # Stores without the .zarr suffix are recognised by their root metadata file.
    return any((path / name).is_file() for name in ("zarr.json", ".zgroup", ".zarray"))


def _check_volume_path(path: Path) -> str:
    """The container format of ``path`` ("zarr" or "hdf5"); raises if unsupported or missing."""
    if path.suffix.lower() in TIFF_SUFFIXES:
        raise UnusableVolumeError(_tiff_message(path))
    if not path.exists():
        raise VolumeNotFoundError(f"volume file not found: {path}")
    if path.suffix.lower() in HDF5_SUFFIXES:
        return "hdf5"
    if _is_zarr_path(path):
        return "zarr"
    raise UnusableVolumeError(
        f"{path}: unsupported volume format; expected a zarr store "
        f"({', '.join(ZARR_SUFFIXES)}) or an HDF5 file ({', '.join(HDF5_SUFFIXES)})"
    )


def _tiff_message(path: Path) -> str:
    """Why a TIFF is refused where a volume is read, and the command that converts it."""
    key = re.sub(r"[^A-Za-z0-9_.-]+", "_", path.stem) or "raw"
    return (
        f"{path} is a TIFF file; emflow reads zarr and HDF5 volumes. Convert it once with "
        f"`emflow import {path} data.zarr --key {key} --resolution Z Y X` (the voxel size in nm; leave it out where the "
        f'file records it), then use data.zarr:{key} (in a run config: path = "data.zarr" with key {key})'
    )


def _walk_to(root, key: str, path: Path, is_group):
    """The node at ``key`` below ``root``, one component at a time for a precise KeyError."""
    node = root
    walked = []
    for part in [p for p in key.split("/") if p]:
        level = "/".join(walked) or "/"
        if not is_group(node):
            raise DatasetNotFoundError(f"key {key!r} not found in {path}: {level!r} is an array, not a group")
        if part not in node:
            available = ", ".join(sorted(node.keys())) or "nothing"
            raise DatasetNotFoundError(f"key {key!r} not found in {path}: no {part!r} under {level!r}, which contains: {available}")
        node = node[part]
        walked.append(part)
    return node


def _open_zarr(path: Path, key: str, mode: str):
    import zarr

    parts = [part for part in key.split("/") if part]
    if parts:
        # An array at `key` opened at once reads its metadata alone: 0.5 ms, against 2.4 ms for
        # the walk from the root below (each step a probe and a read through zarr's event loop),
        # paid for each array by each task process. A group (an OME-Zarr image), nothing there or
        # damage is left to the walk, which names what it found.
        try:
            return zarr.open_array(store=str(path), path="/".join(parts), mode=mode)
        except (zarr.errors.BaseZarrError, ValueError, OSError):
            pass
    try:
        root = zarr.open(store=str(path), mode=mode)
    except (zarr.errors.BaseZarrError, ValueError) as error:  # no metadata, or metadata that is not JSON
        raise UnusableVolumeError(
            f"{path} cannot be opened as a zarr store ({type(error).__name__}: {error}); is it a zarr group or array?"
        ) from error
    node = _walk_to(root, key, path, lambda n: isinstance(n, zarr.Group))
    if isinstance(node, zarr.Group):
        multiscales = ome_multiscales(node.attrs)
        if not multiscales:
            members = ", ".join(sorted(node.keys())) or "nothing"
            raise UnusableVolumeError(
                f"{path}:{key} is a zarr group without OME-Zarr multiscales metadata, not an array; it contains: {members}"
            )
        # The first dataset of the first multiscale is the full-resolution level.
        node = node[multiscales[0]["datasets"][0]["path"]]
    return node


def _open_hdf5(path: Path, key: str, mode: str) -> HDF5Volume:
    # Imported here, not at the top: a run on zarr volumes never needs h5py or tifffile, and importing
    # both took 0.04 s (median of 11, after numpy and zarr), paid by every command.
    import h5py

    try:
        file = h5py.File(path, mode)
    except OSError as error:  # h5py's error for "not an HDF5 file" and for a damaged superblock
        raise UnusableVolumeError(f"{path} cannot be opened as an HDF5 file ({error}); is it damaged or of another format?") from error
    try:
        node = _walk_to(file, key, path, lambda n: isinstance(n, h5py.Group))
        if not isinstance(node, h5py.Dataset):
            members = ", ".join(sorted(node.keys())) or "nothing"
            raise UnusableVolumeError(f"{path}:{key} is an HDF5 group, not a dataset; it contains: {members}")
    except BaseException:
        file.close()
        raise
    return HDF5Volume(file, node)


def open_volume(path, key: str, mode: str = "r"):
    """Open the array at ``path:key`` for numpy-style slicing.

    Args:
        path: zarr store (v2 or v3; ``.zarr`` or any folder with zarr metadata) or HDF5 file
            (``.h5``, ``.hdf5``, ``.hdf``).
        key: path of the array inside; ``""`` opens a zarr store that is itself an array. A zarr
            group with OME-Zarr multiscales metadata (0.5 ``ome.multiscales`` or 0.4
            ``multiscales``) opens its first (full-resolution) dataset.
        mode: ``"r"`` (read only) or ``"r+"`` (read and write existing data).

    Returns:
        ``zarr.Array`` for zarr (nothing to close), ``HDF5Volume`` for HDF5 (close it, or use it as
        a context manager). Both have ``shape``, ``dtype``, ``ndim``, ``attrs`` and slicing.

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        KeyError: if ``key`` does not exist (the message lists what exists at the level where the
            lookup failed).
        ValueError: for an unsupported format (TIFF included: import it first), an unsupported
            mode, or a key that names a group rather than an array.
    """
    if mode not in ("r", "r+"):
        raise ValueError(f"mode must be 'r' or 'r+', got {mode!r}")
    path = Path(path)
    if _check_volume_path(path) == "zarr":
        return _open_zarr(path, key, mode)
    return _open_hdf5(path, key, mode)


@contextmanager
def opened_volume(path, key: str, mode: str = "r"):
    """``open_volume`` as a context manager: HDF5 files are closed on exit (zarr needs nothing).

    A zarr array opened for reading is kept for the next call while its metadata file stays as it
    was (one ``stat``): opening walks the group's metadata, about 4 ms, and `block_graph` reads
    its block's four slabs of the boundary map one call each (13 of its 90 ms a 64x128x128 block).
    Chunks are read afresh by every call; an array written anew has new metadata and is opened again.
    """
    if mode == "r" and _check_volume_path(Path(path)) == "zarr":
        yield _read_only_zarr(Path(path), key)
        return
    volume = open_volume(path, key, mode)
    try:
        yield volume
    finally:
        if isinstance(volume, HDF5Volume):
            volume.close()


# (path, key) -> (array, its metadata file, that file's state) of `_read_only_zarr`; a handful of
# inputs per run, so no bound.
_READ_ONLY_ZARR: dict[tuple[Path, str], tuple[zarr.Array | LocalArray, Path, tuple[int, int, int] | None]] = {}


def metadata_state(path: str | Path) -> tuple[int, int, int] | None:
    """The identity of a zarr metadata file (`zarr.json`, `.zarray`): inode, size and modification
    time; None if there is none. zarr writes the file anew (another inode) whenever its node is
    changed or created again, so an object opened from it is current while this is unchanged."""
    try:
        status = os.stat(path)
    except OSError:
        return None
    return status.st_ino, status.st_size, status.st_mtime_ns


def _read_only_zarr(path: Path, key: str) -> zarr.Array | LocalArray:
    kept = _READ_ONLY_ZARR.get((path, key))
    if kept is not None and kept[2] is not None and metadata_state(kept[1]) == kept[2]:
        return kept[0]
    # A LocalArray where the array is of that kind (zarr v3, plain or zstd chunks): opening it
    # reads one small file, and neither imports zarr nor starts its event loop.
    array = open_local_array(str(path / key))
    if array is not None:
        metadata = Path(array.path) / "zarr.json"
    else:
        array = _open_zarr(path, key, "r")
        metadata = path / array.path / ("zarr.json" if array.metadata.zarr_format == 3 else ".zarray")
    _READ_ONLY_ZARR[(path, key)] = (array, metadata, metadata_state(metadata))
    return array


class DamagedDataError(InputError, ValueError):
    """Stored data of a volume cannot be read or decoded: a truncated, overwritten or missing-codec chunk."""


def read_region(volume, selection: tuple[slice, ...], location: str) -> np.ndarray:
    """``volume[selection]`` (a tuple of bounded slices) as a numpy array; a damaged chunk is named.

    A damaged chunk otherwise surfaces as a codec's bare message ("Zstd decompression error"),
    naming neither the dataset nor the chunk. On such a failure each chunk of a zarr array
    overlapping ``selection`` is read alone (only then: a region spans a few chunks), and
    DamagedDataError names ``location`` (``path:key``), the region and every chunk that fails,
    with its file. An HDF5 read error names ``location`` and the region. Any other failure (no
    chunk fails alone) is raised as it was.
    """
    region = f"{location}[{', '.join(f'{part.start}:{part.stop}' for part in selection)}]"
    try:
        return read_selection(volume, selection)
    except Exception as error:
        if isinstance(volume, HDF5Volume) and isinstance(error, OSError):
            raise DamagedDataError(f"cannot read {region}: {error}; the file may be damaged") from error
        if not (isinstance(volume, LocalArray) or is_zarr_array(volume)):
            raise
        damaged = _damaged_chunks(volume, selection)
        if not damaged:
            raise
        listing = "; ".join(f"chunk {coords} ({stored}): {problem}" for coords, stored, problem in damaged)
        raise DamagedDataError(
            f"cannot decode {region}: damaged {listing}. Restore the chunk from a copy (or write the dataset again) and run again"
        ) from error


def _damaged_chunks(array: zarr.Array | LocalArray, selection: tuple[slice, ...]) -> list[tuple[tuple[int, ...], str, str]]:
    """(grid position, stored file or key, error) of each chunk overlapping ``selection`` that fails to read alone.

    Positions and files are those of the stored unit: the shard for a sharded array.
    """
    if isinstance(array, LocalArray):
        unit = array.chunks
        layout = array.layout

        def read(box: tuple[slice, ...]) -> None:
            read_chunks(layout, box)

        def stored(coords: tuple[int, ...]) -> str:
            return f"{layout.folder}/{layout.key_of(coords)}"
    else:
        unit = array.shards or array.chunks
        root = getattr(array.store, "root", None)

        def read(box: tuple[slice, ...]) -> None:
            array[box]

        def stored(coords: tuple[int, ...]) -> str:
            key = "/".join(part for part in (array.path, array.metadata.encode_chunk_key(coords)) if part)
            return str(Path(root) / key) if root is not None else f"key {key}"

    ranges = [range(part.start // step, -(-part.stop // step)) for part, step in zip(selection, unit)]
    damaged = []
    for coords in itertools.product(*ranges):
        box = tuple(slice(index * step, min((index + 1) * step, extent)) for index, step, extent in zip(coords, unit, array.shape))
        try:
            read(box)
        except Exception as error:
            damaged.append((coords, stored(coords), f"{type(error).__name__}: {error}"))
    return damaged


def unwritten_fill_value(volume):
    """The value every voxel of ``volume`` holds if none of its data was ever stored, else None.

    Exact and cheap, without reading data: a zarr array with no chunk stored (zarr does not store
    a chunk that holds only the fill value), found by listing its keys only up to the first chunk;
    an HDF5 dataset (chunked or contiguous, in the file) with no storage allocated. The value is
    read from the first voxel, which then decodes nothing. None too for an empty volume, and for a
    volume that is constant but stored: that takes reading it.
    """
    if math.prod(volume.shape) == 0:
        return None
    if isinstance(volume, HDF5Volume):
        import h5py

        dataset = volume.dataset
        properties = dataset.id.get_create_plist()
        in_file = (
            not dataset.is_virtual
            and properties.get_external_count() == 0
            and properties.get_layout() in (h5py.h5d.CHUNKED, h5py.h5d.CONTIGUOUS)
        )
        unwritten = in_file and dataset.id.get_storage_size() == 0
    elif isinstance(volume, LocalArray):
        unwritten = not _has_chunk_file(volume.path)
    elif is_zarr_array(volume):
        from zarr.core.sync import sync

        # zarr's own bridge to its async store API: the public `nchunks_initialized` lists every chunk.
        unwritten = not sync(_has_stored_chunk(volume))
    else:
        return None
    return np.asarray(volume[(0,) * len(volume.shape)]).item() if unwritten else None


# Files of a zarr node that are not chunks.
_METADATA_FILES = {"zarr.json", ".zarray", ".zattrs", ".zgroup", ".zmetadata"}


async def _has_stored_chunk(array: zarr.Array) -> bool:
    prefix = f"{array.path}/" if array.path else ""
    async with aclosing(array.store.list_prefix(prefix)) as keys:
        async for key in keys:
            if key.rpartition("/")[2] not in _METADATA_FILES:
                return True
    return False


def _has_chunk_file(folder: str) -> bool:
    """Whether the array in `folder` stores any chunk: a file other than metadata below it (what
    `_has_stored_chunk` asks zarr's store), looked for only up to the first."""
    for _, _, names in os.walk(folder):
        if any(name not in _METADATA_FILES for name in names):
            return True
    return False


def _scale_of(transformations) -> np.ndarray | None:
    for transformation in transformations or ():
        if transformation.get("type") == "scale" and "scale" in transformation:
            return np.asarray(transformation["scale"], dtype=np.float64)
    return None


def _parent_attributes(array) -> tuple[dict, str]:
    """The attributes of the zarr group holding `array` and the array's name in it; ({}, "") for
    an array at the root of its store, or not a zarr array."""
    if isinstance(array, LocalArray):
        parent, _, name = array.path.rpartition("/")
        try:
            metadata = metadata_document(parent)
        except (OSError, ValueError):
            return {}, ""
        attributes = metadata.get("attributes") if metadata.get("node_type") == "group" else None
        return (attributes, name) if isinstance(attributes, dict) else ({}, "")
    if not is_zarr_array(array) or not array.path:
        return {}, ""
    import zarr

    parent_path, _, name = array.path.rpartition("/")
    try:
        parent = zarr.open_group(store=array.store, path=parent_path, mode="r")
    except (FileNotFoundError, zarr.errors.GroupNotFoundError):
        return {}, ""
    return dict(parent.attrs), name


def _ome_resolution(array) -> tuple[float, ...] | None:
    """Resolution of a zarr array from the OME-Zarr multiscales of its parent group."""
    parent_attributes, name = _parent_attributes(array)
    for multiscale in ome_multiscales(parent_attributes) or ():
        for dataset in multiscale.get("datasets", ()):
            if dataset.get("path") != name:
                continue
            scale = _scale_of(dataset.get("coordinateTransformations"))
            if scale is None:
                return None
            # A multiscale-level scale applies on top of every dataset's own scale.
            overall_scale = _scale_of(multiscale.get("coordinateTransformations"))
            if overall_scale is not None:
                scale = scale * overall_scale
            axes = multiscale.get("axes") or [{"type": "space"}] * scale.size
            return tuple(
                float(value) * nanometers_per(axis.get("unit")) for value, axis in zip(scale, axes) if axis.get("type", "space") == "space"
            )
    return None


def read_resolution(volume) -> tuple[float, ...] | None:
    """Voxel size of ``volume`` in nanometres, z,y,x order, or None if it is not recorded.

    Looked up, first match wins, in the attributes ``resolution_nm_zyx``, then ``resolution``
    (taken as nanometres z,y,x too), then, for a zarr array inside an OME-Zarr multiscale group, the
    ``scale`` transformations of its dataset (converted from the axes' units; non-space axes such as
    channels are dropped).

    Args:
        volume: array from ``open_volume`` (``zarr.Array`` or ``HDF5Volume``) or an h5py dataset.
    """
    for name in (RESOLUTION_ATTRIBUTE, "resolution"):
        if name in volume.attrs:
            return tuple(float(value) for value in np.ravel(volume.attrs[name]))
    return _ome_resolution(volume)


class _TiffStack:
    """A TIFF file read lazily as a (z, y, x) stack, one page per z plane where possible."""

    def __init__(self, path: Path):
        import tifffile  # here, not at the top: see `_open_hdf5`

        self._file = tifffile.TiffFile(path)
        series = self._file.series[0]
        self.shape = tuple(series.shape)
        self.dtype = series.dtype
        self.ndim = len(self.shape)
        self._one_page_per_plane = self.ndim >= 3 and len(series.pages) == self.shape[0] and tuple(series.keyframe.shape) == self.shape[1:]
        self._whole = None
        self.resolution = _tiff_resolution(self._file, self.ndim)

    def __getitem__(self, selection: tuple[slice, ...]) -> np.ndarray:
        if self._one_page_per_plane:
            planes = selection[0]
            stack = self._file.asarray(key=planes, series=0)
            stack = stack.reshape((planes.stop - planes.start,) + self.shape[1:])
            return stack[(slice(None),) + tuple(selection[1:])]
        # Other layouts (a single image, interleaved channels) are small enough to read at once.
        if self._whole is None:
            self._whole = self._file.series[0].asarray()
        return self._whole[selection]

    def close(self) -> None:
        self._file.close()


class _TiffFolder:
    """A folder of single-plane TIFF files read lazily as a (z, y, x) stack, one file per z plane.

    Files are ordered by the numbers in their names (so `2.tif` comes before `10.tif`).
    """

    def __init__(self, path: Path):
        self._paths = sorted(
            (candidate for candidate in path.iterdir() if candidate.suffix.lower() in TIFF_SUFFIXES),
            key=_natural_key,
        )
        if not self._paths:
            raise VolumeNotFoundError(f"no TIFF files (.tif, .tiff) in folder {path}")
        import tifffile

        with tifffile.TiffFile(self._paths[0]) as first:
            plane_shape, self.dtype = tuple(first.series[0].shape), first.series[0].dtype
            # A plane's metadata holds the plane spacing only if ImageJ wrote it (`spacing`).
            self.resolution = _tiff_resolution(first, 3)
        if len(plane_shape) != 2:
            raise UnusableVolumeError(f"{self._paths[0]}: a TIFF folder needs one 2D image per file, got shape {plane_shape}")
        self.shape = (len(self._paths),) + plane_shape
        self.ndim = 3

    def __getitem__(self, selection: tuple[slice, ...]) -> np.ndarray:
        planes = []
        import tifffile

        for path in self._paths[selection[0]]:
            plane = tifffile.imread(path)
            if plane.shape != self.shape[1:] or plane.dtype != self.dtype:
                raise UnusableVolumeError(
                    f"{path}: {plane.dtype} image of shape {plane.shape}, expected {self.dtype} {self.shape[1:]} like the first file"
                )
            planes.append(plane[tuple(selection[1:])])
        return np.stack(planes)

    def close(self) -> None:
        pass


# Nanometres per length unit as ImageJ and OME-TIFF write them.
_TIFF_NANOMETERS_PER_UNIT = {
    "nm": 1.0,
    "nanometer": 1.0,
    "nanometre": 1.0,
    "um": 1e3,
    "\u00b5m": 1e3,
    "\u03bcm": 1e3,
    "micron": 1e3,
    "microns": 1e3,
    "micrometer": 1e3,
    "micrometre": 1e3,
    "mm": 1e6,
    "millimeter": 1e6,
    "cm": 1e7,
    "m": 1e9,
    "angstrom": 0.1,
    "å": 0.1,
}
# The TIFF tag ResolutionUnit: 2 inch, 3 centimetre (1: no unit).
_TIFF_RESOLUTION_UNIT_NANOMETERS = {2: 2.54e7, 3: 1e7}


def _tiff_resolution(tiff: tifffile.TiffFile, ndim: int) -> tuple[float, ...] | None:
    """Voxel size in nm (z, y, x; or y, x for one image) recorded in a TIFF file, or None.

    Read from OME-TIFF ``PhysicalSize{Z,Y,X}``, else from the X/YResolution tags (pixels per unit)
    with the unit of ImageJ's metadata or of the ResolutionUnit tag, and for a stack the plane
    spacing of ImageJ's metadata (``spacing``). None unless every axis is known.
    """
    if tiff.is_ome:
        resolution = _ome_tiff_resolution(tiff.ome_metadata, ndim)
        if resolution is not None:
            return resolution
    page = tiff.pages.first
    x_tag, y_tag = page.tags.get("XResolution"), page.tags.get("YResolution")
    imagej = tiff.imagej_metadata or {}
    if "unit" in imagej:
        per_unit = _TIFF_NANOMETERS_PER_UNIT.get(str(imagej["unit"]).strip().lower())
    else:
        unit_tag = page.tags.get("ResolutionUnit")
        per_unit = _TIFF_RESOLUTION_UNIT_NANOMETERS.get(int(unit_tag.value)) if unit_tag is not None else None
    if per_unit is None or x_tag is None or y_tag is None:
        return None
    pixels_per_unit = [numerator / denominator for numerator, denominator in (y_tag.value, x_tag.value)]
    if min(pixels_per_unit) <= 0:
        return None
    in_plane = tuple(per_unit / value for value in pixels_per_unit)
    if ndim == 2:
        return in_plane
    if "spacing" not in imagej or float(imagej["spacing"]) <= 0:
        return None
    return (float(imagej["spacing"]) * per_unit,) + in_plane


def _ome_tiff_resolution(ome_xml: str, ndim: int) -> tuple[float, ...] | None:
    pixels = re.search(r"<(?:\w+:)?Pixels\b([^>]*)>", ome_xml or "")
    if pixels is None:
        return None
    attributes = dict(re.findall(r'(\w+)="([^"]*)"', pixels.group(1)))
    resolution = []
    for axis in "ZYX"[-ndim:]:
        size, unit = attributes.get(f"PhysicalSize{axis}"), attributes.get(f"PhysicalSize{axis}Unit", "µm")
        if size is None or unit.lower() not in _TIFF_NANOMETERS_PER_UNIT or float(size) <= 0:
            return None
        resolution.append(float(size) * _TIFF_NANOMETERS_PER_UNIT[unit.lower()])
    return tuple(resolution)


def _natural_key(path: Path) -> list:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.name)]


def _default_chunks(shape: tuple[int, ...]) -> tuple[int, ...]:
    edge = max(1, round(_DEFAULT_CHUNK_VOXELS ** (1 / len(shape))))
    return tuple(max(1, min(edge, extent)) for extent in shape)


def _copy_blocks(shape, chunks, itemsize):
    """Chunk-aligned blocks covering ``shape``: whole slabs of ``chunks[0]`` planes if they fit in
    ``_COPY_BLOCK_BYTES``, else single chunks."""
    slab = (chunks[0],) + tuple(shape[1:])
    block = slab if math.prod(slab) * itemsize <= _COPY_BLOCK_BYTES else tuple(chunks)
    starts = [range(0, extent, step) for extent, step in zip(shape, block)]
    for corner in itertools.product(*starts):
        yield tuple(slice(start, min(start + step, extent)) for start, step, extent in zip(corner, block, shape))


def _open_destination_group(destination: Path) -> zarr.Group:
    import zarr

    if not destination.exists():
        return zarr.open_group(str(destination), mode="a", zarr_format=3)
    # Opening without zarr_format so that an existing v2 store is detected rather than
    # silently given v3 metadata next to its v2 metadata.
    group = zarr.open_group(str(destination), mode="a")
    if group.metadata.zarr_format != 3:
        raise UnusableVolumeError(f"{destination} is a zarr v2 store; import_volume writes zarr v3 only")
    return group


def import_volume(
    source,
    destination,
    key: str,
    *,
    source_key: str | None = None,
    resolution=None,
    chunks=None,
) -> None:
    """Copy a TIFF stack or an HDF5 (or zarr) dataset into an OME-Zarr 0.5 image ``destination:key``.

    The image is a zarr v3 group ``key`` holding the array ``s0`` (its full resolution level; a
    pyramid's further levels ``s1``, ... can be added later, see `emflow.pyramid`), with axes z, y, x
    (or y, x) in nanometres and the voxel size as their scale. ``open_volume(destination, key)``
    opens ``s0``. The copy is streamed block by block (slabs of ``chunks[0]`` planes), so sources
    larger than memory are fine. ``s0`` also keeps the voxel size as ``resolution_nm_zyx`` and gets,
    written last, ``emflow_import_complete = True``. A complete image is never overwritten; an
    image (or array) without that flag is the leftover of an interrupted import and is recreated
    from scratch.

    Args:
        source: multi-page TIFF (``.tif``/``.tiff``; pages become z, giving (z, y, x)), a folder
            of single-plane TIFF files (one per z plane, in the numeric order of their names), or
            a volume ``open_volume`` accepts.
        destination: zarr store, created as zarr v3 if missing (an existing store must be v3).
        key: path of the image group inside ``destination``; intermediate groups are created.
        source_key: dataset inside ``source``; required for HDF5/zarr, not allowed for TIFF.
        resolution: voxel size in nanometres, one value per axis (z, y, x). Default: the one the
            source records: ``read_resolution`` for HDF5/zarr; for TIFF, OME-TIFF physical sizes,
            or the resolution tags with ImageJ's unit and plane spacing (see `_tiff_resolution`).
        chunks: chunk shape of ``s0``. Default: about 64**3 voxels (64^3 for 3D, 512^2 for 2D),
            clipped to the shape.

    Raises:
        FileExistsError: if a completely imported image, or another group, exists at
            ``destination:key``.
        ValueError: for a missing/superfluous ``source_key``, a v2 destination store, a voxel size
            neither given nor recorded in the source, or ``resolution``/``chunks`` whose length
            differs from the source's ndim.
        FileNotFoundError, KeyError: as ``open_volume`` for a missing source or source key.
    """
    source = Path(source)
    with ExitStack() as stack:
        if source.suffix.lower() in TIFF_SUFFIXES or (source.is_dir() and not _is_zarr_path(source)):
            if source_key is not None:
                raise UnusableVolumeError(f"{source} is a TIFF stack; it has no source_key to select")
            if not source.exists():
                raise VolumeNotFoundError(f"volume file not found: {source}")
            source_volume = _TiffFolder(source) if source.is_dir() else _TiffStack(source)
            stack.callback(source_volume.close)
            recorded = source_volume.resolution
        else:
            if source_key is None:
                raise UnusableVolumeError(_name_a_dataset(source, Path(destination), key))
            source_volume = open_volume(source, source_key)
            if isinstance(source_volume, HDF5Volume):
                stack.enter_context(source_volume)
            recorded = read_resolution(source_volume)

        shape = tuple(source_volume.shape)
        for name, value in (("chunks", chunks), ("resolution", resolution)):
            if value is not None and len(value) != len(shape):
                raise UnusableVolumeError(
                    f"{name} {tuple(value)} has {len(value)} values for a {len(shape)}-dimensional volume of shape {shape}"
                )
        destination, key = Path(destination), key.strip("/")
        if destination.exists():
            # An existing image is refused first: whatever else is wrong, it is never overwritten.
            _refuse_completed_import(_open_destination_group(destination), destination, key)
        if resolution is None:
            resolution = recorded
        if resolution is None or len(resolution) != len(shape):
            raise UnusableVolumeError(
                f"the voxel size of {source}{':' + source_key if source_key else ''} is not recorded in it; "
                f"give it ({'z, y, x' if len(shape) == 3 else 'one value per axis'}, in nm: emflow import --resolution)"
            )
        group = _open_destination_group(destination)
        _refuse_completed_import(group, destination, key)
        _write_ome_image(source_volume, group, key, [float(value) for value in resolution], chunks)


def datasets_in(path) -> list[tuple[str, tuple[int, ...], str]]:
    """Every array in an HDF5 file or zarr group as (key, shape, dtype), in key order; an OME-Zarr
    image counts as its group (the key `open_volume` takes), with its full-resolution level's shape."""
    import zarr

    path = Path(path)
    found: list[tuple[str, tuple[int, ...], str]] = []
    if _check_volume_path(path) == "hdf5":
        import h5py

        with h5py.File(path, "r") as file:
            file.visititems(lambda key, node: found.append((key, node.shape, str(node.dtype))) if isinstance(node, h5py.Dataset) else None)
        return sorted(found)

    def visit(group: zarr.Group, prefix: str) -> None:
        for name, node in group.members():
            key = f"{prefix}{name}"
            if isinstance(node, zarr.Array):
                found.append((key, node.shape, str(node.dtype)))
            elif ome_multiscales(node.attrs):
                level = _open_zarr(path, key, "r")
                found.append((key, level.shape, str(level.dtype)))
            else:
                visit(node, f"{key}/")

    root = zarr.open(store=str(path), mode="r")
    if isinstance(root, zarr.Array):
        return [("", root.shape, str(root.dtype))]
    visit(root, "")
    return sorted(found)


def _name_a_dataset(source: Path, destination: Path, key: str) -> str:
    """The message for an import from an HDF5 file or zarr group that names no dataset in it."""
    import zarr

    try:
        datasets = datasets_in(source)
    except (OSError, ValueError, KeyError, zarr.errors.BaseZarrError) as error:
        return f"{source}: name the dataset to import from it (SOURCE as file.h5:group/dataset, or --source-key); its contents cannot be listed ({error})"
    if not datasets:
        return f"{source} holds no datasets to import"
    # The dataset named like the new array (`--key raw`: "raw", "volumes/raw"), else the first.
    example = next((name for name, _, _ in datasets if name.rsplit("/", 1)[-1] == key.rsplit("/", 1)[-1]), datasets[0][0])
    listing = "; ".join(f"{name} {shape} {dtype}" for name, shape, dtype in datasets[:20])
    more = f"; and {len(datasets) - 20} more" if len(datasets) > 20 else ""
    return (
        f"{source} holds {len(datasets)} dataset{'s' if len(datasets) > 1 else ''}: {listing}{more}. Name the one to import, e.g. "
        f"`emflow import {source}:{example} {destination} --key {key or 'raw'}` (or --source-key {example})"
    )


def _refuse_completed_import(group: zarr.Group, destination: Path, key: str) -> None:
    """Raise ExistingArrayError if ``key`` holds a completed import or a group that is not an import."""
    import zarr

    if key and key not in group:
        return
    existing = group[key] if key else group
    if isinstance(existing, zarr.Group):
        level = existing.get(level_path(0)) if ome_multiscales(existing.attrs) else None
        if level is None:
            raise ExistingArrayError(f"{destination}:{key} already exists and is a group")
        existing = level
    if existing.attrs.get(IMPORT_COMPLETE_ATTRIBUTE, False):
        raise ExistingArrayError(f"{destination}:{key} already exists (a completed import); delete it to write it again")


def _write_ome_image(source_volume, group: zarr.Group, key: str, resolution: list[float], chunks) -> None:
    """Copy ``source_volume`` block by block into level ``s0`` of a new image group ``key``."""
    shape = tuple(source_volume.shape)
    chunks = _default_chunks(shape) if chunks is None else tuple(int(c) for c in chunks)
    # Replaces the leftover of an interrupted import, array or group, whole.
    image = group.create_group(key, overwrite=True)
    level = create_level(image, 0, shape, chunks, source_volume.dtype)
    level.attrs[RESOLUTION_ATTRIBUTE] = resolution
    # The metadata comes before the data, so an interrupted import is recognisable as one.
    write_multiscale_metadata(image, resolution, name=key.rpartition("/")[2])
    for block in _copy_blocks(shape, chunks, np.dtype(source_volume.dtype).itemsize):
        level[block] = source_volume[block]
    if len(shape) == 3:
        _write_image_pyramid(image, resolution, chunks)
    level.attrs[IMPORT_COMPLETE_ATTRIBUTE] = True


def _write_image_pyramid(image: zarr.Group, resolution: list[float], chunks: tuple[int, ...]) -> None:
    """Levels s1.. of an imported 3D image, down to one that fits one chunk, each chunk of a level
    averaged from the box of the level before it covers (`emflow.pyramid`), and the metadata of all."""
    factors = pyramid_factors(resolution, image[level_path(0)].shape, chunks)
    for number, (level, level_factors) in enumerate(zip(create_levels(image, factors), factors), start=1):
        source = image[level_path(number - 1)]
        blocking = Blocking(level.shape, tuple(min(chunk, size) for chunk, size in zip(chunks, level.shape)))
        for block_id in range(blocking.number_of_blocks):
            box = blocking.block(block_id)
            level[box.slicing] = downsample_image(np.asarray(source[source_box(box, level_factors, source.shape).slicing]), level_factors)
    write_multiscale_metadata(image, resolution, factors, name=image.basename, downsampling="mean")


def write_volume(path, key: str, data, *, resolution=None, chunks=None) -> None:
    """Write an in-memory array as a new zarr v3 array at ``path:key`` (a plain array, not an image).

    Storage rules as ``import_volume`` (store created as v3 if missing, default chunks, completion
    flag, no overwriting a completed array), but the array is not an OME-Zarr image: ``resolution``
    is recorded as given in ``resolution_nm_zyx`` (or omitted when None), without checking it
    against ``data.ndim``, so that tests can write deliberately inconsistent inputs.

    Args:
        path: zarr store.
        key: array path inside it.
        data: array of any shape and dtype.
        resolution: voxel size in nanometres (z, y, x), or None to omit it.
        chunks: chunk shape, default as in ``import_volume``.

    Raises:
        FileExistsError: if a completed array, or a group, exists at ``path:key``.
        ValueError: if ``path`` is a zarr v2 store.
    """
    path, key, data = Path(path), key.strip("/"), np.asarray(data)
    group = _open_destination_group(path)
    _refuse_completed_import(group, path, key)
    chunks = _default_chunks(data.shape) if chunks is None else tuple(int(c) for c in chunks)
    target = group.create_array(
        name=key,
        shape=data.shape,
        dtype=data.dtype,
        chunks=chunks,
        dimension_names=("z", "y", "x")[-data.ndim :] if data.ndim <= 3 else None,
        overwrite=key in group,
    )
    if resolution is not None:
        target.attrs[RESOLUTION_ATTRIBUTE] = [float(value) for value in resolution]
    for block in _copy_blocks(data.shape, chunks, data.dtype.itemsize):
        target[block] = data[block]
    target.attrs[IMPORT_COMPLETE_ATTRIBUTE] = True
