"""Not a benchmark: retrains the shipped edge classifier, `emflow/data/models/flyem_fib_affinities.edge_classifier.npz`.

The one command (about 3 minutes on 2 cores):

    python -m benchmarks.train_edge_classifier [--work-dir DIR] [--output PATH]

Training data, none of it the dev cube's held-out half (y < 128) that `cnn_accuracy` scores:
- the FlyEM dev cube at y >= 128 (the half the shipped network trained on; raw and groundtruth are
  copied into `--work-dir` as one HDF5 file, since a run reads a whole dataset);
- gala's two FIB-SEM crops (train and test), which no network here trained on.
Gradient-boosted trees fitted on predictions the network fitted alone make overconfident costs;
with gala's edges beside them they transfer (measured in memory, dev y < 128, beta 0.5: ARAND
0.105 trained on the dev half alone, 0.083 with gala; gala alone did not transfer, 0.18 with the raw
channel and 0.095-0.196 over beta 0.4-0.6 without it, so the classifier sees no raw intensities).

Each volume gets a default `emflow run` config (the shipped model predicts, 10 nm voxels) and the
`emflow train-edges` config lists them; the command runs `emflow train-edges`, which resumes: an
interrupted retraining, started again, writes the same bytes. `--max-z N` keeps the first N
sections of each volume (a short run, for the test).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import h5py
import tomli_w

from emflow.storage.edge_classifiers import classifier_beside
from emflow.storage.models import shipped_model_path

REPOSITORY_ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = REPOSITORY_ROOT.parent / "shared" / "data"
DEV_PATH = DATA_DIR / "flyem_medulla_dev" / "volume.h5"
GALA_PATH = DATA_DIR / "gala_fib_tiny" / "fixture.h5"
RESOLUTION = [10.0, 10.0, 10.0]
TRAINING_HALF_Y = 128


def write_inputs(work_dir: Path, max_z: int = 0) -> list[tuple[str, str, str]]:
    """The training volumes as (name, input 'path:key' of the raw data, groundtruth 'path:key'), written once."""
    work_dir.mkdir(parents=True, exist_ok=True)
    depth = slice(0, max_z or None)
    volumes = [("dev_y128", DEV_PATH, "raw", "labels/neuron_ids", (depth, slice(TRAINING_HALF_Y, None)))]
    volumes += [(f"gala_{part}", GALA_PATH, f"{part}/raw", f"{part}/neuron_ids", (depth,)) for part in ("train", "test")]
    result = []
    for name, source, raw_key, labels_key, region in volumes:
        path = work_dir / f"{name}.h5"
        if not path.exists():
            partial = path.with_suffix(".partial.h5")
            with h5py.File(source, "r") as read, h5py.File(partial, "w") as written:
                written["raw"] = read[raw_key][region]
                written["groundtruth"] = read[labels_key][region]
            partial.rename(path)
        result.append((name, f"{path.name}:raw", f"{path.name}:groundtruth"))
    return result


def write_configs(work_dir: Path, output: Path, max_z: int = 0) -> Path:
    """The run configs and the `emflow train-edges` config in `work_dir`; returns the latter."""
    runs, groundtruth = [], []
    for name, raw, labels in write_inputs(work_dir, max_z):
        path, key = raw.split(":")
        run = {
            "input": {"path": path, "raw_key": key, "resolution": RESOLUTION},
            "output": {"path": f"{name}.zarr", "work_dir": f"{name}_work"},
        }
        (work_dir / f"{name}.toml").write_text(tomli_w.dumps(run))
        runs.append(f"{name}.toml")
        groundtruth.append(labels)
    config = work_dir / "edge_training.toml"
    config.write_text(tomli_w.dumps({"edge_training": {"runs": runs, "groundtruth": groundtruth, "output": str(output)}}))
    return config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work-dir", type=Path, default=Path("/tmp/emflow_edge_training"), help="folder for the volumes, runs and configs")
    parser.add_argument("--output", type=Path, default=classifier_beside(shipped_model_path()), help="the classifier file to write")
    parser.add_argument("--max-z", type=int, default=0, help="keep only the first N sections of each volume (a short run)")
    arguments = parser.parse_args(argv)
    config = write_configs(arguments.work_dir, arguments.output.resolve(), arguments.max_z)
    return subprocess.call([sys.executable, "-m", "emflow", "train-edges", str(config)])


if __name__ == "__main__":
    sys.exit(main())
