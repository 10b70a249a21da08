"""The evaluation config: what `emflow evaluate` writes into its work folder and runs as a workflow."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Literal

from emflow.errors import ConfigError

from .run import SchedulingConfig
from .schema import AUTO, Section, key

HEADER = """emflow evaluation: a segmentation scored against ground truth, block by block (`emflow evaluate`)."""


@dataclass(frozen=True)
class EvaluatedVolumes(Section):
    """The volumes compared; locations are `path:key` of zarr or HDF5 datasets."""

    segmentation: str = key("", "The segmentation under test.", required=True)
    groundtruth: str = key("", "The ground truth (0 = unlabelled, ignored).", required=True)
    raw: str = key("", "Raw data, shown in the report's slice views (optional).")
    prediction: str = key("", "A boundary map, shown in the report's slice views (optional).")
    skeletons: str = key("", 'Ground-truth skeletons, an .npz file (`emflow.storage.skeletons`); "" = computed from the ground truth.')


@dataclass(frozen=True)
class EvaluationSection(Section):
    """How to evaluate."""

    resolution: tuple[float, float, float] = key((), "Voxel size in nm (z, y, x).", required=True)
    block_shape: tuple[int, int, int] | Literal["auto"] = key(AUTO, 'Blocks evaluated by one task each ("auto": as for a run).', minimum=1)
    skeleton_metrics: bool = key(True, "Compute expected run length and merges and splits along ground-truth skeletons.")
    report: str = key("", 'Folder for report.html, report.json and figures ("" = no report).')
    work_dir: str = key("", "Folder for partial results and records.", required=True)

    def check(self, name: str, what: str) -> None:
        if not all(math.isfinite(value) and value > 0 for value in self.resolution):
            raise ConfigError(f"{what} evaluation.resolution must be three positive numbers (z, y, x), got {list(self.resolution)}")


@dataclass(frozen=True)
class EvaluationConfig:
    volumes: EvaluatedVolumes
    evaluation: EvaluationSection
    scheduling: SchedulingConfig

    paths: ClassVar[tuple[tuple[str, str], ...]] = (("evaluation", "report"), ("evaluation", "work_dir"), ("volumes", "skeletons"))

    def check(self) -> None:
        """Checks across sections: none."""
