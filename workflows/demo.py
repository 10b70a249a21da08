"""The demo: segment a small real FIB-SEM crop shipped with the package, from raw data, and score it.

raw → affinities from the shipped U-Net → boundary map → supervoxels → graph → multicut →
segmentation, scored against the crop's ground truth. The crop lies in the part of the FlyEM dev
cube that the shipped model was not trained on (see its model card).
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
import tomli_w

from emflow.cluster import LocalScheduler, RunReport
from emflow.evaluation import evaluate
from emflow.storage.volumes import open_volume, write_volume
from emflow.targets import atomic_write_text

from .run import run_workflow

DEMO_BLOCK_SHAPE = [32, 64, 64]


@dataclass
class DemoResult:
    """The demo's run report; its metrics (None when the run failed), also written to `metrics_path`;
    the segmentation as `path:key`, and the config, which `emflow view` takes."""

    report: RunReport
    metrics: dict | None
    segmentation: str
    config_path: Path
    metrics_path: Path


def default_demo_dir() -> Path:
    """Where the demo works unless told otherwise: `$XDG_CACHE_HOME/emflow/demo` (else
    `~/.cache/emflow/demo`), so that it never fills the current folder (a checkout, say)."""
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "emflow" / "demo"


def demo_data_path() -> Path:
    return Path(str(resources.files("emflow") / "data" / "demo_crop.h5"))


def prepare_demo(out_dir: Path) -> Path:
    """Write the demo's input volumes and config into `out_dir` (once); return the config path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    input_path = out_dir / "demo_input.zarr"
    with h5py.File(demo_data_path(), "r") as demo:
        raw = demo["raw"][...]
        neuron_ids = demo["neuron_ids"][...]
        resolution = [float(value) for value in demo["raw"].attrs["resolution_nm_zyx"]]
    if not input_path.exists():
        # Written under a temporary name and renamed, so an interrupted demo never leaves half an input.
        partial = out_dir / f".{input_path.name}.partial"
        shutil.rmtree(partial, ignore_errors=True)
        write_volume(partial, "raw", raw, resolution=resolution, chunks=DEMO_BLOCK_SHAPE)
        write_volume(partial, "neuron_ids", neuron_ids, resolution=resolution, chunks=DEMO_BLOCK_SHAPE)
        os.replace(partial, input_path)
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
    metrics = None
    if report.succeeded:
        with h5py.File(demo_data_path(), "r") as demo:
            groundtruth = demo["neuron_ids"][...]
        volume = open_volume(out_dir / "demo_segmentation.zarr", "segmentation")
        metrics = evaluate(np.asarray(volume[...]), groundtruth)
        atomic_write_text(metrics_path, json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    return DemoResult(report=report, metrics=metrics, segmentation=segmentation, config_path=config_path, metrics_path=metrics_path)
