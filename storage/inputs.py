"""The input datasets of a run: what they are (path, key, shape, dtype), and whether they can be used.

What a fingerprint records about an input is its identity (`InputDataset.identity`), not its
content, which would cost a full read of the volume on every completeness check; new data in an
input is found per chunk (`emflow.storage.chunks`).
"""

from __future__ import annotations

import os
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from emflow.config.run import check_affinity_offsets
from emflow.errors import ConfigError, InputError

from .volumes import opened_volume, unwritten_fill_value

# What messages call the input of each role.
_DESCRIPTIONS = {"boundaries": "boundary map", "raw": "raw data", "affinities": "affinities"}
# Roles whose datasets have a leading channel axis before (z, y, x).
CHANNEL_ROLES = ("affinities",)


@dataclass(frozen=True)
class InputDataset:
    """One input dataset: its role ("boundaries", "raw", ...), resolved path, key, shape and dtype."""

    role: str
    path: str
    key: str
    shape: tuple[int, ...]
    dtype: str
    chunks: tuple[int, ...] | None = None

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
                raise InputError(f"config key input.path: {error}; check the path (a relative path is relative to the config file)") from error
            except KeyError as error:
                raise InputError(f"config key input.{role}_key: {error.args[0]}") from error
            except ValueError as error:
                raise InputError(str(error)) from error
            chunks = getattr(volume, "chunks", None)
            described[role] = InputDataset(
                role, str(Path(path).resolve()), key, tuple(int(size) for size in volume.shape), str(volume.dtype), tuple(chunks) if chunks else None
            )
    return described


def reference_role(inputs: dict[str, InputDataset]) -> str:
    """The input that defines the volume's shape: the boundary map, the affinities it is derived from,
    or the raw data it is predicted from."""
    return next(role for role in ("boundaries", "affinities", "raw") if role in inputs)


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
    if reference.role in ("boundaries", "affinities") and not np.issubdtype(np.dtype(reference.dtype), np.floating):
        raise InputError(f"{what} must be float with values in [0, 1], got dtype {reference.dtype}")
    raw = inputs.get("raw")
    if raw is not None and not (np.issubdtype(np.dtype(raw.dtype), np.unsignedinteger) or np.issubdtype(np.dtype(raw.dtype), np.floating)):
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
        raise ConfigError(f"config key {key}: cannot write {path}: {existing} is not writable (permissions or a read-only file system); choose another path")
