"""What every task of one run shares: the validated config, the volume's geometry and the paths.

Built once per process from the config file and cached, so that the many per-block tasks of a run
(possibly on other hosts) agree on it without passing it around.
"""

from __future__ import annotations

import functools
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from emflow.blocking import Blocking
from emflow.config import ConfigError, load_config
from emflow.storage.output import output_array
from emflow.storage.volumes import opened_volume


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

    def read_input(self, role: str, box) -> np.ndarray:
        """The input dataset playing `role` ("boundaries", "supervoxels", "mask", "raw", "lifted_labels") inside `box`."""
        with opened_volume(self.config["input"]["path"], self.config["input"][f"{role}_key"]) as volume:
            return np.asarray(volume[box.slicing])

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
        if not np.isfinite(boundaries).all():
            raise ValueError(f"boundary map {self.config['input']['boundaries_key']!r} holds NaN or infinite values in {box}")
        if boundaries.size and (boundaries.min() < 0 or boundaries.max() > 1):
            raise ValueError(
                f"boundary map {self.config['input']['boundaries_key']!r} has values outside [0, 1] in {box} "
                f"(min {boundaries.min()}, max {boundaries.max()})"
            )
        return boundaries

    def read_mask(self, box) -> np.ndarray | None:
        if not self.config["input"]["mask_key"]:
            return None
        return self.read_input("mask", box).astype(bool, copy=False)


class InputError(ValueError):
    """An input dataset cannot be used: wrong shape, dtype, dimensionality, or empty."""


def load_context(config_path: str) -> RunContext:
    """The context of a config file, cached per process while the file stays the same.

    Raises ConfigError for a bad config and InputError, FileNotFoundError or KeyError for
    unusable inputs, each naming the problem.
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
    shape = tuple(inputs[reference_role(inputs)]["shape"])
    output_path = Path(config["output"]["path"])
    work_dir = Path(config["output"]["work_dir"] or f"{output_path}.work")
    return RunContext(
        config_path=str(config_path),
        config=config,
        shape=shape,
        blocking=Blocking(shape, tuple(config["blocking"]["block_shape"])),
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
        with opened_volume(config["input"]["path"], key) as volume:
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
    role = reference_role(inputs)
    reference = inputs[role]
    what = "boundary map" if role == "boundaries" else "raw data"
    name = f"{reference['path']}:{reference['key']}"
    if len(reference["shape"]) != 3:
        raise InputError(f"{what} {name} must be 3D (z, y, x), got shape {tuple(reference['shape'])}")
    if 0 in reference["shape"]:
        raise InputError(f"{what} {name} is empty (shape {tuple(reference['shape'])})")
    if role == "boundaries" and not np.issubdtype(np.dtype(reference["dtype"]), np.floating):
        raise InputError(f"boundary map {name} must be float with values in [0, 1], got dtype {reference['dtype']}")
    if "raw" in inputs and not (
        np.issubdtype(np.dtype(inputs["raw"]["dtype"]), np.unsignedinteger) or np.issubdtype(np.dtype(inputs["raw"]["dtype"]), np.floating)
    ):
        raise InputError(f"raw data {inputs['raw']['key']} must be unsigned integer or float in [0, 1], got dtype {inputs['raw']['dtype']}")
    for other, description in inputs.items():
        if description["shape"] != reference["shape"]:
            raise InputError(
                f"{other} dataset {description['key']} has shape {tuple(description['shape'])}, "
                f"but the {what} has shape {tuple(reference['shape'])}"
            )
    for role in ("supervoxels", "lifted_labels"):
        if role in inputs and not np.issubdtype(np.dtype(inputs[role]["dtype"]), np.integer):
            raise InputError(f"{role.replace('_', ' ')} dataset {inputs[role]['key']} must hold integer ids, got dtype {inputs[role]['dtype']}")
    if "mask" in inputs and not (
        np.issubdtype(np.dtype(inputs["mask"]["dtype"]), np.integer) or np.dtype(inputs["mask"]["dtype"]) == bool
    ):
        raise InputError(f"mask dataset {inputs['mask']['key']} must be boolean or integer, got dtype {inputs['mask']['dtype']}")
