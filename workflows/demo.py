"""The demos: segment real EM from raw data with a shipped model, and score the result.

`run_demo`: a small FIB-SEM crop shipped with the package: raw → affinities from the shipped U-Net
→ boundary map → supervoxels → graph → multicut → segmentation, scored against the crop's ground
truth. The crop lies in the part of the FlyEM dev cube that the shipped model was not trained on
(see its model card).

`run_sstem_demo`: the ISBI 2012 serial-section TEM sections the shipped ssTEM model held out
(24-29), read from the user's copy of the data (its terms allow no redistribution, so the package
ships none), segmented the same way with the model that `[predict] model = "auto"` picks for
50 x 4 x 4 nm, and scored per section with the challenge's measures.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import h5py
import numpy as np
import tifffile
import tomli_w

from emflow.cluster import LocalScheduler, RunReport
from emflow.errors import InputError
from emflow.evaluation import evaluate, isbi2012_scores
from emflow.storage.volumes import open_volume, write_volume
from emflow.targets import atomic_write_text

from .evaluation import evaluate as evaluate_blockwise
from .run import run_workflow

DEMO_BLOCK_SHAPE = [32, 64, 64]


@dataclass
class DemoResult:
    """The demo's run report; its metrics (None when the run failed), also written to `metrics_path`;
    the segmentation as `path:key`, and the config, which `emflow view` takes; the evaluation report's
    page (worst merges and splits drawn) and the run report's preview image, once the run succeeded."""

    report: RunReport
    metrics: dict | None
    segmentation: str
    config_path: Path
    metrics_path: Path
    evaluation_report: Path | None = None
    preview: Path | None = None


def default_demo_dir() -> Path:
    """Where the demo works unless told otherwise: `$XDG_CACHE_HOME/emflow/demo` (else
    `~/.cache/emflow/demo`), so that it never fills the current folder (a checkout, say)."""
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "emflow" / "demo"


def demo_data_path() -> Path:
    return Path(str(resources.files("emflow") / "data" / "demo_crop.h5"))


def write_input_once(input_path: Path, volumes: dict[str, np.ndarray], resolution, chunks) -> None:
    """Write a demo's input zarr group (`volumes` by key) unless it exists. Written under a temporary
    name and renamed, so an interrupted demo never leaves half an input."""
    if input_path.exists():
        return
    partial = input_path.with_name(f".{input_path.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    for key, data in volumes.items():
        write_volume(partial, key, data, resolution=resolution, chunks=chunks)
    os.replace(partial, input_path)


def prepare_demo(out_dir: Path) -> Path:
    """Write the demo's input volumes and config into `out_dir` (once); return the config path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    input_path = out_dir / "demo_input.zarr"
    with h5py.File(demo_data_path(), "r") as demo:
        raw = demo["raw"][...]
        neuron_ids = demo["neuron_ids"][...]
        resolution = [float(value) for value in demo["raw"].attrs["resolution_nm_zyx"]]
    write_input_once(input_path, {"raw": raw, "neuron_ids": neuron_ids}, resolution, DEMO_BLOCK_SHAPE)
    config = {
        "input": {"path": input_path.name, "raw_key": "raw", "resolution": resolution},
        "output": {"path": "demo_segmentation.zarr"},
        "blocking": {"block_shape": DEMO_BLOCK_SHAPE, "halo": [8, 16, 16]},
    }
    config_path = out_dir / "demo.toml"
    atomic_write_text(config_path, tomli_w.dumps(config))
    return config_path


def run_demo(out_dir: str | Path, *, workers: int = 2, **run_options) -> DemoResult:
    """Run the demo in `out_dir` (resumes, or does nothing, where an earlier demo ran) and score it;
    `run_options` go to `run_workflow`."""
    out_dir = Path(out_dir).expanduser().resolve()
    config_path = prepare_demo(out_dir)
    report = run_workflow(config_path, LocalScheduler(workers), **run_options)
    segmentation = f"{out_dir / 'demo_segmentation.zarr'}:segmentation"
    metrics_path = out_dir / "metrics.json"
    if not report.succeeded:
        return DemoResult(report=report, metrics=None, segmentation=segmentation, config_path=config_path, metrics_path=metrics_path)
    with h5py.File(demo_data_path(), "r") as demo:
        groundtruth = demo["neuron_ids"][...]
    volume = open_volume(out_dir / "demo_segmentation.zarr", "segmentation")
    metrics = evaluate(np.asarray(volume[...]), groundtruth)
    atomic_write_text(metrics_path, json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    evaluation_report = out_dir / "evaluation_report"
    evaluated, _ = evaluate_blockwise(
        segmentation,
        f"{out_dir / 'demo_input.zarr'}:neuron_ids",
        raw=f"{out_dir / 'demo_input.zarr'}:raw",
        prediction=f"{out_dir / 'demo_segmentation.zarr'}:boundaries",
        report=evaluation_report,
        workers=workers,
    )
    return DemoResult(
        report=report,
        metrics=metrics,
        segmentation=segmentation,
        config_path=config_path,
        metrics_path=metrics_path,
        evaluation_report=evaluation_report / "report.html" if evaluated.succeeded else None,
        preview=run_report_preview(config_path),
    )


def run_report_preview(config_path: Path) -> Path:
    """Write the run report of a finished demo run (`emflow.workflows.report`); return its preview image."""
    from .report import write_report
    from .segmentation import load_run

    return write_report(load_run(str(config_path))).parent / "run_preview.png"


# The ISBI 2012 training volume: 30 sections of 512 x 512 pixels at 4 x 4 nm, 50 nm apart.
ISBI_RESOLUTION = [50.0, 4.0, 4.0]
ISBI_FILES = ("train-volume.tif", "train-labels-instances-2d.tif")
# The sections the shipped ssTEM model held out (its card: trained on 0-23).
ISBI_HELD_OUT = slice(24, 30)


@dataclass
class SstemDemoResult:
    """The ssTEM demo's run report; its ISBI 2012 scores (`emflow.evaluation.isbi2012_scores`, None
    when the run failed), also written to `metrics_path`; the segmentation as `path:key`, the config."""

    report: RunReport
    scores: dict | None
    segmentation: str
    config_path: Path
    metrics_path: Path
    sections: range
    preview: Path | None = None


def default_isbi_dir() -> Path:
    """`../shared/data/isbi2012` from the current folder: where the repository's shared data lies."""
    return Path("..", "shared", "data", "isbi2012").resolve()


def read_isbi_sections(isbi_dir: Path, sections: slice = ISBI_HELD_OUT) -> tuple[np.ndarray, np.ndarray]:
    """Raw (uint8) and per-section instance labels (uint16, 0 = membrane) of `sections` of the ISBI
    2012 training volume in `isbi_dir`; InputError naming the folder and files when they are missing."""
    paths = [isbi_dir / name for name in ISBI_FILES]
    missing = [path.name for path in paths if not path.is_file()]
    if missing:
        raise InputError(
            f"ISBI 2012 data not found in {isbi_dir} (missing {', '.join(missing)}): give the folder holding "
            f"{' and '.join(ISBI_FILES)} with --isbi DIR"
        )
    pages = list(range(30))[sections]
    raw, labels = (np.asarray(tifffile.imread(path, key=pages)) for path in paths)
    if raw.shape != labels.shape or raw.ndim != 3:
        raise InputError(
            f"{paths[0]} and {paths[1]}: expected two stacks of the same (sections, y, x) shape, got {raw.shape} and {labels.shape}"
        )
    return raw, labels


def prepare_sstem_demo(out_dir: Path, raw: np.ndarray) -> Path:
    """Write the ssTEM demo's input (`raw`, the held-out sections) and config into `out_dir`; return
    the config path. The config names no model: "auto" chooses by the voxel size."""
    out_dir.mkdir(parents=True, exist_ok=True)
    input_path = out_dir / "sstem_input.zarr"
    write_input_once(input_path, {"raw": raw}, ISBI_RESOLUTION, [raw.shape[0], 256, 256])
    config = {
        "input": {"path": input_path.name, "raw_key": "raw", "resolution": ISBI_RESOLUTION},
        "output": {"path": "sstem_segmentation.zarr"},
    }
    config_path = out_dir / "sstem.toml"
    atomic_write_text(config_path, tomli_w.dumps(config))
    return config_path


def run_sstem_demo(out_dir: str | Path, isbi_dir: str | Path | None = None, *, workers: int = 2, **run_options) -> SstemDemoResult:
    """Run the ssTEM demo in `out_dir` on the ISBI 2012 data in `isbi_dir` (default
    `default_isbi_dir()`) and score it per section; `run_options` go to `run_workflow`."""
    out_dir = Path(out_dir).expanduser().resolve()
    isbi_dir = Path(isbi_dir).expanduser().resolve() if isbi_dir else default_isbi_dir()
    raw, labels = read_isbi_sections(isbi_dir)
    config_path = prepare_sstem_demo(out_dir, raw)
    report = run_workflow(config_path, LocalScheduler(workers), **run_options)
    output = out_dir / "sstem_segmentation.zarr"
    metrics_path = out_dir / "sstem_scores.json"
    scores = None
    if report.succeeded:
        scores = isbi2012_scores(np.asarray(open_volume(output, "segmentation")[...]), labels)
        atomic_write_text(metrics_path, json.dumps(scores, indent=2, sort_keys=True) + "\n")
    return SstemDemoResult(
        report=report,
        scores=scores,
        segmentation=f"{output}:segmentation",
        config_path=config_path,
        metrics_path=metrics_path,
        sections=range(ISBI_HELD_OUT.start, ISBI_HELD_OUT.stop),
        preview=run_report_preview(config_path) if report.succeeded else None,
    )
