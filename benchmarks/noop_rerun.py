"""No-op rerun of a real segmentation run with 20,000 blocks: what a cron tick costs when nothing
changed, and when new data came in one input chunk.

`benchmarks/orchestration.py` measures the no-op rerun of trivial stages; this one reruns the
default segmentation workflow (boundary map → supervoxels → region graph → multicut →
segmentation → pyramid), whose completion check covers input chunk states, linked block
fingerprints and the state of every output chunk. The volume is a 160x256x256 crop (10.5 MVox) of
the FlyEM medulla dev cube tiled 2x per axis and mirrored (`end_to_end.mirrored_groundtruth_tiling`;
../shared/data/flyem_medulla_dev/volume.h5, 10 nm), its boundary map derived from the groundtruth
(`boundaries_from_labels(gt, sigma=1.0, noise=0.1, seed=0)`), stored as zarr in chunks equal to
the blocks, 8x8x8: 20 x 32 x 32 = 20,480 blocks, halo "auto" (none). Blocks that small make the
run as cheap as 20,000 blocks can be (72 s on 2 cores at stop 36; about 9 minutes when it was written) and the bookkeeping as large:
every block-wise stage has 20,480 blocks (the pyramid levels fewer), with a record and an output
chunk each.

Steps, each `python -m emflow run CONFIG --workers N` in a fresh process, timed from start to exit:
the full run, then `--reruns` (default 3) reruns of the finished run, which must find every stage
done (no journal grows, no record is rewritten), then one run after new data in the input chunk in
the middle of the volume (`reprocessing.change_middle_chunk`). Reported: the full run's seconds,
each rerun's and their median, against the goal of 5 s, and beside them their CPU seconds (user +
system), which a busy shared machine inflates less; for the one-chunk run also where its time went
(`reprocessing.run_phases`) and the blocks it computed and kept: what a change costs besides its
blocks when the run has this many (the goal of benchmarks/reprocessing.py is set at 512 blocks).

Usage: python -m benchmarks.noop_rerun [--workers 2] [--reruns 3] [--out DIR] [--json PATH]
(`--quick` at 32x128x128 in 1,024 blocks). Prints a table, writes benchmarks/results/noop_rerun.json.
"""

from __future__ import annotations

import argparse
import math
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h5py
import tomli_w

from emflow.blocking import Blocking
from emflow.boundaries import boundaries_from_labels
from emflow.storage.volumes import write_volume

from . import reprocessing
from .end_to_end import RESULTS_DIR, SOURCE_PATH, machine_description, mirrored_groundtruth_tiling, write_results

SHAPE = (160, 256, 256)
QUICK_SHAPE = (32, 128, 128)
BLOCK_SHAPE = (8, 8, 8)
GOAL_SECONDS = 5.0


def write_input(folder: Path, shape: tuple[int, ...]) -> Path:
    """The boundary map of the tiled groundtruth's crop `shape`, chunked like the blocks."""
    with h5py.File(SOURCE_PATH, "r") as source:
        neuron_ids = source["labels/neuron_ids"][...]
    groundtruth = mirrored_groundtruth_tiling(neuron_ids, 2)[tuple(slice(0, extent) for extent in shape)]
    path = folder / "input.zarr"
    boundaries = boundaries_from_labels(groundtruth, sigma=1.0, noise=0.1, seed=0)
    write_volume(path, "boundaries", boundaries, resolution=[10.0] * 3, chunks=BLOCK_SHAPE)
    return path


def write_config(folder: Path, input_path: Path) -> Path:
    config = {
        "input": {"path": str(input_path), "boundaries_key": "boundaries", "resolution": [10.0] * 3},
        "output": {"path": str(folder / "segmentation.zarr")},
        "blocking": {"block_shape": list(BLOCK_SHAPE), "halo": "auto"},
    }
    path = folder / "segmentation.toml"
    path.write_text(tomli_w.dumps(config))
    return path


def timed_run(config: Path, workers: int, log: Path) -> tuple[float, float, tuple[float, float]]:
    """Wall seconds of `emflow run` in a fresh process, start to exit, the CPU seconds (user +
    system) of that process and the processes it waited for (on a shared machine the wall time
    also counts the waits for other work, the CPU time does not), and its start and end (`time.time`)."""
    # Write back what earlier steps left dirty, so that this one does not pay for it.
    os.sync()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    with open(log, "w") as output:
        started, started_at = time.perf_counter(), time.time()
        completed = subprocess.run(
            [sys.executable, "-m", "emflow", "run", str(config), "--workers", str(workers)], stdout=output, stderr=subprocess.STDOUT
        )
        seconds, ended_at = time.perf_counter() - started, time.time()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if completed.returncode != 0:
        raise RuntimeError(f"emflow run {config} exited {completed.returncode}; see {log}")
    return seconds, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), (started_at, ended_at)


def record_states(work_dir: Path) -> dict[str, tuple[int, int]]:
    """(size, mtime) of every completion record and journal of a run: a no-op rerun changes none."""
    states = {}
    for path in sorted((work_dir / "status").rglob("*")):
        if path.is_file():
            status = path.stat()
            states[str(path.relative_to(work_dir))] = (status.st_size, status.st_mtime_ns)
    return states


def run(quick: bool = False, workers: int = 2, reruns: int = 3, scratch: Path | None = None, shape: tuple[int, ...] | None = None) -> dict:
    """The benchmark (see the module docstring); `quick`: the 1,024-block volume; `shape`: another crop."""
    shape = shape or (QUICK_SHAPE if quick else SHAPE)
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    folder = (scratch or Path(tempfile.mkdtemp(prefix="noop_rerun-", dir=RESULTS_DIR))).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    try:
        input_path = write_input(folder, shape)
        config = write_config(folder, input_path)
        full_seconds, full_cpu_seconds, _ = timed_run(config, workers, folder / "full_run.log")
        work_dir = folder / "segmentation.zarr.work"
        before = record_states(work_dir)
        rerun_seconds, rerun_cpu_seconds, _ = zip(*(timed_run(config, workers, folder / f"rerun_{index}.log") for index in range(reruns)))
        changed = sorted(path for path, state in record_states(work_dir).items() if before.get(path) != state)
        if changed:
            raise RuntimeError(f"a rerun of the finished run changed its records, e.g. {changed[:5]}: it was not a no-op")
        median = statistics.median(rerun_seconds)
        _, chunk = reprocessing.change_middle_chunk(input_path, BLOCK_SHAPE)
        one_chunk_seconds, one_chunk_cpu_seconds, (started_at, ended_at) = timed_run(config, workers, folder / "one_chunk_run.log")
        recomputed = reprocessing.blocks_recomputed(work_dir, started_at)
        return {
            "machine": machine_description(),
            "volume_shape": list(shape),
            "megavoxels": math.prod(shape) / 1e6,
            "block_shape": list(BLOCK_SHAPE),
            "number_of_blocks": Blocking(shape, BLOCK_SHAPE).number_of_blocks,
            "records": len(before),
            "workers": workers,
            "full_run_seconds": full_seconds,
            "full_run_cpu_seconds": full_cpu_seconds,
            "rerun_seconds": list(rerun_seconds),
            "rerun_seconds_median": median,
            "rerun_cpu_seconds": list(rerun_cpu_seconds),
            "rerun_cpu_seconds_median": statistics.median(rerun_cpu_seconds),
            "load_average": os.getloadavg(),
            "goal_seconds": GOAL_SECONDS,
            "goal_met": median <= GOAL_SECONDS,
            "changed_chunk": [[part.start, part.stop] for part in chunk],
            "one_chunk_seconds": one_chunk_seconds,
            "one_chunk_cpu_seconds": one_chunk_cpu_seconds,
            "one_chunk_phases": reprocessing.run_phases(work_dir, started_at, ended_at),
            "one_chunk_blocks_recomputed": {stage: counts for stage, counts in recomputed.items() if counts["blocks"] or counts["kept"]},
        }
    finally:
        if scratch is None:
            shutil.rmtree(folder, ignore_errors=True)


def markdown(results: dict) -> str:
    shape = "x".join(map(str, results["volume_shape"]))
    block = "x".join(map(str, results["block_shape"]))
    reruns = ", ".join(f"{seconds:.2f}" for seconds in results["rerun_seconds"])
    phases = results["one_chunk_phases"]
    recomputed = ", ".join(
        f"{stage} {counts['blocks']} ({counts['task_seconds']:.2f} task s) and {counts['kept']} ({counts['kept_seconds']:.2f} task s)"
        for stage, counts in results["one_chunk_blocks_recomputed"].items()
    )
    return "\n".join(
        [
            "### No-op rerun, and new data in one chunk, of a real segmentation run",
            "",
            f"Default segmentation workflow (boundary map → segmentation, pyramid) on {shape} = {results['megavoxels']:.1f} MVox "
            f"(FlyEM dev cube tiled 2x, mirrored, cropped) in {results['number_of_blocks']:,} blocks of {block} (input chunks the same), "
            f"{results['workers']} workers; each step `python -m emflow run` in a fresh process, start to exit.",
            "",
            "| step | wall s | CPU s |",
            "|---|---:|---:|",
            f"| full run | {results['full_run_seconds']:.1f} | {results['full_run_cpu_seconds']:.1f} |",
            f"| rerun of the finished run (no-op), median of {len(results['rerun_seconds'])} | {results['rerun_seconds_median']:.2f} | "
            f"{results['rerun_cpu_seconds_median']:.2f} |",
            f"| run after new data in one input chunk | {results['one_chunk_seconds']:.2f} | {results['one_chunk_cpu_seconds']:.2f} |",
            "",
            f"- Reruns: {reruns} s; goal ≤ {results['goal_seconds']:.0f} s (wall): {'met' if results['goal_met'] else 'missed'}. "
            "CPU s: user + system time of the process and the processes it waited for; the wall time also counts waiting for "
            f"the machine's other work (load average {results['load_average'][0]:.1f} at the end).",
            f"- New data in one input chunk (z, y, x {', '.join(f'{begin}:{end}' for begin, end in results['changed_chunk'])}, its "
            f"boundary values inverted): {results['one_chunk_seconds'] / results['full_run_seconds']:.3f} of the full run. Where its "
            f"time went (from the records it wrote): {phases['before_tasks']:.2f} s before its first task (interpreter, imports, "
            f"checks, planning over every block's record), {phases['tasks']:.2f} s of tasks (of which the global stages, "
            f"each alone on one worker, {phases['global_stages']:.2f} task s), {phases['after_tasks']:.2f} s after its last "
            f"record (the run report, the exit). Blocks computed, and kept by early cutoff: {recomputed}.",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="32x128x128 in 1,024 blocks")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--reruns", type=int, default=3)
    parser.add_argument("--out", type=Path, help="scratch folder, kept (default: a temporary one under benchmarks/results, removed)")
    parser.add_argument("--json", type=Path, default=RESULTS_DIR / "noop_rerun.json")
    arguments = parser.parse_args(argv)
    results = run(arguments.quick, arguments.workers, arguments.reruns, arguments.out)
    write_results(arguments.json, results)
    print(markdown(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
