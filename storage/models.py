"""Model files and training checkpoints: atomic writes, safe loads, the shipped model.

Files are written under a temporary name in the same folder and renamed, so a killed training run
never leaves a torn checkpoint or model; loads use `weights_only=True`, so opening a model file
runs no pickled code.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from emflow.errors import ConfigError
from emflow.model_choice import ModelDomain, choose_model

if TYPE_CHECKING:
    from emflow.model import TrainedModel
    from emflow.unet import UNetConfig

# torch, and emflow.model and emflow.unet built on it, are imported where a model file is read or
# written: every run imports this module (for describe_model and file_digest), and a run without a
# model, such as a cron tick with nothing to do, should not pay torch's import (1.2 s of the 4 s
# no-op rerun of a 20,480-block run).

SHIPPED_MODEL_NAME = "flyem_fib_affinities.pt"
CHECKPOINT_PATTERN = re.compile(r"^iteration_(\d{8})\.pt$")


def shipped_models_folder() -> Path:
    return Path(str(resources.files("emflow") / "data" / "models"))


def shipped_model_path(name: str = SHIPPED_MODEL_NAME) -> Path:
    """A model shipped with the package (see its model card beside it); by default the one trained
    by emflow on the FlyEM medulla dev cube (10 nm FIB-SEM)."""
    return shipped_models_folder() / name


def model_domain(path: str | Path) -> ModelDomain:
    """Name (the file name), training voxel size and modality of a model file (`describe_model`:
    read once per process while the file stays the same)."""
    description = describe_model(path)
    return ModelDomain(Path(path).name, description.resolution, description.modality)


def shipped_models() -> list[ModelDomain]:
    """Descriptions of every model shipped with the package, by file name; for `emflow.model_choice.choose_model`
    (its choice's `name` is the file name `shipped_model_path` takes)."""
    return [model_domain(path) for path in sorted(shipped_models_folder().glob("*.pt"))]


def shipped_model_for(resolution) -> Path:
    """The shipped model trained closest to the voxel size (z, y, x) in nm (`emflow.model_choice.choose_model`),
    what `[predict] model = "auto"` means; raises NoSuitableModel, naming every shipped model, when none
    is within 2x along every axis."""
    return shipped_model_path(choose_model(resolution, shipped_models()).name)


def atomic_torch_save(path: str | Path, payload: Any) -> None:
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        # Saved through a file object: given a file name, torch names the archive's records after
        # it, and the temporary name would make the same payload give different bytes every time.
        with open(temporary, "wb") as file:
            torch.save(payload, file)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def save_model(path: str | Path, model: TrainedModel) -> None:
    atomic_torch_save(path, model.state())


def read_model_state(path: str | Path) -> dict[str, Any]:
    """The raw content of a model file (`TrainedModel.state`), without building the network.

    Deserialising runs no torch computation, so a scheduling process can describe a model this way
    and still fork worker processes safely (forking after torch's OpenMP threads ran can hang the child).
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model file not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for a file that is not a model
        raise ValueError(f"{path} is not an emflow model file: {error}") from error
    if not isinstance(state, dict) or "network_state" not in state:
        raise ValueError(f"{path} is not an emflow model file (no network weights in it)")
    return state


def load_model(path: str | Path) -> TrainedModel:
    """A model file written by `save_model` (`emflow train`); errors name the file and the problem."""
    from emflow.model import TrainedModel

    state = read_model_state(path)
    try:
        return TrainedModel.from_state(state)
    except (KeyError, TypeError, RuntimeError) as error:
        raise ValueError(f"{path} is not a usable emflow model file: {error}") from error


def file_digest(path: str | Path) -> str:
    """SHA-256 of a file's content: what identifies a model in fingerprints."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def checkpoint_path(folder: str | Path, iteration: int) -> Path:
    return Path(folder) / f"iteration_{iteration:08d}.pt"


def latest_checkpoint(folder: str | Path) -> Path | None:
    """The checkpoint with the highest iteration in `folder`, or None."""
    folder = Path(folder)
    if not folder.is_dir():
        return None
    found = sorted(path for path in folder.iterdir() if CHECKPOINT_PATTERN.match(path.name))
    return found[-1] if found else None


def save_checkpoint(folder: str | Path, iteration: int, payload: dict[str, Any], *, keep: int = 2) -> Path:
    """Write a checkpoint atomically, then drop all but the `keep` newest."""
    path = checkpoint_path(folder, iteration)
    atomic_torch_save(path, payload)
    found = sorted(p for p in Path(folder).iterdir() if CHECKPOINT_PATTERN.match(p.name))
    for old in found[:-keep]:
        old.unlink(missing_ok=True)
    return path


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    import torch

    return torch.load(path, map_location="cpu", weights_only=True)


@dataclass(frozen=True)
class ModelDescription:
    """What a scheduling process needs to know of a model file, read without building the network."""

    sha256: str
    network_config: UNetConfig
    patch_shape: tuple[int, int, int]
    target: str = "affinities"
    offsets: tuple[tuple[int, int, int], ...] = ()
    # The training data's voxel size (z, y, x) in nm and modality; None and "" where not recorded.
    resolution: tuple[float, ...] | None = None
    modality: str = ""


def describe_model(path: str | Path) -> ModelDescription:
    """A model file's description, read once per process while the file stays the same."""
    return _describe_model(*_file_key(path))


def cached_model(path: str | Path) -> TrainedModel:
    """A model file's model, loaded once per (worker) process while the file stays the same."""
    return _load_model(*_file_key(path))


def _file_key(path: str | Path) -> tuple[str, int, int]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config key predict.model: model file not found: {path}")
    status = path.stat()
    return str(path), status.st_mtime_ns, status.st_size


@functools.lru_cache(maxsize=4)
def _describe_model(path: str, modified_ns: int, size: int) -> ModelDescription:
    from emflow.unet import UNetConfig

    state = read_model_state(path)
    resolution = state.get("resolution")
    try:
        return ModelDescription(
            file_digest(path),
            UNetConfig(**state["network_config"]),
            tuple(state["patch_shape"]),
            state["target"],
            tuple(tuple(int(step) for step in offset) for offset in state["offsets"]),
            None if resolution is None else tuple(float(value) for value in resolution),
            state.get("modality", ""),
        )
    except (KeyError, TypeError) as error:
        raise ValueError(f"{path} is not a usable emflow model file: {error}") from error


@functools.lru_cache(maxsize=4)
def _load_model(path: str, modified_ns: int, size: int) -> TrainedModel:
    return load_model(path)
