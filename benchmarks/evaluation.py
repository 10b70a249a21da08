"""Evaluation of a large segmentation with bounded memory: emflow's blockwise core vs in-memory evaluation.

The volumes are the FlyEM medulla dev cube's groundtruth and its watershed oversegmentation (as the
segmentation under test), both tiled `--scale` times per axis with `end_to_end.mirrored_groundtruth_tiling`
(scale 2: 250x500x500 = 62.5 MVox; scale 4: 500 MVox), stored as zarr arrays with 128^3 chunks.

Contenders, each in a child process of its own (one thread: OMP/OpenBLAS at 1), timed from start to
exit with their peak RSS (wait4 rusage, `end_to_end.run_measured`), on the same zarr inputs:
- emflow blockwise: `overlaps_of_volume` (reads block by block, `--block-shape`, default 128^3) then
  `metrics_from_overlaps` and `segmentation_errors` (the worst 10 with positions) from the table: the
  per-block and global parts the Luigi stages run, here in one process.
- emflow slabs: `emflow.evaluation.evaluate` on the lazy arrays (the slab-wise contingency table).
- skimage: both volumes read into memory, then `skimage.metrics.variation_of_information` and
  `adapted_rand_error` (groundtruth 0 ignored).
- elf: both volumes in memory, then `elf.evaluation.variation_of_information` and `rand_index` (python-elf,
  the `bench` extra; its adapted Rand error counts a voxel's pair with itself, so it differs slightly).
In-memory contenders run only at `--in-memory-scales` (default 1 and 2) and under an address-space
limit (`--memory-limit-gib`, default 10), so that they fail with MemoryError instead of exhausting the
machine; emflow runs at those scales too, for a direct comparison, and at `--scale`.

Usage: python -m benchmarks.evaluation [--scale 2] [--in-memory-scales 1 2] [--block-shape Z Y X]
                                       [--memory-limit-gib 10] [--out DIR] [--json PATH]
Prints a table and writes benchmarks/results/evaluation.json (the tiled inputs are cached in --out).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shutil
import sys
import tempfile
import time
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path

import h5py

from emflow.storage.volumes import open_volume, read_resolution, write_volume

from .end_to_end import RESULTS_DIR, SOURCE_PATH, machine_description, mirrored_groundtruth_tiling, run_measured, write_results

CONTENDERS = ("emflow blockwise", "emflow slabs", "skimage", "elf")
IN_MEMORY = ("skimage", "elf")
CHUNKS = (128, 128, 128)
EXIT_OUT_OF_MEMORY = 4
EXIT_UNAVAILABLE = 3
COMPARED_KEYS = ("voi_split", "voi_merge", "adapted_rand_error")


def prepare_input(out_dir: Path, scale: int) -> Path:
    """The tiled groundtruth and oversegmentation as one zarr group (reused if already in `out_dir`).

    Each array is tiled in memory, written and freed before the next (scale 4: about 2 GB each)."""
    input_path = out_dir / f"evaluation_x{scale}.zarr"
    if input_path.exists():
        return input_path
    partial = out_dir / f".{input_path.name}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    for key, source_key in (("groundtruth", "labels/neuron_ids"), ("segmentation", "labels/oversegmentation")):
        with h5py.File(SOURCE_PATH, "r") as source:
            labels = source[source_key][...]
            resolution = [float(value) for value in source[source_key].attrs["resolution_nm_zyx"]]
        write_volume(partial, key, mirrored_groundtruth_tiling(labels, scale), resolution=resolution, chunks=CHUNKS)
    os.replace(partial, input_path)
    return input_path


def _child(contender: str, input_path: Path, report_path: Path, block_shape: tuple[int, ...], memory_limit_gib: float) -> int:
    """Evaluate in this process and write the metrics and phase seconds to `report_path`."""
    started = time.perf_counter()
    segmentation, groundtruth = open_volume(input_path, "segmentation"), open_volume(input_path, "groundtruth")
    seconds, extra = {}, {}
    try:
        if contender == "emflow blockwise":
            from emflow.evaluation import metrics_from_overlaps, overlaps_of_volume, segmentation_errors

            table = overlaps_of_volume(segmentation, groundtruth, block_shape)
            seconds["blocks and merge"] = time.perf_counter() - started
            metrics = metrics_from_overlaps(table)
            errors = segmentation_errors(table, read_resolution(segmentation), number_of_worst=10)
            seconds["metrics and errors"] = time.perf_counter() - started - seconds["blocks and merge"]
            extra = {"table_rows": len(table.counts), "worst_merge": errors["worst_merges"][0]["position_voxel"]}
        elif contender == "emflow slabs":
            from emflow.evaluation import evaluate

            metrics = evaluate(segmentation, groundtruth)
        else:
            limit = int(memory_limit_gib * 2**30)
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
            segmentation, groundtruth = segmentation[...], groundtruth[...]
            seconds["read"] = time.perf_counter() - started
            if contender == "skimage":
                import skimage.metrics

                split, merge = skimage.metrics.variation_of_information(groundtruth, segmentation, ignore_labels=[0])
                rand_error = skimage.metrics.adapted_rand_error(groundtruth, segmentation, ignore_labels=[0])[0]
            else:
                try:
                    import elf.evaluation
                except ImportError as error:
                    report_path.write_text(json.dumps({"reason": str(error)}))
                    return EXIT_UNAVAILABLE
                split, merge = elf.evaluation.variation_of_information(segmentation, groundtruth, ignore_gt=[0])
                rand_error = elf.evaluation.rand_index(segmentation, groundtruth, ignore_gt=[0])[0]
            metrics = {"voi_split": float(split), "voi_merge": float(merge), "adapted_rand_error": float(rand_error)}
            seconds["metrics"] = time.perf_counter() - started - seconds["read"]
    except MemoryError:
        report_path.write_text(json.dumps({"reason": f"MemoryError under a {memory_limit_gib} GiB address-space limit"}))
        return EXIT_OUT_OF_MEMORY
    report_path.write_text(json.dumps({"metrics": metrics, "seconds": seconds, **extra}))
    return 0


def run_contender(contender: str, input_path: Path, run_dir: Path, block_shape, memory_limit_gib: float) -> dict:
    name = contender.replace(" ", "_")
    report_path = run_dir / f"{input_path.stem}_{name}.json"
    command = [
        sys.executable,
        "-m",
        "benchmarks.evaluation",
        "--child",
        contender,
        str(input_path),
        str(report_path),
        "--block-shape",
        *map(str, block_shape),
        "--memory-limit-gib",
        str(memory_limit_gib),
    ]
    measurement = run_measured(command, run_dir / f"{input_path.stem}_{name}.log")
    report = json.loads(report_path.read_text()) if report_path.exists() else {}
    if measurement.exit_code == EXIT_OUT_OF_MEMORY:
        status = "out of memory: " + report["reason"]
    elif measurement.exit_code == EXIT_UNAVAILABLE:
        status = "unavailable: " + report["reason"]
    elif measurement.exit_code != 0:
        status = f"failed (exit code {measurement.exit_code}, see {run_dir / f'{input_path.stem}_{name}.log'})"
    else:
        status = "ok"
    return {"status": status, "measurement": asdict(measurement), **report}


def run(*, scale: int = 2, in_memory_scales=(1, 2), block_shape=CHUNKS, memory_limit_gib: float = 10.0, out: Path | None = None) -> dict:
    """Run every contender at every scale it is meant for; see the module docstring."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    out_dir = (out or Path(tempfile.mkdtemp(prefix="evaluation-", dir=RESULTS_DIR))).resolve()
    run_dir = out_dir / "runs"
    run_dir.mkdir(parents=True, exist_ok=True)
    results = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine_description(),
        "block_shape": list(block_shape),
        "memory_limit_gib": memory_limit_gib,
        "source": str(SOURCE_PATH),
        "scales": {},
    }
    for each_scale in sorted(set(in_memory_scales) | {scale}):
        input_path = prepare_input(out_dir, each_scale)
        shape = tuple(int(extent) for extent in open_volume(input_path, "groundtruth").shape)
        rows = {}
        for contender in CONTENDERS:
            if contender in IN_MEMORY and each_scale not in in_memory_scales:
                continue
            print(f"scale {each_scale}: {contender} ...", flush=True)
            rows[contender] = run_contender(contender, input_path, run_dir, block_shape, memory_limit_gib)
        reference = rows["emflow blockwise"].get("metrics", {})
        for row in rows.values():
            if row["status"] == "ok":
                row["largest_difference_to_emflow_blockwise"] = {
                    key: abs(row["metrics"][key] - reference[key]) for key in COMPARED_KEYS if key in row["metrics"] and key in reference
                }
        results["scales"][each_scale] = {"shape": shape, "megavoxels": math.prod(shape) / 1e6, "contenders": rows}
    return results


def markdown(results: dict) -> str:
    """The results as a Markdown section: a row per volume size and contender."""
    lines = [
        "### Evaluation of a large segmentation with bounded memory",
        "",
        (
            f"The dev cube's groundtruth and watershed oversegmentation tiled per axis; one thread per contender, each in a "
            f"process of its own; emflow blocks {'x'.join(map(str, results['block_shape']))}; in-memory contenders under a "
            f"{results['memory_limit_gib']:g} GiB address-space limit and only at the smaller sizes. Max RSS of the process."
        ),
        "",
        "| MVox | contender | wall s | MVox/s | max RSS MiB | VOI split | VOI merge | ARAND | status |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for scale in sorted(results["scales"], key=int):
        entry = results["scales"][scale]
        for contender, row in entry["contenders"].items():
            seconds = row["measurement"]["wall_seconds"]
            metrics = row.get("metrics", {})
            numbers = " | ".join(f"{metrics[key]:.4f}" if key in metrics else "" for key in COMPARED_KEYS)
            lines.append(
                f"| {entry['megavoxels']:.1f} | {contender} | {seconds:.1f} | {entry['megavoxels'] / seconds:.2f} | "
                f"{row['measurement']['max_rss_bytes'] / 2**20:.0f} | {numbers} | {row['status']} |"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=int, default=2)
    parser.add_argument("--in-memory-scales", type=int, nargs="*", default=[1, 2])
    parser.add_argument("--block-shape", type=int, nargs=3, default=list(CHUNKS), metavar=("Z", "Y", "X"))
    parser.add_argument("--memory-limit-gib", type=float, default=10.0)
    parser.add_argument("--out", type=Path, help="folder for the tiled inputs and logs (kept; default: a new one in benchmarks/results)")
    parser.add_argument("--json", type=Path, default=RESULTS_DIR / "evaluation.json")
    parser.add_argument("--child", nargs=3, metavar=("CONTENDER", "INPUT", "REPORT"), help=argparse.SUPPRESS)
    arguments = parser.parse_args(argv)
    # One thread everywhere, children included: the contenders are compared core for core.
    for variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[variable] = "1"
    if arguments.child:
        contender, input_path, report_path = arguments.child
        sys.exit(_child(contender, Path(input_path), Path(report_path), tuple(arguments.block_shape), arguments.memory_limit_gib))
    results = run(
        scale=arguments.scale,
        in_memory_scales=arguments.in_memory_scales,
        block_shape=tuple(arguments.block_shape),
        memory_limit_gib=arguments.memory_limit_gib,
        out=arguments.out,
    )
    write_results(arguments.json, results)
    print(markdown(results))


if __name__ == "__main__":
    main()
