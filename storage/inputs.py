"""The input datasets of a run: what they are (path, key, shape, dtype), and whether they can be used.

What a fingerprint records about an input is its identity (`InputDataset.identity`), not its
content, which would cost a full read of the volume on every completeness check; new data in an
input is found per chunk (`emflow.storage.chunks`).
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from emflow.config.run import check_affinity_offsets
from emflow.errors import ConfigError, InputError

from .chunks import chunk_box, missing_chunks, stored_chunks
from .volumes import (
    IMPORT_COMPLETE_ATTRIBUTE,
    RESOLUTION_ATTRIBUTE,
    DamagedDataError,
    HDF5Volume,
    opened_volume,
    read_region,
    unwritten_fill_value,
)

# What messages call the input of each role.
_DESCRIPTIONS = {"boundaries": "boundary map", "raw": "raw data", "affinities": "affinities"}
# Roles whose datasets have a leading channel axis before (z, y, x).
CHANNEL_ROLES = ("affinities",)


@dataclass(frozen=True)
class InputDataset:
    """One input dataset: its role ("boundaries", "raw", ...), resolved path, key, shape and dtype.

    `import_complete`: for an array `emflow import` wrote (it carries the voxel size emflow
    writes before the data), whether the import finished (the mark written after the data); None
    for data written otherwise."""

    role: str
    path: str
    key: str
    shape: tuple[int, ...]
    dtype: str
    chunks: tuple[int, ...] | None = None
    import_complete: bool | None = None

    @property
    def location(self) -> str:
        """`path:key`, as messages name it."""
        return f"{self.path}:{self.key}"

    @property
    def description(self) -> str:
        return _DESCRIPTIONS.get(self.role, f"{self.role.replace('_', ' ')} dataset")

    @property
    def volume_shape(self) -> tuple[int, ...]:
        """The (z, y, x) shape: without the channel axis of affinities."""
        return self.shape[1:] if self.role in CHANNEL_ROLES else self.shape

    @property
    def volume_chunks(self) -> tuple[int, ...] | None:
        return self.chunks[1:] if self.chunks and self.role in CHANNEL_ROLES else self.chunks

    def identity(self) -> dict[str, Any]:
        return {"path": self.path, "key": self.key, "shape": list(self.shape), "dtype": self.dtype}


def describe_inputs(path: str, keys: dict[str, str]) -> dict[str, InputDataset]:
    """The input datasets `keys` (role → dataset key) of the container `path`, opened once each.

    Raises InputError naming the config key for a missing container or dataset, or one that cannot
    be opened.
    """
    described = {}
    for role, key in keys.items():
        with ExitStack() as stack:
            try:
                volume = stack.enter_context(opened_volume(path, key))
            except FileNotFoundError as error:
                raise InputError(
                    f"config key input.path: {error}; check the path (a relative path is relative to the config file)"
                ) from error
            except KeyError as error:
                raise InputError(f"config key input.{role}_key: {error.args[0]}") from error
            except ValueError as error:
                raise InputError(str(error)) from error
            chunks = getattr(volume, "chunks", None)
            described[role] = InputDataset(
                role,
                str(Path(path).resolve()),
                key,
                tuple(int(size) for size in volume.shape),
                str(volume.dtype),
                tuple(chunks) if chunks else None,
                _import_complete(volume),
            )
    return described


def _import_complete(volume) -> bool | None:
    """Whether `emflow import` (or `write_volume`) finished writing a zarr array; None if they did not write it."""
    if isinstance(volume, HDF5Volume):
        return None
    attributes = volume.attrs
    if IMPORT_COMPLETE_ATTRIBUTE in attributes:
        return attributes[IMPORT_COMPLETE_ATTRIBUTE] is True
    return False if RESOLUTION_ATTRIBUTE in attributes else None


def reference_role(inputs: dict[str, InputDataset]) -> str:
    """The input that defines the volume's shape: the boundary map, the affinities it is derived from,
    or the raw data it is predicted from."""
    return next(role for role in ("boundaries", "affinities", "raw") if role in inputs)


def _float_or_unsigned(dtype: str) -> bool:
    """Whether values of `dtype` are read as intensities in [0, 1]: floats as they are, unsigned
    integers divided by their dtype's maximum."""
    return np.issubdtype(np.dtype(dtype), np.floating) or np.issubdtype(np.dtype(dtype), np.unsignedinteger)


def validate_inputs(inputs: dict[str, InputDataset]) -> None:
    """Raise InputError naming the first problem with the input datasets' shapes and dtypes."""
    reference = inputs[reference_role(inputs)]
    what = f"{reference.description} {reference.location}"
    if reference.role == "affinities" and len(reference.shape) != 4:
        raise InputError(f"{what} must be 4D (C, z, y, x), one channel per offset, got shape {reference.shape}")
    if reference.role != "affinities" and len(reference.shape) != 3:
        raise InputError(f"{what} must be 3D (z, y, x), got shape {reference.shape}")
    if 0 in reference.shape:
        raise InputError(f"{what} is empty (shape {reference.shape})")
    if reference.role in ("boundaries", "affinities") and not _float_or_unsigned(reference.dtype):
        raise InputError(
            f"{what} must be float with values in [0, 1], or unsigned integer read as value / dtype maximum (uint8: / 255), "
            f"got dtype {reference.dtype}"
        )
    raw = inputs.get("raw")
    if raw is not None and not _float_or_unsigned(raw.dtype):
        raise InputError(f"raw data {raw.location} must be unsigned integer or float in [0, 1], got dtype {raw.dtype}")
    for other in inputs.values():
        if other.volume_shape != reference.volume_shape:
            raise InputError(
                f"{other.role.replace('_', ' ')} dataset {other.location} has shape {other.shape}, "
                f"but the {what} has shape {reference.shape}; all input datasets must have the same shape (z, y, x)"
            )
    for role in ("supervoxels", "lifted_labels"):
        if role in inputs and not np.issubdtype(np.dtype(inputs[role].dtype), np.integer):
            raise InputError(f"{inputs[role].description} {inputs[role].location} must hold integer ids, got dtype {inputs[role].dtype}")
    mask = inputs.get("mask")
    if mask is not None and not (np.issubdtype(np.dtype(mask.dtype), np.integer) or np.dtype(mask.dtype) == bool):
        raise InputError(f"mask dataset {mask.location} must be boolean or integer, got dtype {mask.dtype}")
    for dataset in inputs.values():
        if dataset.import_complete is False:
            stored = f" ({_stored_count(dataset)} of {_chunk_count(dataset)} chunks are written)"
            raise InputError(
                f"{dataset.description} {dataset.location} was not completely imported: `emflow import` wrote its voxel size but "
                f"not the mark it writes once all data is in{stored}. Run the import again (it replaces the unfinished one) and then this run"
            )


def input_affinity_offsets(dataset: InputDataset, configured: tuple[tuple[int, ...], ...]) -> tuple[tuple[int, ...], ...]:
    """The offsets of the channels of an affinities input: `configured` ([input] affinity_offsets), or
    else the dataset's `offsets` attribute (emflow's `predictions` output carries one).

    Raises ConfigError when neither gives offsets, or (naming the dataset) when they do not fit its
    channels: each offset must be three integers, and there must be one offset per channel.
    """
    offsets = configured
    if not offsets:
        with opened_volume(dataset.path, dataset.key) as volume:
            offsets = volume.attrs.get("offsets")
        if offsets is None:
            raise ConfigError(
                f"config key input.affinity_offsets is required: affinities {dataset.location} have no `offsets` attribute "
                "naming the offset of each channel"
            )
        what = f"the `offsets` attribute of affinities {dataset.location}"
        if not isinstance(offsets, list) or not all(isinstance(offset, list) and len(offset) == 3 for offset in offsets):
            raise InputError(f"{what} must be a list of offsets (z, y, x), got {offsets!r}")
        check_affinity_offsets(offsets, what)
    if len(offsets) != dataset.shape[0]:
        raise InputError(
            f"affinities {dataset.location} have {dataset.shape[0]} channels, but {len(offsets)} offsets "
            f"({'input.affinity_offsets' if configured else 'its offsets attribute'}): one offset per channel"
        )
    return tuple(tuple(int(step) for step in offset) for offset in offsets)


def refuse_unwritten_input(inputs: dict[str, InputDataset]) -> None:
    """Raise InputError if the volume to segment was never written, so that it is one value everywhere.

    A constant volume has no boundaries to find: it would "succeed" as one segment. Reading the
    volume to find out would cost a full pass over it at every config load; this check (see
    `unwritten_fill_value`) costs a listing that stops at the first stored chunk.
    """
    reference = inputs[reference_role(inputs)]
    with opened_volume(reference.path, reference.key) as volume:
        value = unwritten_fill_value(volume)
    if value is not None:
        raise InputError(
            f"{reference.description} {reference.location} is constant: none of its chunks was ever written, "
            f"so every voxel holds its fill value {value}; write the data into it "
            f"(or point input.{reference.role}_key at the dataset that holds it) and run again"
        )


def _chunk_count(dataset: InputDataset) -> int:
    layout, stored = stored_chunks(dataset.path, dataset.key)
    grid = layout.grid_shape if stored is not None else dataset.chunks or dataset.shape
    return math.prod(-(-size // chunk) for size, chunk in zip(dataset.shape, grid))


def _stored_count(dataset: InputDataset) -> int:
    stored = stored_chunks(dataset.path, dataset.key)[1]
    return 0 if stored is None else len(stored)


# The part of its dtype's range below which a dataset's values are called a tiny part of it: 1/16,
# four bits lost. 8-bit values in uint16 use 1/257, 12-bit values 1/16 (warned as well: the network
# sees them scaled by 1/65535, within 6 % of black); real 8-bit EM spans a third or more of 0..255.
TINY_RANGE = 1 / 16
# Chunks read to sample a dataset's values; a dataset of at most this many chunks is read whole.
SAMPLED_CHUNKS = 8


@dataclass(frozen=True)
class ValueRange:
    """The smallest and largest value found in a dataset, read from `chunks` of its `of` stored
    chunks; `exact` when every stored chunk was read (the fill value of chunks never written counted)."""

    minimum: float
    maximum: float
    chunks: int
    of: int

    @property
    def exact(self) -> bool:
        return self.chunks == self.of

    def describe(self) -> str:
        if not self.of:
            return f"{_number(self.minimum)} (no chunk is stored: every voxel holds the fill value)"
        how = f"all its {self.of} stored" if self.exact else f"{self.chunks} of its {self.of} stored"
        return f"{_number(self.minimum)}..{_number(self.maximum)} (read from {how} chunks)"


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:.4g}"


def sample_value_range(dataset: InputDataset, chunks: int = SAMPLED_CHUNKS) -> ValueRange | None:
    """The value range of a dataset from up to `chunks` of its stored chunks (for HDF5, boxes of
    its chunk shape, or of 128 voxels a side), spread evenly over them in C order (deterministic);
    the fill value if no chunk is stored; None if no chunk read could be decoded. Costs reading
    those chunks."""
    layout, stored = stored_chunks(dataset.path, dataset.key)
    if stored is not None:
        grid = tuple(layout.grid_shape)
        count = len(stored)
    else:
        grid = dataset.chunks or tuple(min(extent, 128) for extent in dataset.shape)
        count = math.prod(-(-extent // size) for extent, size in zip(dataset.shape, grid))
    if count == 0:
        with opened_volume(dataset.path, dataset.key) as volume:
            fill = float(np.asarray(volume.fill_value).item())  # nothing stored: the fill value everywhere
        return ValueRange(fill, fill, 0, 0)
    picks = sorted({round(index * (count - 1) / max(1, chunks - 1)) for index in range(min(chunks, count))})
    if stored is not None:
        positions = stored[picks]
    else:
        positions = np.stack(np.unravel_index(picks, [-(-extent // size) for extent, size in zip(dataset.shape, grid)]), axis=1)
    with opened_volume(dataset.path, dataset.key) as volume:

        def chunk_range(position: list[int]) -> tuple[float, float]:
            box = tuple(slice(index * size, min((index + 1) * size, extent)) for index, size, extent in zip(position, grid, dataset.shape))
            try:
                values = read_region(volume, box, dataset.location)
            except DamagedDataError:
                return math.inf, -math.inf  # the blocks reading it fail with its name and file, each in its own log
            return (float(values.min()), float(values.max())) if values.size else (math.inf, -math.inf)

        # On threads: decoding and the reductions release the GIL, and before a run's first task
        # the other cores are idle.
        with ThreadPoolExecutor(max_workers=min(len(positions), os.cpu_count() or 1)) as pool:
            ranges = list(pool.map(chunk_range, positions.tolist()))
        minimum, maximum = min(low for low, _ in ranges), max(high for _, high in ranges)
        unwritten = stored is not None and count < math.prod(-(-extent // size) for extent, size in zip(dataset.shape, grid))
        if len(picks) == count and unwritten:
            fill = float(np.asarray(volume.fill_value).item())  # what the chunks never written hold
            minimum, maximum = min(minimum, fill), max(maximum, fill)
    if minimum > maximum:
        return None  # every chunk read is damaged, or empty
    return ValueRange(minimum, maximum, len(picks), count)


def input_warnings(inputs: dict[str, InputDataset]) -> list[str]:
    """Warnings about inputs that can be used but likely give a meaningless result, each naming the
    dataset and the numbers: chunks missing inside the written region of a zarr dataset (they read
    as the fill value; zarr stores no chunk that holds only the fill value, so this may be meant),
    and raw data or a boundary map whose values fill a tiny part of their dtype's range, a mask
    that is 0 wherever it was read. Raises InputError for a mask that is 0 everywhere (the
    segmentation would be empty).

    Costs one `stat` per chunk of each zarr dataset (cached per process, see
    `emflow.storage.chunks`) and reading up to `SAMPLED_CHUNKS` chunks of the raw data, boundary
    map and mask."""
    warnings = []
    for dataset in inputs.values():
        found = missing_chunks(dataset.path, dataset.key)
        if found is not None and len(found[1]):
            layout, holes = found
            boxes = "; ".join(_describe_box(*chunk_box(layout, position)) for position in holes[:3])
            more = f" and {len(holes) - 3} more" if len(holes) > 3 else ""
            warnings.append(
                f"{dataset.description} {dataset.location}: {len(holes)} chunk{'s' if len(holes) > 1 else ''} inside the written region "
                f"{'are' if len(holes) > 1 else 'is'} not stored and read{'' if len(holes) > 1 else 's'} as the fill value: {boxes}{more} "
                "(zarr stores no chunk that holds only the fill value; if these should hold data, write them)"
            )
    for role in ("raw", "boundaries", "mask"):
        dataset = inputs.get(role)
        if dataset is None:
            continue
        values = sample_value_range(dataset)
        if values is None:
            continue
        dtype = np.dtype(dataset.dtype)
        if role == "mask":
            if values.maximum == 0 and values.exact:
                raise InputError(
                    f"mask dataset {dataset.location} is 0 everywhere ({values.describe()}): every voxel would be masked out "
                    "and the segmentation empty; check input.mask_key"
                )
            if values.maximum == 0:
                warnings.append(
                    f"mask dataset {dataset.location} is 0 wherever it was read ({values.describe()}): most or all of the volume is masked out"
                )
            continue
        low, high = (0.0, float(np.iinfo(dtype).max)) if np.issubdtype(dtype, np.integer) else (0.0, 1.0)
        span = (values.maximum - values.minimum + (1 if np.issubdtype(dtype, np.integer) else 0)) / (
            high - low + (1 if np.issubdtype(dtype, np.integer) else 0)
        )
        if span < TINY_RANGE:
            effect = (
                f"the network sees them scaled by 1/{_number(high)}, nearly constant, and the segmentation is likely one segment or noise; "
                "store the data in a dtype its values fill (e.g. uint8 for 8-bit values) or rescale it"
                if role == "raw"
                else "a boundary map is read as values in [0, 1]: boundaries are found by their contrast, so few or none will be; rescale it to [0, 1]"
            )
            warnings.append(
                f"{dataset.description} {dataset.location} is {dtype} but its values lie in {values.describe()}, "
                f"{100 * span:.2g} % of the range {_number(low)}..{_number(high)}: {effect}"
            )
    return warnings


def _describe_box(begin, end) -> str:
    return ", ".join(f"{axis} {start}:{stop}" for axis, start, stop in zip("zyx"[-len(begin) :], begin, end))


def check_writable(path: Path, key: str) -> None:
    """Raise ConfigError naming `key` if `path` (a folder emflow creates or writes into) cannot be written.

    Checked before any task runs. Root ignores permission bits, so the test is one that holds for
    every user: the path, or its nearest existing parent, must be a folder, and `os.access` must
    call it writable (which also catches a read-only mount).
    """
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if existing == path and not path.is_dir():
        raise ConfigError(f"config key {key}: {path} exists and is a file, not a zarr group or folder; choose another path")
    if not existing.is_dir():
        raise ConfigError(f"config key {key}: cannot create {path}: {existing} is a file, not a folder; choose another path")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(
            f"config key {key}: cannot write {path}: {existing} is not writable (permissions or a read-only file system); choose another path"
        )
