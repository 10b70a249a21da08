"""The evaluation workflow: a segmentation scored against ground truth block by block (`emflow evaluate`).

`evaluate` writes an evaluation config into the work folder and runs its stages
(`emflow.tasks.evaluation`) on the local scheduler; the result is the JSON document the command
prints: the metrics of `emflow.evaluation.evaluate` and more (`metrics_from_overlaps`, skeleton
metrics), the worst errors, and a one-line judgement.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import stat
import tempfile
from pathlib import Path

import tomli_w

from emflow.cluster import LocalScheduler, RunReport, run_on
from emflow.config import AUTO, EvaluationConfig, load_evaluation_config
from emflow.errors import ConfigError, InputError
from emflow.evaluation import judgement
from emflow.storage.geometry import resolve_geometry
from emflow.storage.inputs import InputDataset, describe_inputs
from emflow.storage.layout import Layout
from emflow.storage.store import Store
from emflow.storage.volumes import opened_volume, parse_location, read_resolution
from emflow.tasks.adapter import Workflow, use_workers
from emflow.tasks.context import Run
from emflow.tasks.evaluation import evaluation_stages

from .status import progress_reporter


def load_run(config_path: str) -> Run:
    """The evaluation run of an evaluation config, cached per process while the file stays the same."""
    status = os.stat(config_path)
    if not stat.S_ISREG(status.st_mode):
        raise ConfigError(f"evaluation config file not found: {config_path}")
    return _run(config_path, status.st_mtime_ns, status.st_size)


@functools.lru_cache(maxsize=4)
def _run(config_path: str, modified_ns: int, size: int) -> Run:
    config: EvaluationConfig = load_evaluation_config(config_path)
    inputs: dict[str, InputDataset] = {}
    for role in ("segmentation", "groundtruth", "raw", "prediction"):
        location = getattr(config.volumes, role)
        if location:
            path, key = parse_location(location)
            inputs |= describe_inputs(path, {role: key})
    segmentation = inputs["segmentation"]
    for role, dataset in inputs.items():
        if dataset.shape[-3:] != segmentation.shape:
            raise InputError(
                f"{role} {dataset.location} has shape {dataset.shape}, the segmentation {segmentation.location} {segmentation.shape}"
            )
    section = config.evaluation
    geometry = resolve_geometry(segmentation.shape, section.resolution, section.block_shape, (0, 0, 0), segmentation.chunks)
    work_dir = Path(section.work_dir)
    layout = Layout(work_dir / "unused-output.zarr", work_dir)  # the evaluation writes no output group
    stages = evaluation_stages(section.skeleton_metrics, bool(config.volumes.skeletons))
    return Run(config_path, config, inputs, geometry, layout, Store(layout, inputs, {}), stages)


EVALUATION = Workflow("evaluation", load_run)


def recorded_resolution(location: str) -> tuple[float, ...] | None:
    """The voxel size a dataset records (OME-Zarr metadata or a resolution attribute), if any."""
    with opened_volume(*parse_location(location)) as volume:
        return read_resolution(volume)


def evaluate(
    segmentation: str,
    groundtruth: str,
    *,
    resolution=None,
    workers: int = 1,
    report: str | Path | None = None,
    raw: str = "",
    prediction: str = "",
    skeletons: str | Path | None = None,
    skeleton_metrics: bool = True,
    block_shape=AUTO,
    work_dir: str | Path | None = None,
) -> tuple[RunReport, dict | None]:
    """Score `segmentation` against `groundtruth` (`path:key` locations) block by block; return
    the run's report and, if it succeeded, the result: the metrics, the judgement and the worst
    merges and splits with their positions (all per-body errors are in the report's report.json).

    The voxel size comes from `resolution`, else from the segmentation's metadata. Without a
    `work_dir`, a temporary one is used and removed; with one, a killed evaluation resumes.
    """
    resolution = resolution or recorded_resolution(segmentation)
    if not resolution:
        raise ConfigError(f"the voxel size of {segmentation} is not recorded in its metadata: give it with --resolution Z Y X (nm)")
    temporary = work_dir is None
    work_dir = Path(tempfile.mkdtemp(prefix="emflow-evaluate-") if temporary else work_dir).resolve()
    try:
        work_dir.mkdir(parents=True, exist_ok=True)
        config = {
            "volumes": {
                "segmentation": segmentation,
                "groundtruth": groundtruth,
                "raw": raw,
                "prediction": prediction,
                "skeletons": str(skeletons or ""),
            },
            "evaluation": {
                "resolution": [float(value) for value in resolution],
                "block_shape": block_shape if block_shape == AUTO else list(block_shape),
                "skeleton_metrics": skeleton_metrics,
                "report": str(Path(report).resolve()) if report else "",
                "work_dir": str(work_dir),
            },
        }
        config_path = work_dir / "evaluate.toml"
        config_path.write_text(tomli_w.dumps(config))
        run = load_run(str(config_path))
        use_workers(workers)
        result = run_on(
            LocalScheduler(workers),
            [EVALUATION.root_task(str(config_path))],
            work_dir=work_dir,
            scheduler_log=run.layout.scheduler_log,
            progress=progress_reporter(str(config_path), workflow=EVALUATION),
            worker_command=[],
            job_name="emflow-evaluate",
        )
        if not result.succeeded:
            return result, None
        document = json.loads((work_dir / "evaluation.json").read_text())
        metrics, errors = document["metrics"], document["errors"]
        return result, {
            **metrics,
            "judgement": judgement(metrics),
            "worst_merges": errors["worst_merges"],
            "worst_splits": errors["worst_splits"],
        }
    finally:
        if temporary:
            shutil.rmtree(work_dir, ignore_errors=True)
