"""Inference throughput of the U-Net: one bare forward pass, the sliding-window patches, and `emflow predict`.

The volume is a crop of the raw data of the FlyEM medulla dev cube
(../shared/data/flyem_medulla_dev/volume.h5, 10 nm isotropic; see its SOURCE.md): 112x224x224
(5.6 MVox; `--quick`: 56x112x224). Throughput does not depend on what the crop shows, so it is
taken from the corner of the cube. The model is the shipped one
(emflow/data/models/flyem_fib_affinities.pt) unless `--model` names another.

Measured on the CPU, and on the first CUDA GPU when torch sees one (else reported as "no GPU"),
each the median of `--repeats` runs (default 3; `--quick`: 1), alternating:
a) bare: one forward pass of the model on the whole crop as a single patch, through the same
   `TrainedModel.predictor` the workflow uses (torch.inference_mode, eval mode, autocast on a GPU,
   sigmoid, copy back to numpy). Normalisation of the raw data is done beforehand and not timed.
b) patches: the forward passes over every patch of the sliding-window grid the workflow uses
   (`emflow.inference.PatchGrid` with `--patch-shape` / `--overlap`), one batch of `--batch-size`
   patches per call, the patches cut out beforehand: network time only, no blending, no IO. Its
   extra time over (a) is the cost of the patches' overlap (patch voxels / volume voxels) and of
   the patch size itself.
b') blended in memory: `emflow.inference.predict_box` over the whole crop (mirrored reads from the
   in-memory array, the patches, their sums weighted by Gaussians normalised on the grid) plus the
   affinity-derived boundary map: (b) plus the blending, without IO or orchestration.
c) `emflow predict CONFIG --workers 1` on the crop stored as a zarr array (chunks = blocks), with
   the same patch grid and blocks of `--block-shape`: the block tasks `predict` (run the patches
   a block owns, save their weighted sums) and `blend_predictions` (add the neighbours' sums to
   its own, write the `predictions` (the default dtype, uint8) and `boundaries` arrays). Reported two ways: the seconds the
   tasks recorded, summed (raw data read, normalisation, model loading and the first, cold
   forward pass of the process, patches, blending, IO); and the wall time of the process, start
   to exit (adds interpreter start-up, imports and Luigi's scheduling).
m) MONAI: `monai.inferers.sliding_window_inference` on the in-memory crop with the same predictor,
   patch shape, stride (overlap as a fraction of the patch) and Gaussian blending (sigma_scale
   0.125 = patch / 8), plus the boundary map: the standard sliding-window loop, beside (b'). It
   places its patches from the volume's corner and the last flush with its end instead of
   mirroring past it; for the crops and grids here it runs as many patches as emflow. Skipped
   (reported as "not installed") when MONAI is missing: `pip install monai`, a wheel needing only
   torch and numpy.

The benchmark process keeps freed memory for reuse (`emflow.tasks.adapter.reuse_freed_memory`), as
`emflow predict`'s workers do, so that every contender allocates alike. (a), (b) and (m) are
warmed up with one untimed pass of each shape before the first repeat; (c) starts a fresh process
each time, so its model loading and first pass are part of what it measures, on a machine at rest:
the benchmark process hands the memory it kept back to the system and waits `SETTLE_SECONDS`
first (`run_emflow_predict`). Torch
uses its default number of threads in the benchmark process and in `emflow predict` (one worker
process sets no thread count); the count is reported. The goal of the issue is that blending + IO,
measured inside each `emflow predict` run as the two stages' spans (each from its first block's
start to its last record, so with the writes the stages do behind their blocks) less the forward
passes the tasks made (`predict` records them: `network_seconds`), stay within 10 % of the bare
pass (a). Measured
across runs instead, (c tasks) - (b) also holds the first, cold pass and the run-to-run difference
of the forward passes, which on a shared 2-core machine exceeds the effect (the runs of (a) and
(b) are given with their spread); both are reported, and the table gives the ratios to read them
with and without the patches' overlap.

Usage: python -m benchmarks.inference [--quick] [--model PATH] [--patch-shape Z Y X] [--overlap Z Y X]
                                      [--block-shape Z Y X] [--batch-size N] [--repeats N] [--json PATH]
Prints a Markdown section and writes benchmarks/results/inference.json.
"""

from __future__ import annotations

import argparse
import ctypes
import itertools
import math
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

import h5py
import numpy as np
import tomli_w
import torch

from emflow.config import default_config
from emflow.inference import PatchGrid, predict_box, read_mirrored
from emflow.model import TrainedModel
from emflow.storage.models import file_digest, load_model, shipped_model_path
from emflow.storage.volumes import write_volume
from emflow.tasks.adapter import reuse_freed_memory
from emflow.unet import check_patch_shape

# The module, not its names: one import list for both ways the file is run.
try:
    from benchmarks import end_to_end
except ImportError:  # run as a script: benchmarks/ itself is on sys.path
    import end_to_end

BENCHMARKS_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCHMARKS_DIR / "results"
# As tests/conftest.py: the shared data folder beside the repository.
SOURCE_PATH = BENCHMARKS_DIR.parents[1] / "shared" / "data" / "flyem_medulla_dev" / "volume.h5"

CROP_SHAPE = (112, 224, 224)
QUICK_CROP_SHAPE = (56, 112, 224)
# Larger than the model's training patch (32x96x96): on a CPU a bigger patch runs as fast per voxel
# and wastes less on overlap. The crops are multiples of the patch stride plus the overlap, so the
# grid covers them without a mostly-mirrored extra row of patches.
PATCH_SHAPE = (64, 128, 128)
OVERLAP = (8, 16, 16)
BLOCK_SHAPE = (64, 128, 128)
BATCH_SIZE = 1
REPEATS = 3
GOAL_BLENDING_AND_IO = 0.10
# The workflow stages that make up `emflow predict` (prepare_output only creates empty arrays).
PREDICTION_STAGES = ("prepare_output", "predict", "blend_predictions")


def load_crop(shape: tuple[int, int, int]) -> tuple[np.ndarray, tuple[float, ...]]:
    """The raw data of the dev cube's corner of `shape`, and its voxel size in nm."""
    with h5py.File(SOURCE_PATH, "r") as source:
        dataset = source["raw"]
        if any(size > available for size, available in zip(shape, dataset.shape)):
            raise ValueError(f"crop {shape} does not fit into the dev cube {dataset.shape}")
        return dataset[tuple(slice(0, size) for size in shape)], tuple(float(value) for value in dataset.attrs["resolution_nm_zyx"])


def resolve_model_path(model: Path | None) -> Path:
    path = Path(model) if model else shipped_model_path()
    if not path.is_file():
        raise SystemExit(f"no model file at {path}; train one (emflow train) or pass --model PATH")
    return path.resolve()


def model_description(path: Path, model: TrainedModel) -> dict:
    return {
        "path": str(path),
        "sha256": file_digest(path),
        "target": model.target,
        "channels": model.out_channels,
        "network": model.network.config.as_dict(),
        "training_patch_shape": list(model.patch_shape),
        "metadata": model.metadata,
    }


def timed(action: Callable[[], object]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def grid_patches(network_input: np.ndarray, grid: PatchGrid) -> list[np.ndarray]:
    """Every patch of the grid, cut out (mirrored past the volume) as float32 (1, z, y, x)."""
    patches = []
    for origin in itertools.product(*(grid.origins(axis) for axis in range(3))):
        stop = [first + size for first, size in zip(origin, grid.patch_shape)]
        patches.append(read_mirrored(network_input, origin, stop)[None])
    return patches


def run_patches(predictor, patches: list[np.ndarray], batch_size: int) -> None:
    for first in range(0, len(patches), batch_size):
        predictor(np.stack(patches[first : first + batch_size]))


def monai_sliding_window(model: TrainedModel, predictor, network_input: np.ndarray, grid: PatchGrid, batch_size: int):
    """(m) of the module docstring as a callable returning the boundary map, and the number of
    patches MONAI runs; None when MONAI is not installed."""
    try:
        from monai.inferers import sliding_window_inference
    except ImportError:
        return None
    # MONAI's stride is int(patch * (1 - overlap fraction)): half a voxel less overlap keeps rounding
    # from taking a voxel off the stride.
    overlap = [(overlap - 0.5) / patch if overlap else 0.0 for overlap, patch in zip(grid.overlap, grid.patch_shape)]
    whole = torch.from_numpy(network_input[None, None])
    patches = []

    def predict(batch: torch.Tensor) -> torch.Tensor:
        patches.append(batch.shape[0])
        return torch.from_numpy(predictor(batch.numpy()))

    def run() -> np.ndarray:
        probabilities = sliding_window_inference(
            whole, grid.patch_shape, batch_size, predict, overlap=overlap, mode="gaussian", sigma_scale=0.125
        )
        return model.boundaries(probabilities[0].numpy())

    run()  # counts the patches, and is the warm-up pass
    return run, sum(patches)


def predict_config(
    run_dir: Path, input_path: Path, model_path: Path, resolution, block_shape, grid: PatchGrid, batch_size: int, device: str
) -> Path:
    """The config of `emflow predict` on the raw crop: the benchmark's grid and blocks, defaults otherwise."""
    defaults = default_config()
    config = {
        "input": {"path": str(input_path), "raw_key": "raw", "resolution": list(resolution)},
        "output": {"path": str(run_dir / "prediction.zarr")},
        "blocking": {"block_shape": list(block_shape), "halo": defaults["blocking"]["halo"]},
        "multicut": {"beta": defaults["multicut"]["beta"], "solver": defaults["multicut"]["solver"]},
        "predict": {
            "model": str(model_path),
            "patch_shape": list(grid.patch_shape),
            "overlap": list(grid.overlap),
            "batch_size": batch_size,
            "device": device,
            "precision": "auto",
            "output_dtype": defaults["predict"]["output_dtype"],
        },
    }
    config_path = run_dir / f"predict_{device}.toml"
    config_path.write_text(tomli_w.dumps(config))
    return config_path


# Seconds the machine is left to settle after the benchmark process hands back its freed memory,
# before an `emflow predict` run (`run_emflow_predict`).
SETTLE_SECONDS = 3.0


def release_freed_memory() -> None:
    """Hand the memory this process keeps for reuse (`reuse_freed_memory`: GBs after the
    contenders' passes) back to the system (glibc `malloc_trim`); nothing where malloc is not glibc's."""
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):
        pass


def run_emflow_predict(config_path: Path, run_dir: Path) -> dict:
    """One `emflow predict` from scratch: process wall time, its peak RSS, the task seconds by
    stage and each stage's span (first block's start to last record).

    Started on a machine at rest: the memory the benchmark process kept from its own passes goes
    back to the system `SETTLE_SECONDS` before (`release_freed_memory`). A user's `emflow predict`
    does not run beside a process holding GBs of freed memory, and here that changed what the run
    measures: new file data (the sums, the outputs) takes new memory, which this project's VMs get
    from their host slowly where little free memory is left in small pieces (emflow.targets.atomic).
    Under a parent process that ran a bare pass and kept its memory, the two stages spent 0.68-0.71 s
    beside their forward passes under one of three such parents (0.39-0.41 s under the others);
    under parents that handed it back 3 s before, 0.39-0.45 s under all three (two runs each)."""
    for path in (run_dir / "prediction.zarr", run_dir / "prediction.zarr.work"):
        shutil.rmtree(path, ignore_errors=True)
    release_freed_memory()
    time.sleep(SETTLE_SECONDS)
    log_path = run_dir / f"{config_path.stem}.log"
    measurement = end_to_end.run_measured([sys.executable, "-m", "emflow", "predict", str(config_path), "--workers", "1"], log_path)
    if measurement.exit_code != 0:
        raise SystemExit(f"emflow predict failed (exit code {measurement.exit_code}); see {log_path}")
    stage_seconds = end_to_end.emflow_task_seconds(run_dir / "prediction.zarr.work")
    spans = end_to_end.emflow_block_stage_spans(run_dir / "prediction.zarr.work")
    return {
        "wall_seconds": measurement.wall_seconds,
        "max_rss_bytes": measurement.max_rss_bytes,
        "machine": measurement.machine,
        "task_seconds_by_stage": {stage: stage_seconds.get(stage, 0.0) for stage in PREDICTION_STAGES},
        "task_seconds": sum(stage_seconds.get(stage, 0.0) for stage in PREDICTION_STAGES),
        "span_seconds": sum(spans.get(stage, 0.0) for stage in PREDICTION_STAGES),
        # The forward passes inside the `predict` tasks (the first, cold one included).
        "network_seconds": end_to_end.emflow_task_seconds(run_dir / "prediction.zarr.work", ("network_seconds",)).get("predict", 0.0),
    }


def measure_device(
    device: str,
    model: TrainedModel,
    network_input: np.ndarray,
    grid: PatchGrid,
    batch_size: int,
    repeats: int,
    config_path: Path,
    run_dir: Path,
) -> dict:
    """Measurements (a), (b), (b') and (c) of the module docstring on one device."""
    predictor = model.predictor(device, "auto")
    whole = network_input[None, None]
    patches = grid_patches(network_input, grid)
    measurements = {
        "bare": lambda: predictor(whole),
        "patches": lambda: run_patches(predictor, patches, batch_size),
        "blended_in_memory": lambda: model.boundaries(
            predict_box(predictor, network_input, grid, (0, 0, 0), network_input.shape, batch_size=batch_size)
        ),
    }
    print(f"{device}: warming up ...", flush=True)
    monai = monai_sliding_window(model, predictor, network_input, grid, batch_size)
    monai_patches = None
    if monai is not None:
        measurements["monai"], monai_patches = monai
    # The first passes of a process pay one-off costs (kernel selection, allocations); recorded
    # because every `emflow predict` process pays them too.
    warm_up_seconds = {"bare": timed(lambda: predictor(whole)), "patch": timed(lambda: predictor(patches[0][None]))}
    seconds = {name: [] for name in measurements}
    # What the machine did during each pass (`machine_shares`): on a shared virtual machine the
    # bare pass moved by a third between sittings.
    machine = {name: [] for name in measurements}
    workflow_runs = []
    for repeat in range(1, repeats + 1):
        for name, action in measurements.items():
            with end_to_end.machine_during() as shares:
                seconds[name].append(timed(action))
            machine[name].append(shares)
            print(f"{device} run {repeat}/{repeats}: {name} {seconds[name][-1]:.2f} s", flush=True)
        workflow_runs.append(run_emflow_predict(config_path, run_dir))
        print(
            f"{device} run {repeat}/{repeats}: emflow predict {workflow_runs[-1]['wall_seconds']:.2f} s wall, "
            f"{workflow_runs[-1]['task_seconds']:.2f} s in tasks",
            flush=True,
        )
    medians = {name: statistics.median(values) for name, values in seconds.items()}
    medians["workflow_tasks"] = statistics.median(run["task_seconds"] for run in workflow_runs)
    medians["workflow_wall"] = statistics.median(run["wall_seconds"] for run in workflow_runs)
    medians["workflow_network"] = statistics.median(run["network_seconds"] for run in workflow_runs)
    # What the stages add to their own forward passes, per run: measured within one run, it does not
    # carry the difference between the forward passes of separate runs, as (c) - (b) does. The
    # stages' spans, not their task seconds: the stages write behind their blocks, so a block's
    # writes overlap the next block's work (`StageSpec.writes_behind`).
    beside_network = [run["span_seconds"] - run["network_seconds"] for run in workflow_runs]
    bare, patches_only = medians["bare"], medians["patches"]
    monai_overheads = (
        {
            "monai_over_bare": medians["monai"] / bare - 1,
            "workflow_tasks_over_monai": medians["workflow_tasks"] / medians["monai"] - 1,
            "blended_in_memory_over_monai": medians["blended_in_memory"] / medians["monai"] - 1,
        }
        if monai is not None
        else {}
    )
    return {
        "device": str(predictor.device),
        "device_name": torch.cuda.get_device_name(predictor.device)
        if predictor.device.type == "cuda"
        else end_to_end.machine_description()["cpu_model"],
        "precision": predictor.precision,
        "warm_up_seconds": warm_up_seconds,
        "seconds": seconds,
        "machine": machine,
        "monai_patches": monai_patches,
        "workflow_runs": workflow_runs,
        "median_seconds": medians,
        "overheads": {
            # Everything the workflow adds to one bare pass, and what it adds to the patches alone.
            "workflow_tasks_over_bare": medians["workflow_tasks"] / bare - 1,
            "workflow_wall_over_bare": medians["workflow_wall"] / bare - 1,
            "workflow_tasks_over_patches": medians["workflow_tasks"] / patches_only - 1,
            "workflow_wall_over_patches": medians["workflow_wall"] / patches_only - 1,
            "patches_over_bare": patches_only / bare - 1,
            "blending_in_memory_over_bare": (medians["blended_in_memory"] - patches_only) / bare,
            # The goal: blending + IO, as a fraction of the bare pass; measured inside the
            # runs (the stages' spans less their forward passes), and as (c tasks) - (b).
            "blending_and_io_over_bare": statistics.median(beside_network) / bare,
            "blending_and_io_runs_over_bare": [seconds / bare for seconds in beside_network],
            "tasks_less_patches_over_bare": (medians["workflow_tasks"] - patches_only) / bare,
            "blending_io_and_orchestration_over_bare": (medians["workflow_wall"] - patches_only) / bare,
            **monai_overheads,
        },
    }


def run(
    quick: bool = False,
    model: Path | None = None,
    *,
    patch_shape: tuple[int, int, int] = PATCH_SHAPE,
    overlap: tuple[int, int, int] = OVERLAP,
    block_shape: tuple[int, int, int] = BLOCK_SHAPE,
    batch_size: int = BATCH_SIZE,
    repeats: int | None = None,
) -> dict:
    """Run the benchmark (see the module docstring) and return its results."""
    # As `emflow predict`'s workers do, so that the passes of (a), (b), (b') and (m) allocate alike.
    reuse_freed_memory()
    repeats = repeats or (1 if quick else REPEATS)
    crop_shape = QUICK_CROP_SHAPE if quick else CROP_SHAPE
    model_path = resolve_model_path(model)
    trained_model = load_model(model_path)
    check_patch_shape(crop_shape, trained_model.network.config)  # the bare pass runs the crop as one patch
    patch_shape = check_patch_shape(patch_shape, trained_model.network.config)
    grid = PatchGrid(crop_shape, patch_shape, overlap)
    block_shape = tuple(min(block, size) for block, size in zip(block_shape, crop_shape))
    raw, resolution = load_crop(crop_shape)
    network_input = trained_model.normalize(raw)
    volume_voxels = math.prod(crop_shape)
    patch_voxels = grid.number_of_patches() * math.prod(patch_shape)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])

    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    run_dir = Path(tempfile.mkdtemp(prefix="inference-", dir=RESULTS_DIR))
    try:
        input_path = run_dir / "input.zarr"
        write_volume(input_path, "raw", raw, resolution=resolution, chunks=block_shape)
        by_device = {}
        for device in devices:
            config_path = predict_config(run_dir, input_path, model_path, resolution, block_shape, grid, batch_size, device)
            by_device[device] = measure_device(device, trained_model, network_input, grid, batch_size, repeats, config_path, run_dir)
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)

    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": end_to_end.machine_description(),
        "versions": {name: _version(name) for name in ("emflow", "torch", "monai")},
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU",
        "model": model_description(model_path, trained_model),
        "volume": {
            "shape": list(crop_shape),
            "megavoxels": volume_voxels / 1e6,
            "source": f"{SOURCE_PATH}:raw[{', '.join(f'0:{size}' for size in crop_shape)}]",
        },
        "grid": {
            "patch_shape": list(grid.patch_shape),
            "overlap": list(grid.overlap),
            "number_of_patches": grid.number_of_patches(),
            "patch_voxels_over_volume_voxels": patch_voxels / volume_voxels,
        },
        "block_shape": list(block_shape),
        "number_of_blocks": math.prod(-(-size // block) for size, block in zip(crop_shape, block_shape)),
        "batch_size": batch_size,
        "repeats": repeats,
        "goal_blending_and_io_over_bare": GOAL_BLENDING_AND_IO,
        "devices": by_device,
    }


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _spread(values: list[float]) -> str:
    """How far apart repeated timings lie: (max - min) / min, as a percentage."""
    return f"{(max(values) - min(values)) / min(values):.0%}"


def _shape(values) -> str:
    return "x".join(map(str, values))


def markdown(results: dict) -> str:
    """A Markdown section with the table of `results`."""
    volume, grid = results["volume"], results["grid"]
    megavoxels = volume["megavoxels"]
    network_megavoxels = {
        "bare": megavoxels,
        "patches": megavoxels * grid["patch_voxels_over_volume_voxels"],
        "blended_in_memory": megavoxels * grid["patch_voxels_over_volume_voxels"],
        "workflow_network": megavoxels * grid["patch_voxels_over_volume_voxels"],
    }
    rows = (
        ("bare", "a) bare forward pass, the crop as one patch"),
        ("patches", f"b) forward passes of the {grid['number_of_patches']} grid patches"),
        ("blended_in_memory", "b') patches + blending in memory (`predict_box`, boundaries)"),
        ("monai", "m) MONAI `sliding_window_inference` + boundaries, in memory"),
        ("workflow_tasks", "c) `emflow predict`, task seconds summed"),
        ("workflow_network", "c) `emflow predict`, of which forward passes (first, cold one included)"),
        ("workflow_wall", "c) `emflow predict`, process start to exit"),
    )
    model = results["model"]
    lines = [
        "### CNN inference throughput",
        "",
        f"Crop {_shape(volume['shape'])} = {megavoxels:.1f} MVox of the FlyEM dev cube's raw data; model `{Path(model['path']).name}` "
        f"({model['target']}, {model['channels']} channels, U-Net width {model['network']['width']}, depth {model['network']['depth']}); "
        f"patches {_shape(grid['patch_shape'])}, overlap {_shape(grid['overlap'])} ({grid['number_of_patches']} patches, "
        f"{grid['patch_voxels_over_volume_voxels']:.2f}x the crop's voxels), batch size {results['batch_size']}; `emflow predict --workers 1`, "
        f"blocks {_shape(results['block_shape'])} ({results['number_of_blocks']} blocks); torch {results['versions']['torch']} with "
        f"{results['torch_threads']} threads; median of {results['repeats']} runs. GPU: {results['gpu']}.",
        "",
        "| device | measurement | s | volume MVox/s | network MVox/s | x bare |",
        "|---|---|---:|---:|---:|---:|",
    ]
    verdicts = []
    for device, measured in results["devices"].items():
        medians = measured["median_seconds"]
        if measured["monai_patches"]:
            network_megavoxels["monai"] = (
                megavoxels * measured["monai_patches"] * math.prod(grid["patch_shape"]) / math.prod(volume["shape"])
            )
        for key, label in rows:
            if key not in medians:
                lines.append(f"| {device} ({measured['precision']}) | {label}: MONAI not installed | | | | |")
                continue
            network = f"{network_megavoxels[key] / medians[key]:.3f}" if key in network_megavoxels else ""
            lines.append(
                f"| {device} ({measured['precision']}) | {label} | {medians[key]:.2f} | {megavoxels / medians[key]:.3f} | "
                f"{network} | {medians[key] / medians['bare']:.2f} |"
            )
        overheads = measured["overheads"]
        met = overheads["blending_and_io_over_bare"] <= results["goal_blending_and_io_over_bare"]
        stage_seconds = measured["workflow_runs"][-1]["task_seconds_by_stage"]
        verdicts.append(
            f"- {device}: `emflow predict` tasks (last run): "
            + ", ".join(f"{stage} {seconds:.2f} s" for stage, seconds in stage_seconds.items())
            + f". Over the bare pass {overheads['workflow_tasks_over_bare']:+.0%} (tasks), "
            f"{overheads['workflow_wall_over_bare']:+.0%} (process); over the patches alone "
            f"{overheads['workflow_tasks_over_patches']:+.0%} (tasks), {overheads['workflow_wall_over_patches']:+.0%} (process). "
            f"The patches' overlap and size cost {overheads['patches_over_bare']:+.0%}, blending in memory "
            f"{overheads['blending_in_memory_over_bare']:+.0%} of the bare pass. Blending + IO, the stages' spans "
            f"less their forward passes, over the bare pass: {overheads['blending_and_io_over_bare']:.1%} (median; runs: "
            + ", ".join(f"{value:.1%}" for value in overheads["blending_and_io_runs_over_bare"])
            + f"): goal <= {results['goal_blending_and_io_over_bare']:.0%} {'met' if met else 'NOT met'}. "
            f"Measured across runs instead, (c tasks - b) / a = {overheads['tasks_less_patches_over_bare']:.0%}: it also holds the "
            "first, cold pass and the difference between the forward passes of separate runs (a's and b's runs above differ by "
            f"{_spread(measured['seconds']['bare'])} and {_spread(measured['seconds']['patches'])}). With start-up and scheduling, "
            f"(c process - b) / a = {overheads['blending_io_and_orchestration_over_bare']:.0%}."
            + (
                f" MONAI ran {measured['monai_patches']} patches in {medians['monai']:.2f} s ({overheads['monai_over_bare']:+.0%} over the "
                f"bare pass); emflow in memory (b') takes {medians['blended_in_memory'] / medians['monai']:.2f}x MONAI's time, "
                f"`emflow predict` (c tasks) {medians['workflow_tasks'] / medians['monai']:.2f}x."
                if "monai" in medians
                else ""
            )
        )
        if "machine" in measured:
            verdicts.append(
                f"- {device}: the machine during each run (cores busy / IO wait / stolen, shares of all cores' time): a) "
                + end_to_end.machine_per_run(measured["machine"]["bare"])
                + "; c) "
                + end_to_end.machine_per_run([run.get("machine") for run in measured["workflow_runs"]])
                + "."
            )
    lines += [
        "",
        *verdicts,
        "",
        "Volume MVox/s: crop voxels per second; network MVox/s: voxels passed through the network per second (patches count "
        "their overlap). a) and b) call the workflow's predictor (inference mode, sigmoid, copy to numpy) on input normalised "
        "beforehand (not timed), after a warm-up pass; c) starts a fresh process per run, so model loading and the first, cold "
        "pass are in it, as are reading the zarr input and writing `predictions` (all channels, "
        f"{default_config()['predict']['output_dtype']}: the default `[predict] output_dtype`) and `boundaries` (float32).",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=f"crop {_shape(QUICK_CROP_SHAPE)}, one run")
    parser.add_argument("--model", type=Path, help="model file (default: the shipped model)")
    parser.add_argument(
        "--patch-shape", type=int, nargs=3, metavar=("Z", "Y", "X"), default=PATCH_SHAPE, help=f"default {_shape(PATCH_SHAPE)}"
    )
    parser.add_argument("--overlap", type=int, nargs=3, metavar=("Z", "Y", "X"), default=OVERLAP, help=f"default {_shape(OVERLAP)}")
    parser.add_argument(
        "--block-shape",
        type=int,
        nargs=3,
        metavar=("Z", "Y", "X"),
        default=BLOCK_SHAPE,
        help=f"default {_shape(BLOCK_SHAPE)}, clipped to the crop",
    )
    parser.add_argument("--batch-size", type=int, default=BATCH_SIZE, help=f"patches per forward pass (default {BATCH_SIZE})")
    parser.add_argument("--repeats", type=int, help=f"runs per measurement, median reported (default {REPEATS}; --quick: 1)")
    parser.add_argument("--json", type=Path, default=RESULTS_DIR / "inference.json", help="default benchmarks/results/inference.json")
    arguments = parser.parse_args(argv)
    if min(arguments.batch_size, arguments.repeats or 1) < 1:
        parser.error("--batch-size and --repeats must be at least 1")
    results = run(
        arguments.quick,
        arguments.model,
        patch_shape=tuple(arguments.patch_shape),
        overlap=tuple(arguments.overlap),
        block_shape=tuple(arguments.block_shape),
        batch_size=arguments.batch_size,
        repeats=arguments.repeats,
    )
    end_to_end.write_results(arguments.json, results)
    print(markdown(results))
    print(f"results written to {arguments.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
