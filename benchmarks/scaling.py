"""Scaling with the volume: emflow's MVox/s and memory from 62.5 MVox to 1 GVox, beside elf's.

The inputs are those of `benchmarks.end_to_end` (the FlyEM dev cube tiled and mirrored, its
boundary map derived from the tiled groundtruth), at several tilings:
- emflow (`python -m emflow run`, 2 worker processes, blocks 64x128x128 at every size, so that a
  block costs the same everywhere) at 62.5, 125, 250, 500 and 1000 MVox;
- elf (`simple_multicut_workflow`, in memory, 2 threads) at 7.8, 62.5, 125 and 250 MVox, each size
  only while the line through its peak RSS at the two sizes before predicts less than
  `ELF_MEMORY_FRACTION` of this machine's memory: the benchmark never drives the machine into the
  out-of-memory killer. The volume at which elf would need all of the machine's memory is
  extrapolated from that line through its two largest sizes.

emflow runs 3 times at each size, the median reported: "vs first" compares each size's figure
with the smallest size's, and one run varied by 10 % within a sitting, the goal's whole margin.
The runs go round the sizes (62.5 MVox to 1 GVox, then again), so that a slow spell of the machine
falls on every size alike.
elf runs once per size (it is the reference for memory, not for linearity). Per size:
wall time (process start to exit), MVox/s, the largest peak RSS of any process of the run (the runs do not sample their
tree's PSS, which would slow them), and ARAND / VOI against the tiled groundtruth; for emflow also the task seconds of
each stage summed over its blocks, as MVox/s, so that a stage whose cost per block grows with the
volume shows. "vs first" is a size's MVox/s over that of the smallest emflow size (goal: within
10 %); a second table splits emflow's MVox/s at each size into the task seconds per MVox (the work
per voxel) and its workers' occupancy (task seconds over wall seconds times workers), beside what
the machine did during the runs (cores busy, IO wait, stolen: `end_to_end.machine_shares`).
Writes a figure of MVox/s and peak RSS against the volume (`--figure`).

Usage: python -m benchmarks.scaling [--quick] [--out DIR] [--json PATH] [--figure PATH]
"""

from __future__ import annotations

import argparse
import math
import shutil
import tempfile
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from emflow.report.figures import png_bytes
from emflow.storage.volumes import open_volume

from . import end_to_end

RESULTS_DIR = end_to_end.RESULTS_DIR
BLOCK_SHAPE = [64, 128, 128]
WORKERS = 2
EMFLOW_TILES = ((2, 2, 2), (2, 2, 4), (2, 4, 4), (4, 4, 4), (4, 4, 8))
ELF_TILES = ((1, 1, 1), (2, 2, 2), (2, 2, 4), (2, 4, 4))
QUICK_EMFLOW_TILES = ((1, 1, 1), (1, 1, 2))
QUICK_ELF_TILES = ((1, 1, 1), (1, 1, 2))
# emflow runs this often at every size, median reported: one run varied by 10 % within a sitting
# (8.3-9.4 s at 62.5 MVox), as much as the goal's margin, at 500 MVox and 1 GVox as at 62.5 MVox.
# The three runs at 1 GVox take about 7 minutes.
EMFLOW_REPEATS = 3
# elf runs at a size only while its predicted peak stays under this share of the machine's memory:
# its peak RSS was 21.9 GiB at 500 MVox on a 23.5 GiB machine (issue 17), too close to the limit.
ELF_MEMORY_FRACTION = 0.6


def _linear_fit(points: list[tuple[float, float]]) -> tuple[float, float]:
    """Intercept and slope of the line through the last two (x, y) points."""
    (x0, y0), (x1, y1) = points[-2:]
    slope = (y1 - y0) / (x1 - x0)
    return y0 - slope * x0, slope


def run(quick: bool = False, out: Path | None = None, repeats: int | None = None) -> dict:
    """Run every contender at its sizes (see the module docstring) and return the results;
    `repeats`: emflow's runs at each size (default `EMFLOW_REPEATS`, `--quick`: 1)."""
    emflow_tiles = QUICK_EMFLOW_TILES if quick else EMFLOW_TILES
    elf_tiles = QUICK_ELF_TILES if quick else ELF_TILES
    machine = end_to_end.machine_description()
    memory_bytes = machine["memory_gib"] * 2**30
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    out_dir = (out or Path(tempfile.mkdtemp(prefix="scaling-", dir=RESULTS_DIR))).resolve()
    results: dict = {
        "machine": machine,
        "block_shape": BLOCK_SHAPE,
        "workers": WORKERS,
        "elf_memory_fraction": ELF_MEMORY_FRACTION,
        "emflow_repeats": repeats or (1 if quick else EMFLOW_REPEATS),
        "sizes": [],
    }
    elf_peaks: list[tuple[float, float]] = []
    try:
        prepared = []
        for tiles in sorted(set(emflow_tiles) | set(elf_tiles), key=lambda tiles: (math.prod(tiles), tiles)):
            input_path = end_to_end.prepare_input(out_dir, tiles, tuple(BLOCK_SHAPE))
            shape = tuple(open_volume(input_path, "neuron_ids").shape)
            run_dir = out_dir / f"run_x{end_to_end.tiles_name(tiles)}"
            run_dir.mkdir(exist_ok=True)
            prepared.append(({"tiles": tiles, "shape": shape, "megavoxels": math.prod(shape) / 1e6}, input_path, run_dir))
        # emflow's runs go round the sizes, smallest to largest, once per repetition, so that a slow
        # spell of the machine over the half hour they take falls on every size alike, not on the one
        # measured then: at stop 37 the 62.5 MVox runs, all three made first, were the sitting's
        # slowest per task second. What a run leaves unwritten is written back before the next one
        # (`end_to_end.run_measured`), so a size does not pay for the larger one before it.
        # Each size's command (its config written once), and its runs.
        emflow_sizes = [
            (size, end_to_end.emflow_command(input_path, run_dir, BLOCK_SHAPE, WORKERS)[0], run_dir)
            for size, input_path, run_dir in prepared
            if size["tiles"] in emflow_tiles
        ]
        emflow_runs: dict[tuple[int, ...], list[dict]] = {size["tiles"]: [] for size, _, _ in emflow_sizes}
        for repetition in range(results["emflow_repeats"]):
            for size, command, run_dir in emflow_sizes:
                print(f"{size['megavoxels']:.1f} MVox: emflow, run {repetition + 1} of {results['emflow_repeats']} ...", flush=True)
                emflow_runs[size["tiles"]].append(end_to_end.run_emflow_once(command, run_dir))
        for size, input_path, run_dir in prepared:
            if size["tiles"] in emflow_runs:
                segmentation = open_volume(run_dir / "emflow.zarr", "segmentation")
                size["emflow"] = end_to_end.summarize(emflow_runs[size["tiles"]], segmentation, input_path)
            if size["tiles"] in elf_tiles:
                size["elf"] = _run_elf(input_path, run_dir, size["megavoxels"], elf_peaks, memory_bytes)
                if size["elf"]["status"] == "ok":
                    elf_peaks.append((size["megavoxels"], size["elf"]["max_rss_bytes"]))
            results["sizes"].append(size)
            # Every size's input is on disk while emflow goes round them (5.2 GB from 62.5 MVox to
            # 1 GVox); each size's are removed once measured.
            shutil.rmtree(run_dir)
            shutil.rmtree(input_path)
        if len(elf_peaks) >= 2:
            intercept, slope = _linear_fit(elf_peaks)
            results["elf_memory_line"] = {
                "fitted_on_megavoxels": [point[0] for point in elf_peaks[-2:]],
                "bytes_per_megavoxel": slope,
                "intercept_bytes": intercept,
                "megavoxels_at_machine_memory": (memory_bytes - intercept) / slope if slope > 0 else None,
            }
    finally:
        if out is None:
            shutil.rmtree(out_dir)
    return results


def _run_elf(input_path: Path, run_dir: Path, megavoxels: float, elf_peaks: list[tuple[float, float]], memory_bytes: float) -> dict:
    if len(elf_peaks) >= 2:
        intercept, slope = _linear_fit(elf_peaks)
        predicted = intercept + slope * megavoxels
        if predicted > ELF_MEMORY_FRACTION * memory_bytes:
            return {"status": f"not run: predicted peak {predicted / 2**30:.1f} GiB", "predicted_peak_bytes": predicted}
    print(f"{megavoxels:.1f} MVox: elf ...", flush=True)
    command = end_to_end.elf_command(input_path, run_dir, BLOCK_SHAPE, WORKERS)
    try:
        elf_run = end_to_end.run_elf_once(command, run_dir)
    except end_to_end.ElfUnavailable as error:
        return {"status": f"unavailable: {error}"}
    return {"version": elf_run["version"], **end_to_end.summarize([elf_run], open_volume(run_dir / "elf.zarr", "segmentation"), input_path)}


def _decomposition(emflow_sizes: list[dict], workers: int) -> list[str]:
    """Lines of a paragraph and a table that split emflow's MVox/s at each size into the work per voxel (task
    seconds of all stages, summed over blocks, per MVox) and how busy its workers were (task
    seconds over wall seconds times workers), both of the last run, beside what the machine did
    meanwhile (`end_to_end.machine_shares`, median over the size's runs)."""
    lines = [
        "emflow's MVox/s split into its work per voxel and its workers' occupancy (last run at each size: task seconds of all "
        f"stages, summed over blocks, per MVox; task seconds / (wall seconds x {workers} workers)), beside the machine during "
        "the size's runs (shares of all cores' time, median over the runs; IO stalled: share of the wall time in which every "
        "runnable task waited for IO). A size whose work per voxel grows costs more per block; one whose workers are busier "
        "spreads what a run pays once (start-up, the global stages, the report) over more blocks.",
        "",
        "| MVox | task s per MVox | workers busy | cores busy | IO wait | stolen | IO stalled |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for size in emflow_sizes:
        last = size["emflow"]["runs"][-1]
        task_seconds = sum(last["task_seconds_by_stage"].values())
        occupancy = task_seconds / (last["measurement"]["wall_seconds"] * workers)
        machine = end_to_end.machine_cells(size["emflow"].get("machine"), ("busy", "iowait", "steal", "io_stalled"))
        lines.append(
            f"| {size['megavoxels']:.1f} | {task_seconds / size['megavoxels']:.3f} | {occupancy:.0%} | " + " | ".join(machine) + " |"
        )
    return lines


def _measured_sizes(results: dict, contender: str) -> list[dict]:
    """The sizes at which `contender` ("emflow" or "elf") ran to the end."""
    return [size for size in results["sizes"] if size.get(contender, {}).get("status") == "ok"]


def _contender_cells(result: dict) -> list[str]:
    """Table cells of one contender at one size: wall s, MVox/s, max RSS GiB and ARAND; where it
    did not run, its status (or "-") and dashes."""
    if result.get("status") != "ok":
        return [result.get("status", "-"), "-", "-", "-"]
    return [
        f"{result['wall_seconds_median']:.1f}",
        f"{result['mvox_per_second']:.2f}",
        f"{result['max_rss_bytes'] / 2**30:.2f}",
        f"{result['quality']['adapted_rand_error']:.4f}",
    ]


def markdown(results: dict, figure_name: str | None = None) -> str:
    """A Markdown section with the tables of `results`, showing the PNG `figure_name` (beside the page) if given."""
    emflow_sizes = _measured_sizes(results, "emflow")
    first_rate = emflow_sizes[0]["emflow"]["mvox_per_second"] if emflow_sizes else None
    lines = [
        "### Scaling with the volume",
        "",
        f"FlyEM dev cube tiled and mirrored as in the end-to-end benchmark, {results['workers']} workers/threads, emflow blocks "
        f"{'x'.join(map(str, results['block_shape']))} at every size; wall time process start to exit, for emflow the median of "
        f"{results['emflow_repeats']} runs at each size (made in rounds over the sizes, smallest to largest), for elf one run; "
        f"vs first: MVox/s over emflow's at its smallest size. elf runs while the line through its peak RSS at its two sizes before "
        f"predicts under {results['elf_memory_fraction']:.0%} of the machine's {results['machine']['memory_gib']} GiB.",
        "",
        *([f"![MVox/s and largest peak RSS against the volume, emflow and elf]({figure_name})", ""] if figure_name else []),
        "| MVox | tiles | emflow s | emflow MVox/s | vs first | emflow max RSS GiB | emflow ARAND | elf s | elf MVox/s | elf max RSS GiB | "
        "elf ARAND | emflow / elf speed |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for size in results["sizes"]:
        emflow, elf = size.get("emflow", {}), size.get("elf", {})
        cells = [f"{size['megavoxels']:.1f}", "x".join(map(str, size["tiles"]))]
        emflow_cells = _contender_cells(emflow)
        # "vs first", after emflow's MVox/s.
        emflow_cells.insert(2, f"{emflow['mvox_per_second'] / first_rate:.2f}" if emflow.get("status") == "ok" else "-")
        cells += emflow_cells + _contender_cells(elf)
        both = emflow.get("status") == "ok" and elf.get("status") == "ok"
        cells.append(f"{emflow['mvox_per_second'] / elf['mvox_per_second']:.2f}x" if both else "-")
        lines.append("| " + " | ".join(cells) + " |")
    line = results.get("elf_memory_line")
    if line:
        at_limit = line["megavoxels_at_machine_memory"]
        lines += [
            "",
            f"- elf's peak RSS grows {line['bytes_per_megavoxel'] * 100 / 2**30:.2f} GiB per 100 MVox (line through "
            f"{' and '.join(f'{value:.1f}' for value in line['fitted_on_megavoxels'])} MVox); it would need the machine's "
            f"{results['machine']['memory_gib']} GiB at about {at_limit:,.0f} MVox."
            if at_limit
            else "- elf's peak RSS did not grow between its two largest sizes.",
        ]
    if emflow_sizes:
        largest = max(size["emflow"]["max_rss_bytes"] for size in emflow_sizes)
        lines.append(f"- emflow's largest peak RSS of any process, over all sizes: {largest / 2**30:.2f} GiB.")
        lines += ["", *_decomposition(emflow_sizes, results["workers"])]
        largest_seconds = emflow_sizes[-1]["emflow"]["runs"][-1]["task_seconds_by_stage"]
        stages = sorted(largest_seconds, key=largest_seconds.__getitem__, reverse=True)
        lines += [
            "",
            "emflow, per stage: MVox/s of the whole volume over the stage's task seconds summed over its blocks (completion records "
            "of the last run at each size); "
            "a stage whose cost per block grows with the volume loses MVox/s along its row. Stages by task time at the largest size.",
            "",
            "| stage | " + " | ".join(f"{size['megavoxels']:.1f} MVox" for size in emflow_sizes) + " |",
            "|---|" + "---:|" * len(emflow_sizes),
        ]
        for stage in stages:
            rates = []
            for size in emflow_sizes:
                seconds = size["emflow"]["runs"][-1]["task_seconds_by_stage"].get(stage)
                rates.append(f"{size['megavoxels'] / seconds:.1f}" if seconds else "-")
            lines.append(f"| {stage} | " + " | ".join(rates) + " |")
    return "\n".join(lines)


def figure(results: dict) -> bytes:
    """PNG: MVox/s (left) and the largest peak RSS (right) against the volume, emflow and elf."""
    canvas = Figure(figsize=(7.0, 2.8))
    speed_axis, memory_axis = canvas.subplots(1, 2)
    for name, sizes, style in (("emflow", _measured_sizes(results, "emflow"), "o-"), ("elf", _measured_sizes(results, "elf"), "s--")):
        volumes = [size["megavoxels"] for size in sizes]
        speed_axis.plot(volumes, [size[name]["mvox_per_second"] for size in sizes], style, label=name)
        memory_axis.plot(volumes, [size[name]["max_rss_bytes"] / 2**30 for size in sizes], style, label=name)
    line = results.get("elf_memory_line")
    if line and line["megavoxels_at_machine_memory"]:
        largest = max(size["megavoxels"] for size in results["sizes"])
        # Many points: a straight line is a curve on the logarithmic volume axis.
        volumes = np.geomspace(min(size["megavoxels"] for size in results["sizes"]), max(largest, line["megavoxels_at_machine_memory"]), 64)
        memory_axis.plot(
            volumes,
            [(line["intercept_bytes"] + line["bytes_per_megavoxel"] * volume) / 2**30 for volume in volumes],
            ":",
            color="gray",
            label="elf, extrapolated",
        )
    memory_axis.axhline(results["machine"]["memory_gib"], color="black", linewidth=0.8, label="machine memory")
    for axis, label in ((speed_axis, "MVox/s"), (memory_axis, "largest peak RSS (GiB)")):
        axis.set_xscale("log")
        axis.set_xlabel("volume (MVox)", fontsize=8)
        axis.set_ylabel(label, fontsize=8)
        axis.set_ylim(bottom=0)
        axis.tick_params(labelsize=7)
        axis.legend(fontsize=7)
    canvas.tight_layout()
    return png_bytes(canvas)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="7.8 and 15.6 MVox only: a look in a minute, not figures to quote")
    parser.add_argument("--out", type=Path, help="folder for inputs and outputs (default: a temporary folder under benchmarks/results)")
    parser.add_argument(
        "--json", type=Path, default=RESULTS_DIR / "scaling.json", help="raw results (default benchmarks/results/scaling.json)"
    )
    parser.add_argument("--figure", type=Path, default=RESULTS_DIR / "scaling.png", help="figure (default benchmarks/results/scaling.png)")
    arguments = parser.parse_args(argv)
    results = run(arguments.quick, arguments.out)
    print(markdown(results))
    end_to_end.write_results(arguments.json, results)
    arguments.figure.write_bytes(figure(results))
    print(f"results written to {arguments.json}, figure to {arguments.figure}")


if __name__ == "__main__":
    main()
