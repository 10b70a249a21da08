"""Bounded memory: peak RSS per stage at two volume sizes 8x apart, with the same block shape.

emflow runs (`benchmarks.end_to_end`, emflow only, 2 worker processes) on the FlyEM dev cube tiled
1x and 2x per axis (7.8 and 62.5 MVox) with blocks of 32x64x64, so that both volumes have interior
blocks (a block at the volume border reads less halo, and so needs less memory). Every task records
the peak resident set of its process (Luigi forks a process per task with 2 workers, so that is the
task's own peak, plus the interpreter and libraries it inherits); the table gives the largest per
stage. Block-wise stages should not grow with the volume; global stages hold O(edges) or O(nodes).

Usage: python -m benchmarks.memory [--json PATH]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from . import end_to_end

RESULTS = Path(__file__).resolve().parent / "results"
SCALES = (1, 2)
BLOCK_SHAPE = [32, 64, 64]


def run(quick: bool = False) -> dict:
    """Peak RSS by stage at each scale (`quick` changes nothing: both sizes are needed)."""
    runs = {}
    for scale in SCALES:
        result = end_to_end.run(scale=scale, repeats=1, skip_elf=True, block_shape=BLOCK_SHAPE, segmentation_only=False)
        runs[scale] = {
            "megavoxels": result["volume"]["megavoxels"],
            "number_of_blocks": _number_of_blocks(result),
            "peak_rss_bytes_by_stage": result["emflow"]["runs"][-1]["peak_rss_bytes_by_stage"],
            "block_shape": result["block_shape"],
        }
    return {"runs": runs}


def _number_of_blocks(result: dict) -> int:
    count = 1
    for size, block in zip(result["volume"]["shape"], result["block_shape"]):
        count *= -(-size // block)
    return count


def markdown(results: dict) -> str:
    small, large = (results["runs"][scale] for scale in sorted(results["runs"]))
    lines = [
        "### Peak memory per stage",
        "",
        f"Largest peak RSS (MiB) of a process running a task of the stage, blocks {'x'.join(map(str, small['block_shape']))}, "
        "2 worker processes. Block-wise stages should stay flat as the volume grows 8x; global ones hold O(edges) or O(nodes).",
        "",
        f"| stage | peak, {small['megavoxels']:.1f} MVox ({small['number_of_blocks']} blocks) | peak, {large['megavoxels']:.1f} MVox "
        f"({large['number_of_blocks']} blocks) | task's own, {small['megavoxels']:.1f} MVox | task's own, {large['megavoxels']:.1f} MVox |",
        "|---|---:|---:|---:|---:|",
    ]
    for stage, small_peak in small["peak_rss_bytes_by_stage"].items():
        large_peak = large["peak_rss_bytes_by_stage"].get(stage)
        if large_peak:
            lines.append(
                f"| {stage} | {small_peak['peak'] / 2**20:.0f} | {large_peak['peak'] / 2**20:.0f} | "
                f"{small_peak['growth'] / 2**20:.0f} | {large_peak['growth'] / 2**20:.0f} |"
            )
    lines += [
        "",
        "Peak: the process's peak RSS, which includes what a forked worker inherits from the scheduling process. "
        "Task's own: the largest rise of a process's RSS above its level when a task of the stage started.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, default=RESULTS / "memory.json")
    arguments = parser.parse_args(argv)
    results = run()
    end_to_end.write_results(arguments.json, results)
    print(markdown(results))


if __name__ == "__main__":
    main()
