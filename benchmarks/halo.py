"""The supervoxel halo: what the context read around each block costs, and what it buys.

`[blocking] halo` is the context the watershed supervoxel stage reads around each block, so that
seeds and basins near a block face see their neighbourhood. It costs twice: the watershed runs on
the block grown by the halo, and the block decodes its 26 neighbouring input chunks, not only its
own. Three kinds of data, each `emflow run --workers 2` (a fresh process per run) with default
config values but the halo; seconds are the process's wall time, start to exit:

- FIB-SEM, GT-derived boundaries: the FlyEM dev cube (flyem_medulla_dev/volume.h5, 10 nm) tiled 2x
  per axis, mirrored, 62.5 MVox (`--quick`: not tiled, 7.8 MVox), with the boundary map of the
  end-to-end benchmark (`boundaries_from_labels(gt, sigma=1, noise=0.1, seed=0)`), blocks and input
  chunks 64x128x128. Scored against the tiled groundtruth.
- FIB-SEM, CNN: the dev cube's raw data (125x250x250, input chunks 32x64x64), the shipped model and
  its learned edge costs, blocks 64x128x128 and 32x64x64 (`--quick`: 64x128x128 only). Scored on
  y < 128, which neither the network nor the edge classifier was trained on.
- ssTEM, 2D supervoxels: the ISBI 2012 training sections 24-29 (4x4x50 nm) that the shipped ssTEM
  model held out, blocks "auto" (6x256x256, 4 blocks), scored per section with the challenge's
  V_rand and V_info (higher is better). Skipped when the ISBI data is missing.

Scores: `emflow.evaluation.evaluate` (groundtruth label 0 ignored), adapted Rand error (lower is
better) and VOI split / merge in bits.

Usage: python -m benchmarks.halo [--quick] [--json PATH]; in the suite:
`python -m benchmarks --only halo --markdown docs/halo_benchmarks.md`.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import h5py
import numpy as np
import tomli_w

from emflow.evaluation import evaluate, isbi2012_scores
from emflow.storage.volumes import open_volume, write_volume
from emflow.workflows.demo import ISBI_RESOLUTION, read_isbi_sections

from .end_to_end import emflow_task_seconds, machine_description, prepare_input, run_measured, write_results

ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = ROOT.parent / "shared" / "data"
DEV_PATH = DATA_DIR / "flyem_medulla_dev" / "volume.h5"
ISBI_DIR = DATA_DIR / "isbi2012"
FIB_BLOCK_SHAPE = (64, 128, 128)
# The held-out half of the dev cube: the network and the edge classifier learned on y >= 128.
HELD_OUT_Y = 128


def eighth(block_shape) -> list[int]:
    """The halo "auto" meant before it was measured here: an eighth of the block per axis."""
    return [size // 8 for size in block_shape]


def run_emflow(folder: Path, name: str, config: dict) -> tuple[float, Path, dict[str, float]]:
    """`emflow run` of `config` in `folder/name`; its wall seconds, output path and task seconds by stage."""
    run_dir = folder / name
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    output = run_dir / "out.zarr"
    config = {**config, "output": {"path": str(output)}}
    config_path = run_dir / "config.toml"
    config_path.write_text(tomli_w.dumps(config))
    measurement = run_measured([sys.executable, "-m", "emflow", "run", str(config_path), "--workers", "2"], run_dir / "emflow.log")
    if measurement.exit_code != 0:
        raise SystemExit(f"emflow run failed (exit code {measurement.exit_code}); see {run_dir / 'emflow.log'}")
    return measurement.wall_seconds, output, emflow_task_seconds(run_dir / "out.zarr.work")


def fib_row(scratch: Path, name: str, config: dict, groundtruth: np.ndarray, scored: tuple[slice, ...]) -> dict:
    """One FIB-SEM run of `config` (its `[blocking]` names block shape and halo): seconds, supervoxel
    task seconds, and ARAND / VOI of the segmentation against `groundtruth` in the region `scored`."""
    seconds, output, task_seconds = run_emflow(scratch, name, config)
    segmentation = np.asarray(open_volume(output, "segmentation/s0")[...])
    metrics = evaluate(segmentation[scored], groundtruth[scored])
    return {
        "halo": config["blocking"]["halo"],
        "block_shape": config["blocking"]["block_shape"],
        "seconds": seconds,
        "supervoxels_task_seconds": task_seconds.get("supervoxels", 0.0),
        **{key: float(metrics[key]) for key in ("adapted_rand_error", "voi_split", "voi_merge")},
    }


def fib_groundtruth_boundaries(scratch: Path, quick: bool) -> list[dict]:
    input_path = prepare_input(scratch, 1 if quick else 2, FIB_BLOCK_SHAPE)
    groundtruth = np.asarray(open_volume(input_path, "neuron_ids")[...])
    rows = []
    for halo in ("auto", [4, 8, 8], eighth(FIB_BLOCK_SHAPE)):
        config = {
            "input": {"path": str(input_path), "boundaries_key": "boundaries", "resolution": [10.0, 10.0, 10.0]},
            "blocking": {"block_shape": list(FIB_BLOCK_SHAPE), "halo": halo},
        }
        rows.append(fib_row(scratch, f"gt_{_name(halo)}", config, groundtruth, (slice(None),)))
        print(f"FIB GT-derived, halo {_name(halo)}: {rows[-1]['seconds']:.1f} s, ARAND {rows[-1]['adapted_rand_error']:.4f}", flush=True)
    return rows


def fib_cnn(scratch: Path, quick: bool) -> list[dict]:
    with h5py.File(DEV_PATH, "r") as source:
        raw, groundtruth = source["raw"][...], source["labels/neuron_ids"][...]
    input_path = scratch / "dev_raw.zarr"
    write_volume(input_path, "raw", raw, resolution=[10.0, 10.0, 10.0], chunks=(32, 64, 64))
    held_out = (slice(None), slice(0, HELD_OUT_Y))
    rows = []
    for block_shape in [FIB_BLOCK_SHAPE] + ([] if quick else [(32, 64, 64)]):
        for halo in ("auto", eighth(block_shape)):
            config = {
                "input": {"path": str(input_path), "raw_key": "raw", "resolution": [10.0, 10.0, 10.0]},
                "blocking": {"block_shape": list(block_shape), "halo": halo},
            }
            rows.append(fib_row(scratch, f"cnn_{'x'.join(map(str, block_shape))}_{_name(halo)}", config, groundtruth, held_out))
            print(f"FIB CNN, blocks {block_shape}, halo {_name(halo)}: ARAND {rows[-1]['adapted_rand_error']:.4f}", flush=True)
    return rows


def sstem(scratch: Path) -> list[dict]:
    if not (ISBI_DIR / "train-volume.tif").is_file():
        print(f"ssTEM skipped: no ISBI 2012 data in {ISBI_DIR}", flush=True)
        return []
    raw, labels = read_isbi_sections(ISBI_DIR)
    input_path = scratch / "isbi_raw.zarr"
    write_volume(input_path, "raw", raw, resolution=ISBI_RESOLUTION, chunks=[raw.shape[0], 256, 256])
    rows = []
    for halo in ("auto", [0, 0, 0], [2, 32, 32]):
        config = {"input": {"path": str(input_path), "raw_key": "raw", "resolution": ISBI_RESOLUTION}, "blocking": {"halo": halo}}
        seconds, output, task_seconds = run_emflow(scratch, f"sstem_{_name(halo)}", config)
        scores = isbi2012_scores(np.asarray(open_volume(output, "segmentation/s0")[...]), labels)
        rows.append(
            {
                "halo": halo,
                "seconds": seconds,
                "supervoxels_task_seconds": task_seconds.get("supervoxels", 0.0),
                "v_rand": float(scores["v_rand"]),
                "v_info": float(scores["v_info"]),
            }
        )
        print(f"ssTEM, halo {_name(halo)}: V_rand {rows[-1]['v_rand']:.4f}", flush=True)
    return rows


def _name(halo) -> str:
    return halo if isinstance(halo, str) else "x".join(map(str, halo))


def run(quick: bool = False) -> dict:
    scratch = Path(tempfile.mkdtemp(prefix="halo-", dir=ROOT / "benchmarks" / "results"))
    try:
        return {
            "machine": machine_description(),
            "quick": quick,
            "fib_groundtruth_boundaries": fib_groundtruth_boundaries(scratch, quick),
            "fib_cnn": fib_cnn(scratch, quick),
            "sstem": sstem(scratch),
        }
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def markdown(results: dict) -> str:
    volume = "7.8 MVox (the dev cube)" if results["quick"] else "62.5 MVox (the dev cube tiled 2x per axis)"
    lines = [
        "### The supervoxel halo",
        "",
        '`emflow run --workers 2`, default config but `[blocking] halo`; "auto" is none with 3D supervoxels and, with 2D ones, '
        "none along z and an eighth of the block in y and x. Seconds: the process, start to exit; supervoxels: that stage's "
        "task seconds summed over blocks. The module docstring of `benchmarks/halo.py` describes the data.",
        "",
        f"FIB-SEM, GT-derived boundaries, {volume}, blocks 64x128x128; and the CNN from raw data on the dev cube (125x250x250), "
        "scored on y < 128 (held out from the network and the edge classifier):",
        "",
        "| data | blocks | halo | s | supervoxels task s | ARAND | VOI split | VOI merge |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for label, key in (("GT-derived", "fib_groundtruth_boundaries"), ("CNN", "fib_cnn")):
        for row in results[key]:
            lines.append(
                f"| {label} | {'x'.join(map(str, row['block_shape']))} | {_name(row['halo'])} | {row['seconds']:.1f} | "
                f"{row['supervoxels_task_seconds']:.1f} | {row['adapted_rand_error']:.4f} | {row['voi_split']:.3f} | {row['voi_merge']:.3f} |"
            )
    if results["sstem"]:
        lines += [
            "",
            "ssTEM, ISBI 2012 sections 24-29 (held out from the ssTEM model), 2D supervoxels, blocks 6x256x256; V_rand and "
            "V_info (higher is better), mean over the sections:",
            "",
            "| halo | s | supervoxels task s | V_rand | V_info |",
            "|---|---:|---:|---:|---:|",
        ]
        for row in results["sstem"]:
            lines.append(
                f"| {_name(row['halo'])} | {row['seconds']:.1f} | {row['supervoxels_task_seconds']:.1f} | {row['v_rand']:.4f} | {row['v_info']:.4f} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="7.8 MVox GT-derived, one CNN block shape")
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "halo.json")
    arguments = parser.parse_args(argv)
    results = run(arguments.quick)
    write_results(arguments.json, results)
    print(markdown(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
