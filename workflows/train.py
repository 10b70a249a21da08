"""`emflow train CONFIG.toml`: train a boundary or affinity U-Net, resumable from its checkpoints.

The run is reproducible: the data sampling, augmentation and network initialisation draw from
generators seeded by `[training] seed`, and a checkpoint holds every generator's state, so a
run that is killed and resumed takes the same steps as one that was not (on the same device and
thread count: parallel floating-point reductions may differ otherwise).

Files in `[training] output`: `checkpoints/iteration_XXXXXXXX.pt` (the last two), `training_log.jsonl`
(one JSON line per logged iteration: mean losses, validation loss, seconds), and `model.pt`
when training finishes (the file `[predict] model` takes).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from emflow import __version__
from emflow.augmentation import augment
from emflow.config import ConfigError, as_dict, load_training_config
from emflow.model import TrainedModel, model_input_statistics, out_channels_for, resolve_device, scale_raw
from emflow.storage.models import latest_checkpoint, load_checkpoint, save_checkpoint, save_model
from emflow.storage.volumes import opened_volume
from emflow.targets import atomic_write_text
from emflow.training import sample_patch, training_loss
from emflow.unet import UNet3D, UNetConfig, check_patch_shape


@dataclass
class TrainingReport:
    model_path: Path
    iterations: int
    resumed_from: int
    seconds: float
    validation_loss: float | None


def _region(shape, start, stop, name: str, patch_shape) -> tuple[list[int], list[int]]:
    stop = [size if last == 0 else last for last, size in zip(stop, shape)]
    if any(last > size for last, size in zip(stop, shape)):
        raise ConfigError(f"training config: data.{name}_stop {stop} lies outside the volume of shape {tuple(shape)}")
    if any(last - first < size for first, last, size in zip(start, stop, patch_shape)):
        raise ConfigError(f"training config: the {name} region {list(start)}..{stop} is smaller than the patch shape {list(patch_shape)}")
    return list(start), stop


def _read_training_data(config) -> tuple[np.ndarray, np.ndarray]:
    data = config["data"]
    with opened_volume(data["path"], data["raw_key"]) as raw_volume, opened_volume(data["path"], data["labels_key"]) as label_volume:
        if raw_volume.ndim != 3 or tuple(raw_volume.shape) != tuple(label_volume.shape):
            raise ConfigError(
                f"training data: raw {data['raw_key']} (shape {tuple(raw_volume.shape)}) and labels {data['labels_key']} "
                f"(shape {tuple(label_volume.shape)}) must be 3D arrays of the same shape"
            )
        if not np.issubdtype(label_volume.dtype, np.integer):
            raise ConfigError(f"training data: labels {data['labels_key']} must hold integer ids, got {label_volume.dtype}")
        raw = scale_raw(np.asarray(raw_volume[...]))
        labels = np.asarray(label_volume[...]).astype(np.int64)
    if not np.isfinite(raw).all():
        raise ConfigError(f"training data: raw {data['raw_key']} holds NaN or infinite values")
    return raw, labels


def _network_config(config) -> UNetConfig:
    model = config["model"]
    return UNetConfig(
        out_channels=out_channels_for(model["target"], model["offsets"]),
        depth=model["depth"],
        width=model["width"],
        pooling=tuple(tuple(factors) for factors in model["pooling"]),
        two_d_levels=model["two_d_levels"],
        norm=model["norm"],
    )


def _validation_batches(raw, labels, start, stop, patch_shape, count: int, seed: int):
    """Fixed held-out patches (no augmentation), the same in every validation of a run."""
    rng = np.random.default_rng([seed, 1])
    return [sample_patch(raw, labels, start, stop, patch_shape, rng) for _ in range(count)]


def train(config_path: str | Path, *, log: Callable[[str], None] = print) -> TrainingReport:
    # Plain data from here on: checkpoints store it and compare it with the config of a resumed run.
    config = as_dict(load_training_config(config_path))
    training, model_section = config["training"], config["model"]
    network_config = _network_config(config)
    try:
        patch_shape = check_patch_shape(training["patch_shape"], network_config)
    except ValueError as error:
        raise ConfigError(f"training config key training.patch_shape: {error}") from error
    raw, labels = _read_training_data(config)
    train_start, train_stop = _region(raw.shape, config["data"]["train_start"], config["data"]["train_stop"], "train", patch_shape)
    validating = any(config["data"]["validation_stop"])
    if validating:
        validation_start, validation_stop = _region(
            raw.shape, config["data"]["validation_start"], config["data"]["validation_stop"], "validation", patch_shape
        )
    train_box = tuple(slice(first, last) for first, last in zip(train_start, train_stop))
    input_mean, input_std = model_input_statistics(raw[train_box])
    target, offsets = model_section["target"], [tuple(offset) for offset in model_section["offsets"]]
    in_plane = config["data"]["labels_2d"]

    output = Path(training["output"])
    checkpoints = output / "checkpoints"
    log_path = output / "training_log.jsonl"
    output.mkdir(parents=True, exist_ok=True)
    if training["threads"]:
        torch.set_num_threads(training["threads"])
    device = resolve_device(training["device"])
    torch.manual_seed(training["seed"])
    network = UNet3D(network_config).to(device)
    optimizer = torch.optim.Adam(network.parameters(), lr=training["learning_rate"])
    rng = np.random.default_rng(training["seed"])
    start_iteration, seconds_before, last_validation = 0, 0.0, None

    checkpoint = latest_checkpoint(checkpoints)
    if checkpoint is not None:
        state = load_checkpoint(checkpoint)
        if state["config"] != _resumable(config):
            raise ConfigError(
                f"{checkpoints} holds checkpoints of a training run with another config; "
                "choose another [training] output folder or delete that one"
            )
        network.load_state_dict(state["network_state"])
        optimizer.load_state_dict(state["optimizer_state"])
        rng.bit_generator.state = state["numpy_rng_state"]
        torch.set_rng_state(state["torch_rng_state"])
        start_iteration, seconds_before = state["iteration"], state["seconds"]
        last_validation = state.get("validation_loss")
        log(f"emflow train: resuming from {checkpoint.name} (iteration {start_iteration})")
    # Written once the config is known to fit the folder's checkpoints, never over another run's.
    atomic_write_text(output / "training_config.json", json.dumps(config, indent=2))
    _truncate_log(log_path, start_iteration)

    def normalise(batch_raw: np.ndarray) -> torch.Tensor:
        return torch.from_numpy((batch_raw - np.float32(input_mean)) / np.float32(input_std)).to(device)

    def validation_loss() -> float:
        network.eval()
        with torch.no_grad():
            losses = [
                training_loss(
                    network(normalise(patch_raw[None, None])), [patch_labels], target=target, offsets=offsets, loss="bce", in_plane=in_plane
                )[0].item()
                for patch_raw, patch_labels in validation_patches
            ]
        network.train()
        return float(np.mean(losses))

    validation_patches = (
        _validation_batches(raw, labels, validation_start, validation_stop, patch_shape, training["validation_patches"], training["seed"])
        if validating
        else []
    )
    network.train()
    started = time.perf_counter()
    # The training time the model records is the one its last checkpoint holds, so that running a
    # finished config again writes the same model file.
    seconds = seconds_before
    window: list[dict[str, float]] = []
    for iteration in range(start_iteration + 1, training["iterations"] + 1):
        batch_raw, batch_labels = [], []
        for _ in range(training["batch_size"]):
            patch_raw, patch_labels = sample_patch(raw, labels, train_start, train_stop, patch_shape, rng)
            patch_raw, patch_labels = augment(patch_raw, patch_labels, rng, **config["augmentation"])
            batch_raw.append(patch_raw)
            batch_labels.append(patch_labels)
        loss_name = training["loss"]
        if loss_name == "bce+malis" and iteration < training["malis_start"]:
            loss_name = "bce"
        logits = network(normalise(np.stack(batch_raw)[:, None]))
        loss, parts = training_loss(
            logits, batch_labels, target=target, offsets=offsets, loss=loss_name, malis_weight=training["malis_weight"], in_plane=in_plane
        )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        window.append({"loss": float(loss.detach()), **parts})

        entry: dict[str, Any] = {}
        if iteration % training["log_every"] == 0 or iteration == training["iterations"]:
            entry = {name: float(np.mean([item.get(name, np.nan) for item in window])) for name in window[-1]}
            window = []
        if validating and (iteration % training["validate_every"] == 0 or iteration == training["iterations"]):
            last_validation = entry["validation_loss"] = validation_loss()
        if entry:
            entry = {"iteration": iteration, **entry, "seconds": round(seconds_before + time.perf_counter() - started, 2)}
            with open(log_path, "a") as log_file:
                log_file.write(json.dumps(entry) + "\n")
            log(
                "emflow train: "
                + ", ".join(f"{name} {value:.4g}" if isinstance(value, float) else f"{name} {value}" for name, value in entry.items())
            )
        if iteration % training["checkpoint_every"] == 0 or iteration == training["iterations"]:
            seconds = seconds_before + time.perf_counter() - started
            save_checkpoint(
                checkpoints,
                iteration,
                {
                    "config": _resumable(config),
                    "iteration": iteration,
                    "seconds": seconds,
                    "network_state": network.state_dict(),
                    "optimizer_state": optimizer.state_dict(),
                    "numpy_rng_state": rng.bit_generator.state,
                    "torch_rng_state": torch.get_rng_state(),
                    "validation_loss": last_validation,
                },
            )

    model = TrainedModel(
        network=network.cpu().eval(),
        target=target,
        offsets=tuple(offsets) if target == "affinities" else (),
        input_mean=input_mean,
        input_std=input_std,
        patch_shape=patch_shape,
        metadata={
            "emflow_version": __version__,
            "torch_version": str(torch.__version__),
            "training_config": _as_written(config, Path(config_path)),
            "iterations": training["iterations"],
            "training_seconds": round(seconds, 1),
            "device": str(device),
            "threads": torch.get_num_threads(),
            "validation_loss": last_validation,
        },
        resolution=tuple(config["data"]["resolution"]) if any(config["data"]["resolution"]) else None,
        modality=config["data"]["modality"],
    )
    model_path = output / "model.pt"
    save_model(model_path, model)
    return TrainingReport(model_path, training["iterations"], start_iteration, seconds, last_validation)


def _resumable(config: dict) -> dict:
    """The part of the config a checkpoint must agree with to be resumed: all but the run length
    and the logging/checkpoint cadence, which may change between attempts."""
    training = {
        key: value
        for key, value in config["training"].items()
        if key not in ("iterations", "checkpoint_every", "log_every", "validate_every", "threads", "device")
    }
    return {**config, "training": training}


def _as_written(config: dict, config_path: Path) -> dict:
    """The config with its paths relative to the config file again, as a model's provenance: the
    absolute paths of the machine it was trained on mean nothing elsewhere."""
    base = config_path.resolve().parent
    data = {**config["data"], "path": os.path.relpath(config["data"]["path"], base)}
    training = {**config["training"], "output": os.path.relpath(config["training"]["output"], base)}
    return {**config, "data": data, "training": training}


def _truncate_log(log_path: Path, iteration: int) -> None:
    """Drop log lines past the checkpoint a run resumes from: those iterations run again."""
    if not log_path.exists():
        return
    kept = []
    for line in log_path.read_text().splitlines():
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by a kill
        if entry["iteration"] <= iteration:
            kept.append(line)
    atomic_write_text(log_path, "".join(line + "\n" for line in kept))
