"""Segmentation accuracy from raw data with the trained CNN, on FlyEM data the model was not trained on.

Datasets (see each folder's SOURCE.md under ../shared/data):
- FlyEM dev, held out: the FlyEM medulla dev cube (flyem_medulla_dev/volume.h5, 10 nm isotropic) at
  y < 128, all z and x: 125x128x250. The shipped model was trained on y >= 128 of the same cube
  (emflow/data/models/flyem_fib_affinities.train.toml), so this is unseen data of the same sample.
  `--quick`: its corner 64x128x128.
- gala test and gala train: the two 50x100x200 FIB-SEM crops of gala's test fixture
  (gala_fib_tiny/fixture.h5), most likely FlyEM medulla data too, voxel size not documented (taken
  as 10 nm isotropic). Groundtruth label 0 marks unlabelled boundary voxels. `--quick`: gala test only.

Contenders on each dataset:
- emflow, default config (CNN): `python -m emflow run CONFIG --workers N` from the raw data: the
  model predicts affinities block by block, the boundary map is derived from them, then supervoxels,
  graph, learned edge costs (`[costs] classifier = "auto"`: the classifier shipped with the model)
  and multicut. Default config values except the model and the block shape, emflow's "auto" one for
  the dataset (`auto_block_shape` on its shape and voxel size: 64x128x128 at 10 nm, clipped to the
  volume), which is also the input's chunk shape; the prediction uses the model's training patch and
  the default overlap.
- every other method and cost source on the same predictions (the default run's `predictions`, given
  as `[input] affinities_key`, default config otherwise; `method_contenders`): the multicut with
  costs from the boundary map (the mean boundary value on each face), the lifted multicut with lifted
  edges from the long-range affinities with learned and with boundary-map local costs, and the mean
  agglomeration at its default threshold.
- elf on the same boundaries: elf's in-core `simple_multicut_workflow` with emflow's default
  parameters (benchmarks/elf_multicut.py, a child process) on the very boundary map emflow's run
  predicted (its output's `boundaries` array, copied into the input group): the same CNN, elf's
  segmentation. Its seconds do not include the prediction.
- emflow, GT-derived boundaries (dev held-out region only): emflow run on
  `boundaries_from_labels(neuron_ids, sigma=1, noise=0.1, seed=0)`, the boundary map the other
  benchmarks use: a reference for what the multicut pipeline reaches with a near-perfect boundary map.

Scored with `emflow.evaluation.evaluate` against the groundtruth (label 0 ignored): adapted Rand
error (ARAND) and variation of information (VOI split and merge, bits). Seconds are the wall time of
the contender's process, start to exit. The issue's goal, checked for the CNN contender on every
dataset: ARAND <= 0.10 and VOI split + merge <= 1.0.

Usage: python -m benchmarks.cnn_accuracy [--quick] [--model PATH] [--workers N] [--skip-elf] [--out DIR] [--json PATH]
Prints a Markdown section and writes benchmarks/results/cnn_accuracy.json. Needs the `bench` extra for elf.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

import h5py
import numpy as np
import tomli_w

from emflow.boundaries import boundaries_from_labels
from emflow.config import default_config
from emflow.evaluation import evaluate
from emflow.storage.edge_classifiers import classifier_beside
from emflow.storage.geometry import auto_block_shape
from emflow.storage.models import file_digest, read_model_state, shipped_model_path
from emflow.storage.volumes import open_volume, write_volume
from emflow.tasks.predict import patch_overlap

try:
    from benchmarks.end_to_end import emflow_task_seconds, machine_description, run_measured, write_results
except ImportError:  # run as a script: benchmarks/ itself is on sys.path
    from end_to_end import emflow_task_seconds, machine_description, run_measured, write_results

BENCHMARKS_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCHMARKS_DIR / "results"
# As tests/conftest.py: the shared data folder beside the repository.
DATA_DIR = BENCHMARKS_DIR.parents[1] / "shared" / "data"
DEV_PATH = DATA_DIR / "flyem_medulla_dev" / "volume.h5"
GALA_PATH = DATA_DIR / "gala_fib_tiny" / "fixture.h5"
ELF_SCRIPT = BENCHMARKS_DIR / "elf_multicut.py"
EXIT_ELF_UNAVAILABLE = 3

GOAL_ADAPTED_RAND_ERROR = 0.10
GOAL_VOI_SUM = 1.0
WORKERS = 2
QUALITY_KEYS = ("adapted_rand_error", "voi_split", "voi_merge", "voi_sum", "rand_precision", "rand_recall", "number_of_voxels")
CNN, ELF, GT_BOUNDARIES = (
    "emflow, default config (CNN)",
    "elf multicut on emflow's CNN boundaries",
    "emflow, GT-derived boundaries (reference)",
)
BOUNDARY_COSTS = "emflow multicut, boundary-map costs"


@dataclass(frozen=True)
class Dataset:
    """A raw volume with groundtruth, read from `path` at `region`."""

    name: str
    path: Path
    raw_key: str
    labels_key: str
    region: tuple[slice, slice, slice]
    resolution: tuple[float, float, float]
    note: str
    with_reference: bool = False  # also segment the GT-derived boundary map

    @property
    def folder_name(self) -> str:
        return "".join(character if character.isalnum() else "_" for character in self.name)

    def read(self) -> tuple[np.ndarray, np.ndarray]:
        with h5py.File(self.path, "r") as source:
            return source[self.raw_key][self.region], source[self.labels_key][self.region]


def _region_text(region: tuple[slice, ...]) -> str:
    return ", ".join(":" if part == slice(None) else f"{part.start or 0}:{part.stop}" for part in region)


def datasets(quick: bool) -> list[Dataset]:
    dev_resolution = (10.0, 10.0, 10.0)  # volume.h5's resolution_nm_zyx
    # gala's voxel size is not documented; the data look isotropic at about the dev cube's.
    gala_resolution = (10.0, 10.0, 10.0)
    dev_region = np.s_[:64, :128, :128] if quick else np.s_[:, :128, :]
    found = [
        Dataset(
            "FlyEM dev, held out",
            DEV_PATH,
            "raw",
            "labels/neuron_ids",
            dev_region,
            dev_resolution,
            "the training cube's y < 128; the model was trained on y >= 128 only",
            with_reference=True,
        ),
        Dataset(
            "gala test",
            GALA_PATH,
            "test/raw",
            "test/neuron_ids",
            np.s_[:, :, :],
            gala_resolution,
            "another FIB-SEM crop, voxel size assumed; the shipped edge classifier trained on it",
        ),
    ]
    if not quick:
        found.append(
            Dataset(
                "gala train",
                GALA_PATH,
                "train/raw",
                "train/neuron_ids",
                np.s_[:, :, :],
                gala_resolution,
                "another FIB-SEM crop, voxel size assumed; the shipped edge classifier trained on it",
            )
        )
    return found


def resolve_model_path(model: Path | None) -> Path:
    path = Path(model) if model else shipped_model_path()
    if not path.is_file():
        raise SystemExit(f"no model file at {path}; train one (emflow train) or pass --model PATH")
    return path.resolve()


def emflow_config(
    run_dir: Path,
    name: str,
    input_path: Path,
    resolution,
    block_shape,
    *,
    model_path: Path | None,
    boundaries_key: str = "",
    affinities: tuple[str, list] | None = None,
    sections: dict | None = None,
) -> Path:
    """A config with emflow's defaults except the input (raw data, `boundaries_key`, or `affinities`:
    key and offsets), the blocks, (for a CNN run) the model and the given `sections`."""
    defaults = default_config()
    config = {
        "input": {"path": str(input_path), "raw_key": "raw", "boundaries_key": boundaries_key, "resolution": list(resolution)},
        "output": {"path": str(run_dir / f"{name}.zarr")},
        "blocking": {"block_shape": list(block_shape), "halo": defaults["blocking"]["halo"]},
        "multicut": {"beta": defaults["multicut"]["beta"], "solver": defaults["multicut"]["solver"]},
    }
    if affinities is not None:
        config["input"] |= {"affinities_key": affinities[0], "affinity_offsets": affinities[1]}
    if model_path is not None:
        config["predict"] = {"model": str(model_path)}
    for section, values in (sections or {}).items():
        config[section] = config.get(section, {}) | values
    config_path = run_dir / f"{name}.toml"
    config_path.write_text(tomli_w.dumps(config))
    return config_path


def method_contenders(model_path: Path) -> dict[str, dict]:
    """The other methods and cost sources, by name: config sections over the defaults, for a run on
    the CNN's affinities given as input (the default run's learned costs are then named explicitly)."""
    learned = {"classifier": str(classifier_beside(model_path))}
    thresholds = default_config()["agglomeration"]["thresholds"]
    return {
        BOUNDARY_COSTS: {"costs": {"classifier": ""}},
        "emflow lifted multicut from affinities, learned costs": {"costs": learned, "lifted": {"source": "affinities"}},
        "emflow lifted multicut from affinities, boundary-map costs": {"costs": {"classifier": ""}, "lifted": {"source": "affinities"}},
        f"emflow agglomeration, mean, threshold {thresholds[0]} (default)": {"segmentation": {"method": "agglomeration"}},
    }


def quality(segmentation, groundtruth: np.ndarray) -> dict:
    metrics = evaluate(segmentation, groundtruth)
    return {key: metrics[key] for key in QUALITY_KEYS}


def run_emflow(config_path: Path, run_dir: Path, groundtruth: np.ndarray, workers: int) -> dict:
    """`emflow run` from scratch; its wall time, task seconds by stage and the segmentation's quality."""
    output_path = run_dir / f"{config_path.stem}.zarr"
    for path in (output_path, output_path.with_name(output_path.name + ".work")):
        shutil.rmtree(path, ignore_errors=True)
    log_path = run_dir / f"{config_path.stem}.log"
    measurement = run_measured([sys.executable, "-m", "emflow", "run", str(config_path), "--workers", str(workers)], log_path)
    if measurement.exit_code != 0:
        raise SystemExit(f"emflow run failed (exit code {measurement.exit_code}); see {log_path}")
    return {
        "status": "ok",
        "seconds": measurement.wall_seconds,
        "max_rss_bytes": measurement.max_rss_bytes,
        "task_seconds_by_stage": emflow_task_seconds(output_path.with_name(output_path.name + ".work")),
        "quality": quality(open_volume(output_path, "segmentation"), groundtruth),
    }


def run_elf(input_path: Path, boundaries_key: str, run_dir: Path, groundtruth: np.ndarray, workers: int, chunks) -> dict:
    """elf's `simple_multicut_workflow` on `input_path:boundaries_key` in a child process, scored."""
    segmentation_path, report_path, log_path = run_dir / "elf.zarr", run_dir / "elf_report.json", run_dir / "elf.log"
    shutil.rmtree(segmentation_path, ignore_errors=True)
    command = [
        sys.executable,
        str(ELF_SCRIPT),
        f"{input_path}:{boundaries_key}",
        f"{segmentation_path}:segmentation",
        str(report_path),
        "--threads",
        str(workers),
        "--chunks",
        *map(str, chunks),
    ]
    measurement = run_measured(command, log_path)
    if measurement.exit_code == EXIT_ELF_UNAVAILABLE:
        return {"status": f"unavailable: {json.loads(report_path.read_text())['reason']}"}
    if measurement.exit_code != 0:
        raise SystemExit(f"elf run failed (exit code {measurement.exit_code}); see {log_path}")
    report = json.loads(report_path.read_text())
    return {
        "status": "ok",
        "version": report["version"],
        "seconds": measurement.wall_seconds,
        "max_rss_bytes": measurement.max_rss_bytes,
        "phase_seconds": report["seconds"],
        "quality": quality(open_volume(segmentation_path, "segmentation"), groundtruth),
    }


def run_dataset(dataset: Dataset, out_dir: Path, model_path: Path, workers: int, skip_elf: bool) -> dict:
    """Every contender on one dataset (see the module docstring)."""
    run_dir = out_dir / dataset.folder_name
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    raw, groundtruth = dataset.read()
    block_shape = auto_block_shape(raw.shape, dataset.resolution)
    input_path = run_dir / "input.zarr"
    write_volume(input_path, "raw", raw, resolution=dataset.resolution, chunks=block_shape)

    contenders = {}
    print(f"{dataset.name}: {CNN} ...", flush=True)
    config_path = emflow_config(run_dir, "emflow_cnn", input_path, dataset.resolution, block_shape, model_path=model_path)
    contenders[CNN] = run_emflow(config_path, run_dir, groundtruth, workers)
    stage_seconds = contenders[CNN]["task_seconds_by_stage"]
    contenders[CNN]["prediction_task_seconds"] = stage_seconds.get("predict", 0.0) + stage_seconds.get("blend_predictions", 0.0)
    predicted = np.asarray(open_volume(run_dir / "emflow_cnn.zarr", "boundaries")[...])
    write_volume(input_path, "cnn_boundaries", predicted, resolution=dataset.resolution, chunks=block_shape)

    # Every other method and cost source on the same predictions, given as affinities.
    predictions = open_volume(run_dir / "emflow_cnn.zarr", "predictions")
    offsets = [list(offset) for offset in predictions.attrs["offsets"]]
    write_volume(
        input_path, "cnn_affinities", np.asarray(predictions[...]), resolution=dataset.resolution, chunks=(len(offsets), *block_shape)
    )
    for index, (name, sections) in enumerate(method_contenders(model_path).items()):
        print(f"{dataset.name}: {name} ...", flush=True)
        config_path = emflow_config(
            run_dir,
            f"emflow_method_{index}",
            input_path,
            dataset.resolution,
            block_shape,
            model_path=None,
            affinities=("cnn_affinities", offsets),
            sections=sections,
        )
        contenders[name] = run_emflow(config_path, run_dir, groundtruth, workers)

    if skip_elf:
        contenders[ELF] = {"status": "skipped"}
    else:
        print(f"{dataset.name}: {ELF} ...", flush=True)
        contenders[ELF] = run_elf(input_path, "cnn_boundaries", run_dir, groundtruth, workers, block_shape)

    if dataset.with_reference:
        print(f"{dataset.name}: {GT_BOUNDARIES} ...", flush=True)
        reference = boundaries_from_labels(groundtruth, sigma=1.0, noise=0.1, seed=0)
        write_volume(input_path, "gt_boundaries", reference, resolution=dataset.resolution, chunks=block_shape)
        config_path = emflow_config(
            run_dir, "emflow_gt", input_path, dataset.resolution, block_shape, model_path=None, boundaries_key="gt_boundaries"
        )
        contenders[GT_BOUNDARIES] = run_emflow(config_path, run_dir, groundtruth, workers)

    cnn_quality = contenders[CNN]["quality"]
    return {
        "name": dataset.name,
        "source": f"{dataset.path}:{dataset.raw_key}[{_region_text(dataset.region)}]",
        "labels": f"{dataset.path}:{dataset.labels_key}",
        "note": dataset.note,
        "shape": list(raw.shape),
        "megavoxels": math.prod(raw.shape) / 1e6,
        "resolution": list(dataset.resolution),
        "block_shape": list(block_shape),
        "groundtruth_unlabelled_fraction": float((groundtruth == 0).mean()),
        "boundary_map_mean": float(predicted.mean()),
        "goal_met": cnn_quality["adapted_rand_error"] <= GOAL_ADAPTED_RAND_ERROR and cnn_quality["voi_sum"] <= GOAL_VOI_SUM,
        "contenders": contenders,
    }


def run(quick: bool = False, model: Path | None = None, *, workers: int = WORKERS, skip_elf: bool = False, out: Path | None = None) -> dict:
    """Run the benchmark (see the module docstring) and return its results."""
    model_path = resolve_model_path(model)
    model_state = read_model_state(model_path)
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    out_dir = (out or Path(tempfile.mkdtemp(prefix="cnn_accuracy-", dir=RESULTS_DIR))).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        results = [run_dataset(dataset, out_dir, model_path, workers, skip_elf) for dataset in datasets(quick)]
    finally:
        if out is None:
            shutil.rmtree(out_dir, ignore_errors=True)
    predict_defaults = default_config()["predict"]
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine_description(),
        "versions": {name: metadata.version(name) for name in ("emflow", "torch")},
        "quick": quick,
        "workers": workers,
        "model": {
            "path": str(model_path),
            "sha256": file_digest(model_path),
            "target": model_state["target"],
            "training_patch_shape": model_state["patch_shape"],
            "metadata": model_state["metadata"],
        },
        # The prediction settings of the CNN runs: the config's defaults.
        "prediction": {
            "patch_shape": model_state["patch_shape"] if not any(predict_defaults["patch_shape"]) else predict_defaults["patch_shape"],
            "overlap": list(patch_overlap(predict_defaults["overlap"], model_state["patch_shape"])),
            "device": predict_defaults["device"],
            "precision": predict_defaults["precision"],
        },
        "goal": {"adapted_rand_error": GOAL_ADAPTED_RAND_ERROR, "voi_sum": GOAL_VOI_SUM},
        "goal_met": all(dataset["goal_met"] for dataset in results),
        "datasets": results,
    }


def _shape(values) -> str:
    return "x".join(map(str, values))


def markdown(results: dict) -> str:
    """A Markdown section with the table of `results`."""
    model, prediction, goal = results["model"], results["prediction"], results["goal"]
    lines = [
        "### Segmentation accuracy with the CNN on data it was not trained on",
        "",
        f"Model `{Path(model['path']).name}` (sha256 {model['sha256'][:12]}, {model['target']}); prediction with patches "
        f"{_shape(prediction['patch_shape'])}, overlap {_shape(prediction['overlap'])}, device {prediction['device']}; "
        f"`emflow run --workers {results['workers']}` with default config values otherwise (block shape `auto`, per dataset below); "
        f"elf with {results['workers']} threads on the boundary map emflow's run predicted. ARAND and VOI (bits) against the "
        "groundtruth, label 0 ignored; seconds: wall time of the process (for elf without the prediction).",
        "",
        "| dataset | shape | contender | ARAND | VOI split | VOI merge | seconds |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for dataset in results["datasets"]:
        for name, contender in dataset["contenders"].items():
            if contender["status"] != "ok":
                lines.append(f"| {dataset['name']} | {_shape(dataset['shape'])} | {name} | {contender['status']} | | | |")
                continue
            metrics = contender["quality"]
            lines.append(
                f"| {dataset['name']} | {_shape(dataset['shape'])} | {name} | {metrics['adapted_rand_error']:.4f} | "
                f"{metrics['voi_split']:.3f} | {metrics['voi_merge']:.3f} | {contender['seconds']:.1f} |"
            )
    lines += [
        "",
        f"Goal (CNN contender, each dataset): ARAND <= {goal['adapted_rand_error']:.2f} and VOI split + merge <= {goal['voi_sum']:.1f}.",
    ]
    for dataset in results["datasets"]:
        metrics = dataset["contenders"][CNN]["quality"]
        lines.append(
            f"- {dataset['name']} ({dataset['note']}): ARAND {metrics['adapted_rand_error']:.4f}, VOI sum {metrics['voi_sum']:.3f}: "
            f"{'met' if dataset['goal_met'] else 'NOT met'}. Blocks {_shape(dataset['block_shape'])}. "
            f"Prediction: {dataset['contenders'][CNN]['prediction_task_seconds']:.1f} s "
            f"of task time, summed over blocks; groundtruth label 0 covers {dataset['groundtruth_unlabelled_fraction']:.1%} of the voxels."
        )
    lines += [
        "",
        f"Overall: goal {'met' if results['goal_met'] else 'NOT met'}"
        + (" (quick run: a smaller dev crop and gala test only)." if results["quick"] else "."),
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="dev held-out crop 64x128x128 and gala test only")
    parser.add_argument("--model", type=Path, help="model file (default: the shipped model)")
    parser.add_argument("--workers", type=int, default=WORKERS, help=f"emflow worker processes and elf threads (default {WORKERS})")
    parser.add_argument("--skip-elf", action="store_true", help="emflow only")
    parser.add_argument(
        "--out", type=Path, help="folder for inputs and outputs, kept (default: a temporary folder under benchmarks/results, removed)"
    )
    parser.add_argument("--json", type=Path, default=RESULTS_DIR / "cnn_accuracy.json", help="default benchmarks/results/cnn_accuracy.json")
    arguments = parser.parse_args(argv)
    if arguments.workers < 1:
        parser.error("--workers must be at least 1")
    results = run(arguments.quick, arguments.model, workers=arguments.workers, skip_elf=arguments.skip_elf, out=arguments.out)
    write_results(arguments.json, results)
    print(markdown(results))
    print(f"results written to {arguments.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
