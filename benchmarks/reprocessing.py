"""Cron reprocessing: what a rerun costs when nothing changed, and when new data lands in one input chunk.

The volume is the FlyEM medulla dev cube (../shared/data/flyem_medulla_dev/volume.h5, 125x250x250,
10 nm; see its SOURCE.md) tiled 2x per axis and mirrored as in the end-to-end benchmark, 62.5 MVox,
with the boundary map derived from its groundtruth (`boundaries_from_labels(gt, sigma=1.0,
noise=0.1, seed=0)`, built in slabs), stored as zarr with chunks equal to the blocks, 32x64x64
(8x8x8 = 512 blocks), halo 4x8x8. `--quick`: the dev cube itself in 512 blocks of 16x32x32. Each
step is `python -m emflow ...` in a fresh process, timed from start to exit:

1. the full run (what a rerun without reprocessing would cost, e.g. a cron job recomputing everything);
2. `emflow run` again on the finished run (a cron tick with nothing new);
3. `emflow status`;
4. new data written into one chunk in the middle of the volume (its boundary values inverted),
   then `emflow run`: the blocks each stage recomputed are counted from the completion records;
5. the same one-chunk change run into a fresh output: must give the same segmentation as step 4.

For the full run and the one-chunk run, the page also says where the wall time went, from the
completion records the run wrote (`run_phases`): before its first task, its tasks (and of them the
global stages, each alone on one worker), and after its last record (the run report, the exit).

The five steps are repeated `--repeats` times (default 3; `--quick`: 1), each time on a fresh copy
of the input, and each step's median is reported with every value: one sitting's full runs differed
by 20 % (16.4 and 13.7 s), as much as the goal's margin.

Usage: python -m benchmarks.reprocessing [--quick] [--workers 2] [--repeats N] [--out DIR]. Prints a
table, writes benchmarks/results/reprocessing.json.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import tomli_w

from emflow.blocking import Blocking
from emflow.storage.volumes import open_volume
from emflow.targets import JournalReader

from .end_to_end import machine_description, machine_during, machine_per_run, prepare_input, task_records, task_start, write_results

ROOT = Path(__file__).resolve().parents[1]
# Copies of the dev cube per axis and the block shape (also the input's chunks): 512 blocks each.
TILES, BLOCK_SHAPE = 2, (32, 64, 64)
QUICK_TILES, QUICK_BLOCK_SHAPE = 1, (16, 32, 32)
HALO = (4, 8, 8)


def write_config(folder: Path, input_path: Path, name: str, block_shape: tuple[int, ...]) -> Path:
    config = {
        "input": {"path": str(input_path), "boundaries_key": "boundaries", "resolution": [10.0, 10.0, 10.0]},
        "output": {"path": str(folder / f"{name}.zarr")},
        "blocking": {"block_shape": list(block_shape), "halo": list(HALO)},
        "multicut": {"beta": 0.5, "solver": "kernighan-lin"},
    }
    path = folder / f"{name}.toml"
    path.write_text(tomli_w.dumps(config))
    return path


def timed(*arguments: str) -> tuple[float, dict, tuple[float, float]]:
    """Wall seconds of `python -m emflow ARGUMENTS`, what the machine did meanwhile
    (`machine_shares`), and the process's start and end as epoch seconds (`run_phases`)."""
    os.sync()
    with machine_during() as machine:
        started_at, started = time.time(), time.perf_counter()
        completed = subprocess.run([sys.executable, "-m", "emflow", *arguments], capture_output=True, text=True)
        seconds = time.perf_counter() - started
    if completed.returncode != 0:
        raise RuntimeError(f"emflow {' '.join(arguments)} exited {completed.returncode}:\n{completed.stderr[-3000:]}")
    return seconds, machine, (started_at, started_at + seconds)


# The global stages of the benchmark's runs: each runs alone on one worker, between the block-wise stages.
GLOBAL_STAGES = ("supervoxel_ids", "merge_graph", "edge_costs", "multicut")


def run_phases(work_dir: Path, started_at: float, ended_at: float) -> dict[str, float]:
    """Where a run's wall time went, from the completion records it wrote (those finished after
    `started_at`): "before_tasks" (process start to its first task's start: interpreter, imports,
    config and input checks, the repair plan, Luigi's completeness checks), "tasks" (first task's
    start to the last record), "after_tasks" (last record to process exit: the run report and the
    exit), and "global_stages" (the task seconds of `GLOBAL_STAGES`, within "tasks")."""
    records = [(stage, finished, result) for stage, finished, result in task_records(work_dir) if finished > started_at]
    if not records:
        return {}
    first = min(task_start(finished, result) for _, finished, result in records)
    last = max(finished for _, finished, _ in records)
    return {
        "before_tasks": first - started_at,
        "tasks": last - first,
        "after_tasks": ended_at - last,
        "global_stages": sum(result.get("seconds", 0.0) for stage, _, result in records if stage in GLOBAL_STAGES),
    }


def blocks_recomputed(work_dir: Path, since: float) -> dict[str, dict]:
    """Per block-wise stage, how many blocks got a record after `since` by running ("blocks", with
    their task seconds) and how many by early cutoff ("kept": their inputs held what they held)."""
    recomputed = {}
    for folder in sorted((work_dir / "status").iterdir()):
        if folder.is_dir():
            records = [record for record in JournalReader(folder).refresh().values() if record.finished > since and record.fingerprint]
            ran = [record for record in records if not record.result.get("kept")]
            recomputed[folder.name] = {
                "blocks": len(ran),
                "task_seconds": sum(record.result.get("seconds", 0.0) for record in ran),
                "kept": len(records) - len(ran),
                "kept_seconds": sum(record.result.get("seconds", 0.0) for record in records if record.result.get("kept")),
            }
    return recomputed


STEPS = ("full_run", "no_op_run", "status", "one_chunk_changed_run", "fresh_run_of_changed_input")


def run(quick: bool = False, workers: int = 2, scratch: Path | None = None, repeats: int | None = None) -> dict:
    tiles, block_shape = (QUICK_TILES, QUICK_BLOCK_SHAPE) if quick else (TILES, BLOCK_SHAPE)
    repeats = (1 if quick else 3) if repeats is None else repeats
    scratch = Path(tempfile.mkdtemp(prefix="emflow-reprocessing-")) if scratch is None else scratch
    scratch.mkdir(parents=True, exist_ok=True)
    try:
        original = prepare_input(scratch, tiles, block_shape)
        repetitions = []
        for repetition in range(repeats):
            folder = scratch / f"repetition{repetition}"
            shutil.copytree(original, folder / original.name)
            repetitions.append(_steps(folder, folder / original.name, block_shape, workers))
            shutil.rmtree(folder)
        last = repetitions[-1]
        return {
            "machine": machine_description(),
            "tiles": tiles,
            "block_shape": list(block_shape),
            "halo": list(HALO),
            "workers": workers,
            "repeats": repeats,
            **{key: last[key] for key in ("volume_shape", "number_of_blocks", "changed_chunk", "blocks_recomputed")},
            "seconds": {step: statistics.median(repetition["seconds"][step] for repetition in repetitions) for step in STEPS},
            "all_seconds": {step: [repetition["seconds"][step] for repetition in repetitions] for step in STEPS},
            "all_machine": {step: [repetition["machine"][step] for repetition in repetitions] for step in STEPS},
            "all_phases": [repetition["phases"] for repetition in repetitions],
            "identical_to_fresh_run": all(repetition["identical_to_fresh_run"] for repetition in repetitions),
        }
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def change_middle_chunk(input_path: Path, chunk_shape: tuple[int, ...]) -> tuple[tuple[int, ...], tuple[slice, ...]]:
    """New data in the chunk of the boundary map (chunks of `chunk_shape`) in the middle of the
    volume: its values inverted. Returns the volume's shape and the chunk's box."""
    boundaries = open_volume(input_path, "boundaries", mode="r+")
    shape = boundaries.shape
    middle = tuple((size // 2) // block * block for size, block in zip(shape, chunk_shape))
    chunk = tuple(slice(begin, min(begin + block, size)) for begin, block, size in zip(middle, chunk_shape, shape))
    boundaries[chunk] = 1.0 - np.asarray(boundaries[chunk])
    return shape, chunk


def _steps(scratch: Path, input_path: Path, block_shape: tuple[int, ...], workers: int) -> dict:
    """The five steps of the module docstring on this input (changed by step 4), in `scratch`."""
    config = write_config(scratch, input_path, "cron", block_shape)
    work_dir = scratch / "cron.zarr.work"
    full = timed("run", str(config), "--workers", str(workers))
    phases = {"full_run": run_phases(work_dir, *full[2])}
    no_op = timed("run", str(config), "--workers", str(workers))
    status = timed("status", str(config))

    shape, chunk = change_middle_chunk(input_path, block_shape)
    changed_at = time.time()
    incremental = timed("run", str(config), "--workers", str(workers))
    recomputed = blocks_recomputed(work_dir, changed_at)
    phases["one_chunk_changed_run"] = run_phases(work_dir, *incremental[2])

    fresh_config = write_config(scratch, input_path, "fresh", block_shape)
    fresh = timed("run", str(fresh_config), "--workers", str(workers))
    steps = (full, no_op, status, incremental, fresh)
    identical = all(
        np.array_equal(np.asarray(open_volume(scratch / "cron.zarr", key)[...]), np.asarray(open_volume(scratch / "fresh.zarr", key)[...]))
        for key in ("segmentation/s0", "supervoxels")
    )
    return {
        "volume_shape": list(shape),
        "number_of_blocks": Blocking(shape, block_shape).number_of_blocks,
        "changed_chunk": [[item.start, item.stop] for item in chunk],
        "seconds": {step: seconds for step, (seconds, _, _) in zip(STEPS, steps)},
        "machine": {step: machine for step, (_, machine, _) in zip(STEPS, steps)},
        "phases": phases,
        "blocks_recomputed": recomputed,
        "identical_to_fresh_run": identical,
    }


def markdown(results: dict) -> str:
    seconds = results["seconds"]
    lines = [
        "### Cron reprocessing",
        "",
        f"FlyEM dev cube{' tiled 2x per axis, mirrored,' if results['tiles'] > 1 else ''} {'x'.join(map(str, results['volume_shape']))}, "
        f"{results['number_of_blocks']} blocks of "
        f"{'x'.join(map(str, results['block_shape']))} (input chunks the same), halo {'x'.join(map(str, results['halo']))}, "
        f"{results['workers']} workers; each step a fresh `python -m emflow` process. The steps repeated "
        f"{results['repeats']} times, each on a fresh copy of the input: the median, and every value.",
        "",
        "| step | wall s (median) | vs full run | all runs, s | cores busy / IO wait / stolen, each run |",
        "|---|---:|---:|---|---|",
    ]
    for name, label in zip(
        STEPS,
        (
            "full run",
            "`emflow run` on the finished run",
            "`emflow status`",
            "`emflow run` after new data in one chunk",
            "fresh run of the changed input",
        ),
    ):
        every = ", ".join(f"{value:.2f}" for value in results["all_seconds"][name])
        machine = machine_per_run(results.get("all_machine", {}).get(name, []))
        lines.append(f"| {label} | {seconds[name]:.2f} | {seconds[name] / seconds['full_run']:.3f} | {every} | {machine or '-'} |")
    recomputed = ", ".join(
        f"{stage} {entry['blocks']} ({entry['task_seconds']:.1f} task s)" for stage, entry in results["blocks_recomputed"].items()
    )
    kept = ", ".join(
        f"{stage} {entry['kept']} ({entry['kept_seconds']:.2f} task s)"
        for stage, entry in results["blocks_recomputed"].items()
        if entry.get("kept")
    )
    all_seconds = results["all_seconds"]
    ratios = ", ".join(f"{one_chunk / full:.3f}" for one_chunk, full in zip(all_seconds["one_chunk_changed_run"], all_seconds["full_run"]))
    lines += [
        "",
        f"- The one-chunk run over the full run of the same repetition: {ratios}.",
        f"- Blocks recomputed after the one-chunk change (of {results['number_of_blocks']} per stage): {recomputed}.",
        f"- Stale blocks kept by early cutoff (their inputs held what they held before, so their output is kept): {kept or 'none'}.",
        f"- Segmentation and supervoxels identical to the fresh run of the changed input: {results['identical_to_fresh_run']}.",
    ]
    for step, label in (("full_run", "the full run"), ("one_chunk_changed_run", "the one-chunk run")):
        phases = [repetition[step] for repetition in results.get("all_phases", []) if repetition.get(step)]
        if phases:
            median = {name: statistics.median(phase[name] for phase in phases) for name in phases[0]}
            lines.append(
                f"- Where {label}'s time went (from the records it wrote; medians): {median['before_tasks']:.2f} s before its first task "
                f"(interpreter, imports, checks, planning), {median['tasks']:.2f} s of tasks (of which the global stages "
                f"{', '.join(GLOBAL_STAGES)}, each alone on one worker, {median['global_stages']:.2f} s), "
                f"{median['after_tasks']:.2f} s after its last record (the run report, exit)."
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the dev cube (7.8 MVox) in 512 blocks of 16x32x32")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, help="repetitions of the five steps (default 3; --quick: 1)")
    parser.add_argument("--out", type=Path, help="scratch folder (default: a temporary one, removed)")
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "reprocessing.json")
    arguments = parser.parse_args(argv)
    results = run(arguments.quick, arguments.workers, arguments.out, arguments.repeats)
    write_results(arguments.json, results)
    print(markdown(results))
    return 0 if results["identical_to_fresh_run"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
