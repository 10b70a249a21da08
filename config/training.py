"""The training config (`emflow train CONFIG`): every section and key, its default and its meaning."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Literal

from emflow.errors import ConfigError

from .schema import Section, key

HEADER = """emflow training configuration (`emflow train CONFIG.toml`): every key, with its default.

As for the workflow config, a file names only what it changes, an unknown key or a value of the
wrong type is an error, and keys marked (required) must be written. Shapes are (z, y, x) in voxels.
`emflow config training-defaults` prints this file."""

NEAREST_NEIGHBOURS = ((-1, 0, 0), (0, -1, 0), (0, 0, -1))


@dataclass(frozen=True)
class DataConfig(Section):
    """The training volumes and the regions trained and validated on."""

    path: str = key("", "Container with the training volumes: an HDF5 file or a zarr group.", required=True)
    raw_key: str = key("", "Raw EM data in `path` (unsigned integers or floats in [0, 1]).", required=True)
    labels_key: str = key(
        "",
        "Instance ground truth in `path`, same shape as raw: integer ids, 0 = boundary or\nbackground (affinity 0 to everything).",
        required=True,
    )
    train_start: tuple[int, int, int] = key(
        [0, 0, 0], "Training region [start, stop) of the volumes; a stop of 0 along an axis means the volume's end.", minimum=0
    )
    train_stop: tuple[int, int, int] = key([0, 0, 0], "End of the training region (see `train_start`).", minimum=0)
    validation_start: tuple[int, int, int] = key(
        [0, 0, 0], "Held-out region for the validation loss (not trained on); all stops 0 = no validation.", minimum=0
    )
    validation_stop: tuple[int, int, int] = key(
        [0, 0, 0],
        "End of the held-out region (see `validation_start`); for a serial-section stack e.g.\n"
        "train_stop = [24, 0, 0], validation_start = [24, 0, 0].",
        minimum=0,
    )
    labels_2d: bool = key(
        False,
        "The labels are 2D per section, their ids NOT linked across sections (e.g. ISBI 2012's ground\n"
        "truth): targets then come from in-plane neighbours only (boundaries: the 4 in-plane neighbours;\n"
        "affinities: offsets must have z step 0; MALIS is refused).",
    )
    resolution: tuple[float, float, float] = key(
        [0.0, 0.0, 0.0],
        "Voxel size (z, y, x) in nm of the training data, recorded in the model so that a workflow\n"
        "can choose a model by the input's voxel size; [0, 0, 0] = not recorded (never chosen automatically).",
    )
    modality: str = key("", 'Imaging modality of the training data (e.g. "FIB-SEM", "ssTEM"), recorded in the model.')

    def check(self, name: str, what: str) -> None:
        if any(self.resolution) and not all(math.isfinite(value) and value > 0 for value in self.resolution):
            raise ConfigError(
                f"{what} data.resolution must be the voxel size in nm (z, y, x), three positive numbers, or [0, 0, 0] (not recorded), "
                f"got {list(self.resolution)}"
            )


@dataclass(frozen=True)
class ModelConfig(Section):
    """The network: a 3D U-Net (emflow/unet.py)."""

    target: Literal["affinities", "boundaries"] = key("affinities", '"affinities" (one channel per offset) or "boundaries" (one channel).')
    offsets: tuple[tuple[int, int, int], ...] = key(
        [[-1, 0, 0], [0, -1, 0], [0, 0, -1], [-3, 0, 0], [0, -3, 0], [0, 0, -3], [-9, 0, 0], [0, -9, 0], [0, 0, -9]],
        "Affinity offsets (z, y, x), each pointing backwards: the three nearest neighbours come first,\n"
        "the long-range ones are an auxiliary task (Lee et al. 2017).",
    )
    depth: int = key(3, "Resolution levels of the U-Net.")
    width: int = key(12, "Feature maps at the first level (doubled per level).")
    pooling: tuple[tuple[int, int, int], ...] = key(
        [[2, 2, 2], [2, 2, 2]], "Per-level pooling factors (depth - 1 of them); use [1, 2, 2] for the first levels of serial-section data."
    )
    two_d_levels: int = key(0, "The first `two_d_levels` levels use in-plane (1, 3, 3) kernels (2D-3D hybrid).")
    norm: Literal["group", "none"] = key("group", '"group" (GroupNorm) or "none".')

    def check(self, name: str, what: str) -> None:
        if self.target == "affinities" and not self.offsets:
            raise ConfigError(f"{what} model.offsets must name at least one offset for an affinity model")
        if len(self.pooling) != self.depth - 1:
            raise ConfigError(f"{what} model.pooling must hold depth - 1 = {self.depth - 1} factor triples, got {len(self.pooling)}")


@dataclass(frozen=True)
class TrainingSection(Section):
    """The optimisation: iterations, patches, loss, checkpoints, logs."""

    output: str = key("", "Folder for checkpoints, the training log and the final model (`model.pt`).", required=True)
    iterations: int = key(2000, "Training iterations (one batch each).")
    batch_size: int = key(1, "Patches per iteration.")
    patch_shape: tuple[int, int, int] = key(
        [32, 96, 96], "Must be divisible by the product of the pooling factors along each axis.", minimum=1
    )
    learning_rate: float = key(0.001, "Adam's learning rate.")
    loss: Literal["bce", "malis", "bce+malis"] = key(
        "bce",
        '"bce" (class-balanced binary cross-entropy), "malis" (constrained MALIS, affinities only) or\n'
        '"bce+malis". MALIS joins at iteration `malis_start`, scaled by `malis_weight`.',
    )
    malis_weight: float = key(1.0, "Weight of the MALIS loss.")
    malis_start: int = key(0, "Iteration at which MALIS joins.")
    checkpoint_every: int = key(100, "Write a checkpoint (atomically) every this many iterations; a run resumes from the last one.")
    log_every: int = key(10, "Log the mean training loss every this many iterations.")
    validate_every: int = key(200, "Log the validation loss every this many iterations.")
    validation_patches: int = key(8, "Fixed patches of the held-out region the validation loss is taken on.")
    seed: int = key(0, "Seed of every random choice (patches, augmentation, initial weights).")
    device: str = key("auto", '"auto" (a CUDA GPU if there is one, else the CPU), "cpu", "cuda", "cuda:1", ...')
    threads: int = key(0, "CPU threads for torch (0 = all cores).")

    def check(self, name: str, what: str) -> None:
        for key_name in ("iterations", "batch_size", "checkpoint_every", "log_every", "validate_every", "validation_patches"):
            if getattr(self, key_name) < 1:
                raise ConfigError(f"{what} training.{key_name} must be at least 1, got {getattr(self, key_name)}")
        if self.learning_rate <= 0 or self.malis_weight < 0 or self.malis_start < 0 or self.threads < 0:
            raise ConfigError(f"{what}s training.learning_rate must be positive and malis_weight, malis_start, threads non-negative")


@dataclass(frozen=True)
class AugmentationConfig(Section):
    """Passed to emflow.augmentation.augment for every training patch (see its docstring)."""

    flip: bool = key(True, "Random flips along every axis.")
    transpose: bool = key(True, "Random in-plane (y, x) transposes.")
    intensity: float = key(0.1, "Largest random change of contrast and brightness.")
    gamma: float = key(0.2, "Largest random change of gamma.")
    elastic_probability: float = key(0.5, "Probability of a smooth elastic deformation.")
    elastic_magnitude: float = key(2.0, "Its largest displacement, voxels.")
    elastic_sigma: float = key(8.0, "Its smoothness, voxels.")
    missing_section_probability: float = key(0.0, "Probability per section of a missing (blank) section.")
    misalignment_probability: float = key(0.0, "Probability of a misalignment jump between sections.")
    misalignment_max_shift: int = key(4, "Its largest in-plane shift, voxels.")
    blur_probability: float = key(0.0, "Probability per section of a blurred section.")
    blur_sigma: float = key(2.0, "Its blur, voxels.")


@dataclass(frozen=True)
class TrainingConfig:
    """An `emflow train` config: one field per section."""

    data: DataConfig
    model: ModelConfig
    training: TrainingSection
    augmentation: AugmentationConfig

    # Keys holding paths, resolved against the config file's folder.
    paths: ClassVar[tuple[tuple[str, str], ...]] = (("data", "path"), ("training", "output"))

    def check(self) -> None:
        """Checks across sections."""
        if self.data.labels_2d and self.model.target == "affinities" and any(offset[0] != 0 for offset in self.model.offsets):
            raise ConfigError(
                "training config key data.labels_2d: labels not linked across sections define no affinities across sections; "
                "use in-plane model.offsets (z step 0) or model.target = 'boundaries'"
            )
        if self.data.labels_2d and "malis" in self.training.loss:
            raise ConfigError(
                "training config key training.loss: MALIS needs affinities across sections, which data.labels_2d labels do not define"
            )
        if "malis" in self.training.loss:
            missing = [offset for offset in NEAREST_NEIGHBOURS if offset not in self.model.offsets]
            if self.model.target != "affinities" or missing:
                raise ConfigError(
                    "training config key training.loss: MALIS needs model.target = 'affinities' with the nearest-neighbour offsets "
                    "[-1, 0, 0], [0, -1, 0], [0, 0, -1]"
                )
