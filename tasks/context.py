"""What every task of one run shares: the validated config, the volume's geometry and the paths.

Built once per process from the config file and cached, so that the many per-block tasks of a run
(possibly on other hosts) agree on it without passing it around.
"""

from __future__ import annotations

import functools
import os
import stat
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from emflow.blocking import Blocking
from emflow.config import ConfigError, load_config
from emflow.storage.output import output_array
from emflow.storage.volumes import opened_volume, read_region, unwritten_fill_value


@dataclass(frozen=True, eq=False)  # hashed by identity: one cached instance per config text
class RunContext:
    config_path: str
    config: dict[str, dict[str, Any]]
    shape: tuple[int, ...]
    blocking: Blocking
    work_dir: Path
    output_path: Path
    inputs: dict[str, dict[str, Any]]

    def record_path(self, stage: str) -> Path:
        """The completion record of a global stage, or of a block-wise stage as a whole."""
        return self.work_dir / "status" / f"{stage}.json"

    def block_record_folder(self, stage: str) -> Path:
        """Where the records of a block-wise stage's blocks are kept (see emflow.targets.journal)."""
        return self.work_dir / "status" / stage

    def failure_path(self, stage: str, block_id: int | None) -> Path:
        return self.work_dir / "failed" / (f"{stage}.json" if block_id is None else f"{stage}/{block_id}.json")

    def log_path(self, stage: str, block_id: int | None) -> Path:
        return self.work_dir / "logs" / (f"{stage}.log" if block_id is None else f"{stage}/{block_id}.log")

    def partial_path(self, stage: str, block_id: int) -> Path:
        """Where a block task keeps its partial result (global stages: `global_array_path`)."""
        return self.work_dir / "blocks" / stage / f"{block_id}.npz"

    def block_array_path(self, stage: str, block_id: int) -> Path:
        """Where a block task keeps one array as .npy, which other blocks read memory-mapped, a slab at a time."""
        return self.work_dir / "blocks" / stage / f"{block_id}.npy"

    def global_array_path(self, stage: str, name: str) -> Path:
        """Where a global stage keeps one array as .npy, which block tasks read memory-mapped.

        A block task then reads only the entries it needs, so its memory does not grow with the
        volume (as it would loading an array with an entry per block or per supervoxel).
        """
        return self.work_dir / "global" / stage / f"{name}.npy"

    def read_global_array(self, stage: str, name: str, *, mmap: bool = False) -> np.ndarray:
        return np.load(self.global_array_path(stage, name), mmap_mode="r" if mmap else None)

    def read_partial(self, stage: str, block_id: int, name: str) -> np.ndarray:
        """One array of a block's partial result (see `partial_path`), closing the file at once."""
        return self.read_partials(stage, block_id, name)[0]

    def read_partials(self, stage: str, block_id: int, *names: str) -> tuple[np.ndarray, ...]:
        """Several arrays of a block's partial result, from one opening of its file."""
        with np.load(self.partial_path(stage, block_id)) as partial:
            return tuple(partial[name] for name in names)

    def input_location(self, role: str) -> str:
        """`path:key` of the input dataset playing `role`, as messages name it."""
        return f"{self.config['input']['path']}:{self.config['input'][f'{role}_key']}"

    def read_input(self, role: str, box) -> np.ndarray:
        """The input dataset playing `role` ("boundaries", "supervoxels", "mask", "raw", "lifted_labels") inside `box`.

        A damaged chunk raises DamagedDataError naming the dataset, the box and the chunk's file.
        """
        with opened_volume(self.config["input"]["path"], self.config["input"][f"{role}_key"]) as volume:
            return read_region(volume, box.slicing, self.input_location(role))

    @property
    def predicting(self) -> bool:
        """Whether the boundary map is predicted from raw data (no `boundaries_key` given)."""
        return not self.config["input"]["boundaries_key"]

    def read_boundaries(self, box) -> np.ndarray:
        """The boundary map inside `box` as float32, checked for NaNs and the [0, 1] range.

        Read from the input, or from the output's predicted `boundaries` (uint8 ones scaled back).
        """
        if self.predicting:
            boundaries = np.asarray(output_array(self.output_path, "boundaries")[box.slicing])
            return boundaries.astype(np.float32) / np.float32(255) if boundaries.dtype == np.uint8 else boundaries
        boundaries = self.read_input("boundaries", box).astype(np.float32, copy=False)
        location = f"boundary map {self.input_location('boundaries')}"
        for name, bad in (("NaN", np.isnan), ("infinite", np.isinf)):
            where = np.flatnonzero(bad(boundaries))
            if where.size:
                first = tuple(int(start + index) for start, index in zip(box.begin, np.unravel_index(where[0], boundaries.shape)))
                raise InputError(
                    f"{location} holds {where.size} {name} value{'s' if where.size > 1 else ''} in box {describe_box(box)} "
                    f"(the first at voxel (z, y, x) = {first}); boundary values must lie in [0, 1]: fix the boundary map and run again"
                )
        if boundaries.size and (boundaries.min() < 0 or boundaries.max() > 1):
            raise InputError(
                f"{location} has values outside [0, 1] in box {describe_box(box)} "
                f"(min {boundaries.min()}, max {boundaries.max()})"
            )
        return boundaries

    def read_mask(self, box) -> np.ndarray | None:
        if not self.config["input"]["mask_key"]:
            return None
        return self.read_input("mask", box).astype(bool, copy=False)


class InputError(ValueError):
    """An input dataset cannot be used: missing, wrong shape, dtype or dimensionality, empty, constant, or invalid values."""


def describe_box(box) -> str:
    """A box as messages show it: "z 0:40, y 0:72, x 56:128"."""
    return ", ".join(f"{axis} {begin}:{end}" for axis, begin, end in zip("zyx", box.begin, box.end))


def load_context(config_path: str) -> RunContext:
    """The context of a config file, cached per process while the file stays the same.

    Raises ConfigError for a bad config or an output location that cannot be written, InputError
    for unusable inputs and ValueError for an input container that cannot be opened, each naming
    the problem.
    """
    try:
        status = os.stat(config_path)
    except FileNotFoundError:
        status = None
    if status is None or not stat.S_ISREG(status.st_mode):
        raise ConfigError(f"config file not found: {config_path}")
    # Every block task asks for its context several times; a stat is much cheaper than a read.
    return _context_for_file(str(config_path), status.st_ino, status.st_size, status.st_mtime_ns)


@functools.lru_cache(maxsize=8)
def _context_for_file(config_path: str, inode: int, size: int, modified_ns: int) -> RunContext:
    return _context_for_text(config_path, Path(config_path).read_text())


@functools.lru_cache(maxsize=8)
def _context_for_text(config_path: str, config_text: str) -> RunContext:
    config = load_config(config_path)
    inputs = describe_inputs(config)
    validate_inputs(inputs)
    refuse_unwritten_input(config, inputs)
    shape = tuple(inputs[reference_role(inputs)]["shape"])
    output_path = Path(config["output"]["path"])
    work_dir = Path(config["output"]["work_dir"] or f"{output_path}.work")
    check_writable(output_path, "output.path")
    check_writable(work_dir, "output.work_dir" if config["output"]["work_dir"] else "output.work_dir (default: output.path + '.work')")
    block_shape = tuple(config["blocking"]["block_shape"])
    if any(block > size for block, size in zip(block_shape, shape)):
        raise ConfigError(
            f"config key blocking.block_shape {list(block_shape)} is larger than the volume {list(shape)} along axis "
            f"{', '.join(str(axis) for axis, (block, size) in enumerate(zip(block_shape, shape)) if block > size)}; make the blocks smaller"
        )
    return RunContext(
        config_path=str(config_path),
        config=config,
        shape=shape,
        blocking=Blocking(shape, block_shape),
        work_dir=work_dir,
        output_path=output_path,
        inputs=inputs,
    )


def describe_inputs(config: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Identity of each configured input dataset: path, key, shape, dtype.

    This is what the fingerprints record about the input (not its content, which would cost a
    full read of the volume on every completeness check).
    """
    described = {}
    for role in ("boundaries", "supervoxels", "mask", "raw", "lifted_labels"):
        key = config["input"][f"{role}_key"]
        if not key:
            continue
        with ExitStack() as stack:
            try:
                volume = stack.enter_context(opened_volume(config["input"]["path"], key))
            except FileNotFoundError as error:
                raise InputError(f"config key input.path: {error}; check the path (a relative path is relative to the config file)") from error
            except KeyError as error:
                raise InputError(f"config key input.{role}_key: {error.args[0]}") from error
            described[role] = {
                "path": str(Path(config["input"]["path"]).resolve()),
                "key": key,
                "shape": [int(size) for size in volume.shape],
                "dtype": str(volume.dtype),
            }
    return described


def reference_role(inputs: dict[str, dict[str, Any]]) -> str:
    """The input that defines the volume's shape: the boundary map, or raw data it is predicted from."""
    return "boundaries" if "boundaries" in inputs else "raw"


def validate_inputs(inputs: dict[str, dict[str, Any]]) -> None:
    """Raise InputError naming the first problem with the input datasets (see `describe_inputs`)."""

    def name(role: str) -> str:
        return f"{inputs[role]['path']}:{inputs[role]['key']}"

    role = reference_role(inputs)
    reference = inputs[role]
    what = "boundary map" if role == "boundaries" else "raw data"
    if len(reference["shape"]) != 3:
        raise InputError(f"{what} {name(role)} must be 3D (z, y, x), got shape {tuple(reference['shape'])}")
    if 0 in reference["shape"]:
        raise InputError(f"{what} {name(role)} is empty (shape {tuple(reference['shape'])})")
    if role == "boundaries" and not np.issubdtype(np.dtype(reference["dtype"]), np.floating):
        raise InputError(f"boundary map {name(role)} must be float with values in [0, 1], got dtype {reference['dtype']}")
    if "raw" in inputs and not (
        np.issubdtype(np.dtype(inputs["raw"]["dtype"]), np.unsignedinteger) or np.issubdtype(np.dtype(inputs["raw"]["dtype"]), np.floating)
    ):
        raise InputError(f"raw data {name('raw')} must be unsigned integer or float in [0, 1], got dtype {inputs['raw']['dtype']}")
    for other, description in inputs.items():
        if description["shape"] != reference["shape"]:
            raise InputError(
                f"{other.replace('_', ' ')} dataset {name(other)} has shape {tuple(description['shape'])}, "
                f"but the {what} {name(role)} has shape {tuple(reference['shape'])}; all input datasets must have the same shape"
            )
    for other in ("supervoxels", "lifted_labels"):
        if other in inputs and not np.issubdtype(np.dtype(inputs[other]["dtype"]), np.integer):
            raise InputError(f"{other.replace('_', ' ')} dataset {name(other)} must hold integer ids, got dtype {inputs[other]['dtype']}")
    if "mask" in inputs and not (
        np.issubdtype(np.dtype(inputs["mask"]["dtype"]), np.integer) or np.dtype(inputs["mask"]["dtype"]) == bool
    ):
        raise InputError(f"mask dataset {name('mask')} must be boolean or integer, got dtype {inputs['mask']['dtype']}")


def refuse_unwritten_input(config: dict[str, dict[str, Any]], inputs: dict[str, dict[str, Any]]) -> None:
    """Raise InputError if the volume to segment was never written, so that it is one value everywhere.

    A constant volume has no boundaries to find: it would "succeed" as one segment. Reading the
    volume to find out would cost a full pass over it at every config load; this check (see
    `unwritten_fill_value`) costs a listing that stops at the first stored chunk.
    """
    role = reference_role(inputs)
    with opened_volume(config["input"]["path"], inputs[role]["key"]) as volume:
        value = unwritten_fill_value(volume)
    if value is not None:
        what = "boundary map" if role == "boundaries" else "raw data"
        raise InputError(
            f"{what} {inputs[role]['path']}:{inputs[role]['key']} is constant: none of its chunks was ever written, "
            f"so every voxel holds its fill value {value}; write the data into it "
            f"(or point input.{role}_key at the dataset that holds it) and run again"
        )


def check_writable(path: Path, key: str) -> None:
    """Raise ConfigError naming `key` if `path` (a folder emflow creates or writes into) cannot be written.

    Checked at load, so that the run stops before any task rather than in its first one. Root
    ignores permission bits, so the test is one that holds for every user: the path, or its
    nearest existing parent, must be a folder, and `os.access` must call it writable (which also
    catches a read-only mount).
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
