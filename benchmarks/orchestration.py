"""Orchestration overhead: what scheduling, completion records and logs cost per (stage, block).

The work of every block is trivial (nothing is computed), so the time measured is emflow's own
machinery: Luigi scheduling of block groups, one completion record and one log file per block,
progress and failure bookkeeping. Three chained block-wise stages (`trivial_stages`, stage 0 → 1 → 2,
each depending on the whole previous stage, specs like the real workflow's) run over a volume of
1×H×W voxels with one-voxel blocks, so the block count is exact and the input costs nothing.

Contenders, each in a fresh process:
- emflow with the embedded local scheduler (`--workers`, default 1).
- emflow against a luigid on 127.0.0.1 with 2 worker processes.
- plain Luigi: one Luigi task per (stage, block), writing the same record, with the same one
  barrier per stage (so the dependency graph is as small as it can be); at fewer blocks, since it
  is quadratic.

Reported: wall seconds of the run (task graph only, after imports), ms per (stage, block), the ratio
t(largest)/t(smallest) against the ratio of block counts, and the wall seconds of a no-op rerun of
the largest finished run in a fresh process, start-up included (the cron case).

Usage: python -m benchmarks.orchestration [--blocks 5000 20000] [--plain-blocks 500 1000] [--json PATH]
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import luigi
import numpy as np
import tomli_w
import zarr

from emflow.cluster import CentralScheduler, LocalScheduler
from emflow.cluster.luigid import start_luigid, stop_luigid
from emflow.cluster.runner import run_tasks
from emflow.targets import CompletionTarget
from emflow.tasks.adapter import Workflow, use_workers
from emflow.tasks.spec import Read, StageSpec
from emflow.workflows.segmentation import load_run

NUMBER_OF_STAGES = 3
RESULTS = Path(__file__).resolve().parent / "results"


def _nothing(block) -> dict:
    return {}


def trivial_stages(config, geometry) -> tuple[StageSpec, ...]:
    """Block-wise stages trivial_0 → trivial_1 → ...: nothing to compute, all the bookkeeping."""
    return tuple(
        StageSpec(f"trivial_{index}", blockwise=True, run=_nothing, reads=(Read.results(f"trivial_{index - 1}"),) if index else ())
        for index in range(NUMBER_OF_STAGES)
    )


TRIVIAL = Workflow("trivial", functools.partial(load_run, stages=trivial_stages))


class PlainBlock(luigi.Task):
    """Plain Luigi contender: a task per (stage, block) with a record of its own."""

    folder = luigi.Parameter()
    stage_index = luigi.IntParameter()
    block_id = luigi.IntParameter()
    number_of_blocks = luigi.IntParameter()

    def requires(self):
        return (
            [PlainStage(folder=self.folder, stage_index=self.stage_index - 1, number_of_blocks=self.number_of_blocks)]
            if self.stage_index
            else []
        )

    def output(self):
        return CompletionTarget(Path(self.folder) / f"trivial_{self.stage_index}" / f"{self.block_id}.json", "plain")

    def run(self):
        self.output().write({})


class PlainStage(luigi.WrapperTask):
    folder = luigi.Parameter()
    stage_index = luigi.IntParameter()
    number_of_blocks = luigi.IntParameter()

    def requires(self):
        return [
            PlainBlock(folder=self.folder, stage_index=self.stage_index, block_id=block_id, number_of_blocks=self.number_of_blocks)
            for block_id in range(self.number_of_blocks)
        ]


def block_grid(number_of_blocks: int) -> tuple[int, int, int]:
    """A 1×H×W volume with exactly `number_of_blocks` voxels, H and W as close as possible."""
    height = int(np.sqrt(number_of_blocks))
    while number_of_blocks % height:
        height -= 1
    return (1, height, number_of_blocks // height)


def write_trivial_config(folder: Path, number_of_blocks: int) -> Path:
    """An emflow config over a zarr volume of one chunk with one block per voxel."""
    folder.mkdir(parents=True, exist_ok=True)
    shape = block_grid(number_of_blocks)
    # Written, not left to the fill value: emflow refuses an input none of whose chunks was written.
    zarr.open_group(str(folder / "input.zarr"), mode="w").create_array("boundaries", data=np.full(shape, 0.5, np.float32), chunks=shape)
    config = {
        "input": {"path": str(folder / "input.zarr"), "boundaries_key": "boundaries", "resolution": [1.0, 1.0, 1.0]},
        "output": {"path": str(folder / "output.zarr")},
        "blocking": {"block_shape": [1, 1, 1], "halo": [0, 0, 0]},
    }
    path = folder / "config.toml"
    path.write_text(tomli_w.dumps(config))
    return path


def run_emflow(config_path: Path, workers: int, scheduler_port: int | None) -> dict:
    """Build the trivial workflow once in this process; seconds of the build only."""
    config_path = config_path.resolve()
    work_dir = Path(f"{config_path.parent / 'output.zarr'}.work")
    backend = LocalScheduler(workers) if scheduler_port is None else CentralScheduler("127.0.0.1", scheduler_port, workers)
    use_workers(workers)
    started = time.perf_counter()
    report = run_tasks(
        [TRIVIAL.root_task(str(config_path))], backend, failure_dir=work_dir / "failed", scheduler_log=work_dir / "logs" / "luigi.log"
    )
    return {"seconds": time.perf_counter() - started, "succeeded": report.succeeded}


def run_plain(folder: Path, number_of_blocks: int, workers: int) -> dict:
    luigi.configuration.get_config().set("core", "no_configure_logging", "true")
    started = time.perf_counter()
    succeeded = luigi.build(
        [PlainStage(folder=str(folder), stage_index=index, number_of_blocks=number_of_blocks) for index in range(NUMBER_OF_STAGES)],
        local_scheduler=True,
        workers=workers,
        log_level="WARNING",
    )
    return {"seconds": time.perf_counter() - started, "succeeded": bool(succeeded)}


def measure_in_child(*arguments: str) -> dict:
    """Run this module with `arguments` in a fresh interpreter; its JSON result plus its wall time."""
    # Write back what earlier runs (or benchmarks) left dirty, so that this run does not pay for it.
    os.sync()
    started = time.perf_counter()
    completed = subprocess.run(
        [sys.executable, "-m", "benchmarks.orchestration", *arguments],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    wall = time.perf_counter() - started
    result = json.loads(completed.stdout.strip().splitlines()[-1]) if completed.returncode == 0 else {}
    if not result.get("succeeded"):
        raise RuntimeError(f"benchmark child {' '.join(arguments)} failed (see its luigi.log):\n{completed.stderr[-3000:]}")
    return {**result, "process_seconds": wall}


def benchmark(block_counts: list[int], plain_block_counts: list[int], workers: int, scratch: Path) -> dict:
    rows = []
    server, port = start_luigid(scratch / "luigid")
    try:
        for number_of_blocks in block_counts:
            for contender, port_arguments in (
                ("emflow local scheduler", []),
                ("emflow luigid, 2 worker processes", ["--scheduler-port", str(port)]),
            ):
                folder = scratch / f"{'luigid' if port_arguments else 'local'}-{number_of_blocks}"
                config = write_trivial_config(folder, number_of_blocks)
                child_workers = 2 if port_arguments else workers
                run = measure_in_child("--child-emflow", str(config), "--workers", str(child_workers), *port_arguments)
                row = {"contender": contender, "blocks": number_of_blocks, "workers": child_workers, **run}
                if not port_arguments and number_of_blocks == max(block_counts):
                    row["noop_rerun_seconds"] = measure_in_child("--child-emflow", str(config), "--workers", str(child_workers))[
                        "process_seconds"
                    ]
                rows.append(row)
                shutil.rmtree(folder)
    finally:
        stop_luigid(server.pid)
    for number_of_blocks in plain_block_counts:
        folder = scratch / f"plain-{number_of_blocks}"
        run = measure_in_child("--child-plain", str(folder), "--blocks", str(number_of_blocks), "--workers", str(workers))
        rows.append({"contender": "plain Luigi, a task per block", "blocks": number_of_blocks, "workers": workers, **run})
        shutil.rmtree(folder, ignore_errors=True)
    for row in rows:
        row["ms_per_block_stage"] = 1000 * row["seconds"] / (row["blocks"] * NUMBER_OF_STAGES)
    scaling = {}
    for contender in dict.fromkeys(row["contender"] for row in rows):
        own = sorted((row for row in rows if row["contender"] == contender), key=lambda row: row["blocks"])
        if len(own) >= 2:
            scaling[contender] = {
                "blocks_ratio": own[-1]["blocks"] / own[0]["blocks"],
                "time_ratio": own[-1]["seconds"] / own[0]["seconds"],
            }
    return {"stages": NUMBER_OF_STAGES, "rows": rows, "scaling": scaling}


def run(quick: bool = False) -> dict:
    """The benchmark at the issue's sizes (5,000 and 20,000 blocks), or small ones with `quick`."""
    RESULTS.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(dir=RESULTS) as scratch:
        if quick:
            return benchmark([500, 2000], [100, 200], 1, Path(scratch))
        return benchmark([5000, 20000], [250, 500], 1, Path(scratch))


def markdown(results: dict) -> str:
    return "\n".join(
        [
            "### Orchestration overhead",
            "",
            f"Trivial block work, {results['stages']} chained block-wise stages, so the time is emflow's own: scheduling, "
            "completion records, logs. Wall time of the task graph in a fresh process (after imports).",
            "",
            table(results),
        ]
    )


def table(results: dict) -> str:
    lines = [
        "| contender | blocks | stages × blocks | workers | run s | ms per block-stage |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for row in results["rows"]:
        lines.append(
            f"| {row['contender']} | {row['blocks']:,} | {row['blocks'] * results['stages']:,} | {row['workers']} | "
            f"{row['seconds']:.1f} | {row['ms_per_block_stage']:.3f} |"
        )
    lines.append("")
    for contender, scaling in results["scaling"].items():
        lines.append(f"- {contender}: {scaling['blocks_ratio']:.0f}× the blocks took {scaling['time_ratio']:.2f}× the time.")
    for row in results["rows"]:
        if "noop_rerun_seconds" in row:
            lines.append(f"- No-op rerun of the finished {row['blocks']:,}-block run, fresh process: {row['noop_rerun_seconds']:.2f} s.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, nargs="+", default=[5000, 20000])
    parser.add_argument("--plain-blocks", type=int, nargs="*", default=[500, 1000])
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--json", type=Path, default=RESULTS / "orchestration.json")
    parser.add_argument("--child-emflow", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--child-plain", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--scheduler-port", type=int, help=argparse.SUPPRESS)
    arguments = parser.parse_args(argv)
    if arguments.child_emflow:
        print(json.dumps(run_emflow(arguments.child_emflow, arguments.workers, arguments.scheduler_port)))
        return 0
    if arguments.child_plain:
        print(json.dumps(run_plain(arguments.child_plain, arguments.blocks[0], arguments.workers)))
        return 0
    RESULTS.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(dir=RESULTS) as scratch:
        results = benchmark(arguments.blocks, arguments.plain_blocks, arguments.workers, Path(scratch))
    arguments.json.parent.mkdir(parents=True, exist_ok=True)
    arguments.json.write_text(json.dumps(results, indent=2))
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
