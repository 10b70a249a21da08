"""End-to-end throughput (MVox/s) and peak memory of emflow, side by side with elf's in-core multicut.

The volume is the FlyEM medulla dev cube (../shared/data/flyem_medulla_dev/volume.h5, 125x250x250,
10 nm isotropic; see its SOURCE.md) tiled `--scale` times along each axis (default 2: 250x500x500 =
62.5 MVox; `--scale 4 4 8`: 500x1000x2000 = 1 GVox). Every other copy is mirrored, so that
neighbouring copies meet face to face and neurons continue across the joins instead of being cut off
mid-object; the groundtruth is tiled the same way with ids made unique per copy, and the boundary
map is derived from the tiled groundtruth
(`boundaries_from_labels(gt, sigma=1.0, noise=0.1, seed=0)`). Because ids differ across a join, the
join is a membrane in both the groundtruth and the boundary map.

Contenders, each in a child process of its own and with the same CPU budget (`--workers`):
- emflow: `python -m emflow run CONFIG --workers N`, blockwise through Luigi (N worker processes),
  with `--block-shape` or else emflow's "auto" block shape for the volume (`auto_block_shape` on its
  shape and voxel size: 64x128x128 at 10 nm), which is also the input's chunk shape; halo "auto".
- elf: `simple_multicut_workflow` of python-elf (the `bench` extra) on the whole volume in memory,
  with N threads and emflow's default parameters (benchmarks/elf_multicut.py). If elf cannot be
  imported, it is reported as unavailable with the reason, and emflow still runs.

Each contender runs `--repeats` times (default 3), alternating with the other. Its time is the
median over the runs of the wall time of its process, from start to exit, including interpreter
start-up, reading the boundary map and writing the segmentation; before each run the data that
earlier runs left in the page cache unwritten is written back (`os.sync`, not timed). Memory, the largest over the runs,
is reported two ways:
- max RSS: the largest peak resident set of any single process of the run (the child and every
  descendant it waited for, such as Luigi's forked task processes), exact, from wait4's rusage
  (ru_maxrss on Linux covers the waited-for descendants).
- peak PSS of the process tree: the largest sum of proportional set sizes over all processes of
  the run alive at the same time, sampled from /proc every 0.2 s. It counts pages that forked
  processes share once; being sampled, it can miss peaks shorter than the interval. Sampling
  costs the run time (5 % of emflow's at 62.5 MVox on 2 cores), so it comes from one more run of
  each contender after the timed ones, which is not timed.
Quality is scored against the tiled groundtruth with emflow.evaluation.evaluate (groundtruth label 0
ignored), so that the speed comparison is read together with what each contender delivers. What the
machine did during each timed run is kept beside it (`machine_shares`, from /proc/stat and
/proc/pressure/io): the share of all cores' time busy, idle, waiting for IO and stolen by the
hypervisor, which shows a run that waited for the disk or lost its cores to another guest (not
one slowed otherwise, e.g. by cores that ran slower).

Per block-wise stage of emflow's last run: its task seconds summed over blocks (from the completion
records: the block's work and the digests of what it wrote, not scheduling) and its throughput
(volume voxels / task seconds), next to a physical reference measured right after that run on its
output (`stage_io_reference`): what the stage would cost if it computed nothing, i.e. per block,
reading and decoding every array region its StageSpec declares (halos included, inputs and output
volumes alike) and encoding and writing the chunks its blocks write, into copies of the output
arrays with the same zarr metadata (chunks, codecs), and its partial files, with the stages' own
writers, which take each file's digest as they write it (its record's digest); summed over
blocks, in one process. The ratio task s / reference s is how far the stage is from its IO.

Usage: python benchmarks/end_to_end.py [--scale 2 | --scale Z Y X] [--workers 2] [--block-shape Z Y X] [--repeats 3]
                                      [--out DIR] [--skip-elf] [--json PATH]
Prints a table and writes benchmarks/results/end_to_end.json. Needs the `bench` extra for elf
(pip install -e '.[bench]'); Linux only (/proc).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

import h5py
import numpy as np
import tomli_w
import zarr

from emflow.blocking import Box, face_slabs
from emflow.boundaries import scaled_with_noise, smoothed_boundary_mask
from emflow.config import default_config
from emflow.evaluation import evaluate
from emflow.storage.chunk_io import read_selection, write_selection
from emflow.storage.geometry import auto_block_shape
from emflow.storage.volumes import open_volume, opened_volume, read_region, read_resolution, write_volume
from emflow.targets import JournalReader, atomic_save_npy, atomic_save_npz
from emflow.tasks.context import Run
from emflow.tasks.spec import BOX, StageSpec
from emflow.workflows.segmentation import load_run

BENCHMARKS_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCHMARKS_DIR / "results"
SOURCE_PATH = BENCHMARKS_DIR.parents[1] / "shared" / "data" / "flyem_medulla_dev" / "volume.h5"
ELF_SCRIPT = BENCHMARKS_DIR / "elf_multicut.py"
EXIT_ELF_UNAVAILABLE = 3
MEMORY_SAMPLE_SECONDS = 0.2
# Context slices of a slab of the boundary map (boundaries_by_slabs): more than the reach of
# bioimage-cpp's Gaussian of sigma 1 plus the boundary mask's one voxel (on the dev cube, 4 is the
# fewest that give the whole-volume map bitwise).
SLAB_HALO = 8
QUALITY_KEYS = ("adapted_rand_error", "rand_precision", "rand_recall", "voi_split", "voi_merge")


@dataclass
class Measurement:
    """One child process run to completion; memory in bytes."""

    exit_code: int
    wall_seconds: float
    max_rss_bytes: int
    peak_tree_pss_bytes: int | None  # None: not sampled
    # The machine while it ran (`machine_shares`): shares of all cores' time busy, idle, waiting
    # for IO and stolen by the hypervisor, and of the wall time in which every runnable task
    # stalled on IO (None where the kernel keeps no pressure stall information).
    machine: dict[str, float | None] | None = None


# Fields of /proc/stat's "cpu" line (USER_HZ ticks of all cores): user nice system idle iowait irq softirq steal.
_CPU_FIELDS = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")


def machine_counters() -> tuple[dict[str, int], int | None]:
    """The cores' time counters (/proc/stat) and the microseconds every task stalled on IO
    (/proc/pressure/io, "full"; None without it)."""
    ticks = dict(zip(_CPU_FIELDS, map(int, Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9])))
    try:
        full = Path("/proc/pressure/io").read_text().splitlines()[1]
    except (OSError, IndexError):
        return ticks, None
    return ticks, int(full.rsplit("total=", 1)[1])


@contextmanager
def machine_during() -> Iterator[dict]:
    """A dict that, once the block exits, holds `machine_shares` over the block's time."""
    shares: dict = {}
    before, started = machine_counters(), time.perf_counter()
    try:
        yield shares
    finally:
        shares.update(machine_shares(before, machine_counters(), time.perf_counter() - started))


def machine_shares(before: tuple[dict[str, int], int | None], after: tuple[dict[str, int], int | None], wall_seconds: float) -> dict:
    """What the machine did between two `machine_counters` readings `wall_seconds` apart: shares
    of all cores' time busy (user, system, interrupts), idle, waiting for IO (idle with IO
    outstanding) and stolen (a virtual machine's cores running another guest), and the share of
    the wall time in which every runnable task was stalled on IO (None without /proc/pressure).

    A run that waited for the disk or lost its cores to another guest shows it here, so that a
    figure it moved is read as the machine's and not the program's."""
    (ticks_before, stalled_before), (ticks_after, stalled_after) = before, after
    delta = {field: ticks_after[field] - ticks_before[field] for field in _CPU_FIELDS}
    total = max(1, sum(delta.values()))
    busy = delta["user"] + delta["nice"] + delta["system"] + delta["irq"] + delta["softirq"]
    stalled = None if stalled_before is None or stalled_after is None else (stalled_after - stalled_before) / 1e6 / max(wall_seconds, 1e-9)
    return {
        "busy": busy / total,
        "idle": delta["idle"] / total,
        "iowait": delta["iowait"] / total,
        "steal": delta["steal"] / total,
        "io_stalled": stalled,
    }


def as_tiles(scale: int | Sequence[int]) -> tuple[int, ...]:
    """Copies of the dev cube per axis, z, y, x: an int is the same number along each axis."""
    tiles = (scale,) * 3 if isinstance(scale, int) else tuple(int(copies) for copies in scale)
    if len(tiles) != 3 or min(tiles) < 1:
        raise ValueError(f"the tiling needs one number of copies >= 1 per axis (z, y, x), got {scale}")
    return tiles


def tiles_name(tiles: Sequence[int]) -> str:
    """The tiling in a file name: "2" for 2x2x2, "4x4x8" otherwise."""
    return str(tiles[0]) if len(set(tiles)) == 1 else "x".join(map(str, tiles))


def tiling_description(tiles: Sequence[int]) -> str:
    """How the dev cube was tiled, in words: "tiled 2x per axis" or "tiled 4x4x8 (z, y, x)"."""
    return f"tiled {tiles[0]}x per axis" if len(set(tiles)) == 1 else f"tiled {tiles_name(tiles)} (z, y, x)"


def mirrored_groundtruth_tiling(neuron_ids: np.ndarray, factor: int | Sequence[int]) -> np.ndarray:
    """`neuron_ids` repeated `factor` times along each axis (or `factor[axis]` times along each),
    odd-numbered copies mirrored along that axis.

    Each copy's non-zero ids are shifted by copy number * (max id + 1), so that no id occurs in two
    copies; 0 (unlabelled) stays 0. The dtype widens if the shifted ids need it.
    """
    factors = (factor,) * neuron_ids.ndim if isinstance(factor, int) else tuple(factor)
    id_stride = int(neuron_ids.max()) + 1
    dtype = np.promote_types(neuron_ids.dtype, np.min_scalar_type(math.prod(factors) * id_stride))
    tiled = np.empty(tuple(extent * copies for extent, copies in zip(neuron_ids.shape, factors)), dtype=dtype)
    for copy_number, copy_index in enumerate(np.ndindex(*factors)):
        copy = neuron_ids[tuple(slice(None, None, -1) if index % 2 else slice(None) for index in copy_index)]
        target = tuple(slice(index * extent, (index + 1) * extent) for index, extent in zip(copy_index, neuron_ids.shape))
        tiled[target] = np.where(copy != 0, copy.astype(dtype) + dtype.type(copy_number * id_stride), dtype.type(0))
    return tiled


def default_block_shape(scale: int | Sequence[int]) -> list[int]:
    """emflow's "auto" block shape for the dev cube tiled `scale` times per axis (see `as_tiles`):
    what a run gets by default."""
    with h5py.File(SOURCE_PATH, "r") as source:
        dataset = source["labels/neuron_ids"]
        shape = tuple(extent * copies for extent, copies in zip(dataset.shape, as_tiles(scale)))
        resolution = tuple(float(value) for value in dataset.attrs["resolution_nm_zyx"])
    return list(auto_block_shape(shape, resolution))


def prepare_input(out_dir: Path, scale: int | Sequence[int], chunks: tuple[int, ...]) -> Path:
    """The tiled groundtruth and its boundary map as a zarr group (reused if already in `out_dir`)."""
    tiles = as_tiles(scale)
    input_path = out_dir / f"input_x{tiles_name(tiles)}_chunks{'x'.join(map(str, chunks))}.zarr"
    if input_path.exists():
        return input_path
    with h5py.File(SOURCE_PATH, "r") as source:
        neuron_ids = source["labels/neuron_ids"][...]
        resolution = [float(value) for value in source["labels/neuron_ids"].attrs["resolution_nm_zyx"]]
    groundtruth = mirrored_groundtruth_tiling(neuron_ids, tiles)
    # Written under a temporary name and renamed, so that an interrupted run never leaves half an input.
    partial = out_dir / f".{input_path.name}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    write_volume(partial, "neuron_ids", groundtruth, resolution=resolution, chunks=chunks)
    scratch = out_dir / f".{input_path.name}.boundaries"
    boundaries = boundaries_by_slabs(groundtruth, np.lib.format.open_memmap(scratch, "w+", np.float32, groundtruth.shape), chunks[0])
    write_volume(partial, "boundaries", boundaries, resolution=resolution, chunks=chunks)
    del boundaries
    scratch.unlink()
    os.replace(partial, input_path)
    return input_path


def boundaries_by_slabs(groundtruth: np.ndarray, out: np.ndarray, slab_depth: int) -> np.ndarray:
    """`boundaries_from_labels(groundtruth, sigma=1.0, noise=0.1, seed=0)` written into `out`
    (float32, the shape of `groundtruth`, e.g. a file-backed np.memmap), bitwise the same, computed
    in z slabs of `slab_depth` slices.

    The whole map in memory took 9.1 GB of peak RSS for 500 MVox, too much for 1 GVox on a 24 GB
    machine. Slabs give the same bytes: the smoothed boundary mask is local (a slab is computed with
    `SLAB_HALO` slices of context), the map is scaled by its maximum over all slabs in a second
    pass, and the noise is drawn from one generator slab after slab (`scaled_with_noise`; tests/
    test_benchmarks.py compares the result with the whole-volume map).
    """
    depth = groundtruth.shape[0]
    slabs = [(begin, min(begin + slab_depth, depth)) for begin in range(0, depth, slab_depth)]
    for begin, end in slabs:
        first, stop = max(begin - SLAB_HALO, 0), min(end + SLAB_HALO, depth)
        out[begin:end] = smoothed_boundary_mask(groundtruth[first:stop], sigma=1.0)[begin - first : end - first]
    maximum = max(out[begin:end].max() for begin, end in slabs)
    rng = np.random.default_rng(0)
    for begin, end in slabs:
        scaled_with_noise(out[begin:end], maximum, 0.1, rng)
    return out


def _process_tree(root_pid: int) -> list[int]:
    pids, pending = [], [root_pid]
    while pending:
        pid = pending.pop()
        pids.append(pid)
        try:
            for thread in Path(f"/proc/{pid}/task").iterdir():
                pending.extend(int(child) for child in (thread / "children").read_text().split())
        except OSError:  # the process exited while we looked
            continue
    return pids


def _pss_bytes(pid: int) -> int:
    try:
        rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return 0
    match = re.search(r"^Pss:\s+(\d+) kB", rollup, re.MULTILINE)
    return int(match.group(1)) * 1024 if match else 0


# Runs the measured command in a process forked from this small launcher and writes that
# process's rusage ru_maxrss (KiB) and its wall seconds, fork to exit, to a file. The benchmark does
# not exec the command itself because Linux carries ru_maxrss across execve: a child started
# straight from this (large) process would report this process's own peak if that were higher. The
# launcher's own start-up is not the command's: it starts without the site module (`-I -S`: 8 ms
# instead of 36 ms here, medians of 15, the site packages' .pth files most of it) and times the command itself.
_MEASURING_LAUNCHER = """
import os, sys, time
started = time.perf_counter()
pid = os.fork()
if pid == 0:
    os.execvp(sys.argv[2], sys.argv[2:])
_, status, usage = os.wait4(pid, 0)
wall_seconds = time.perf_counter() - started
with open(sys.argv[1], "w") as report:
    report.write(f"{usage.ru_maxrss} {wall_seconds!r}")
sys.exit(os.waitstatus_to_exitcode(status))
"""


def run_measured(command: list[str], log_path: Path, *, sample_pss: bool = False) -> Measurement:
    """Run `command` with stdout and stderr to `log_path`; see the module docstring for what is
    measured. `sample_pss`: also sample the process tree's PSS, which costs the run time (below)."""
    peak_tree_pss = 0
    finished = threading.Event()

    def sample_memory(launcher_pid: int) -> None:
        nonlocal peak_tree_pss
        while not finished.wait(MEMORY_SAMPLE_SECONDS):
            measured_pids = _process_tree(launcher_pid)[1:]
            peak_tree_pss = max(peak_tree_pss, sum(_pss_bytes(pid) for pid in measured_pids))

    rss_report = log_path.with_suffix(".maxrss")
    # Write back what earlier runs left dirty (or the benchmark itself, preparing inputs), so that
    # this run does not pay for it, as the other benchmarks do before each timed step: in the
    # scaling benchmark of 2026-12-02 02:39, whose 62.5 MVox runs each followed a 1 GVox run or
    # the writing of every size's input, they waited for IO in 15 % of the cores' time, against
    # 5 % in the end-to-end runs of the same sitting, and took 14.8 s against 11.3 s.
    os.sync()
    with open(log_path, "w") as log:
        with machine_during() as machine:
            launcher = subprocess.Popen(
                [sys.executable, "-I", "-S", "-c", _MEASURING_LAUNCHER, str(rss_report), *command], stdout=log, stderr=subprocess.STDOUT
            )
            # Sampling walks /proc for the whole process tree five times a second: on 2 cores that made
            # emflow's 62.5 MVox run 0.9 s (5 %) slower (17.5 s against 16.6 s, two runs each), so
            # timed runs do not sample.
            sampler = threading.Thread(target=sample_memory, args=(launcher.pid,), daemon=True)
            if sample_pss:
                sampler.start()
            exit_code = launcher.wait()
        finished.set()
        if sample_pss:
            sampler.join()
    max_rss_kib, wall_seconds = rss_report.read_text().split()
    return Measurement(
        exit_code=exit_code,
        wall_seconds=float(wall_seconds),
        max_rss_bytes=int(max_rss_kib) * 1024,
        peak_tree_pss_bytes=peak_tree_pss if sample_pss else None,
        machine=machine,
    )


def task_records(work_dir: Path):
    """(stage, finished, result) of every task of an emflow run, from its completion records: a
    block's journal line, a global stage's record, and a block-wise stage's own record (written
    once all its blocks are)."""
    status = work_dir / "status"
    for path in status.iterdir():
        if path.is_dir():
            for record in JournalReader(path).refresh().values():
                yield path.name, record.finished, record.result
        else:
            record = json.loads(path.read_text())
            yield path.stem, record["finished"], record["result"]


def task_start(finished: float, result: dict) -> float:
    """When a task started: its record's time less its seconds and those of the writes it did
    behind its work (`write_seconds`), which follow the work at once."""
    return finished - result.get("seconds", 0.0) - result.get("write_seconds", 0.0)


def _task_results(work_dir: Path):
    """(stage, result) of every task of an emflow run, from its completion records."""
    for stage, _, result in task_records(work_dir):
        yield stage, result


def emflow_task_seconds(work_dir: Path, fields: tuple[str, ...] = ("seconds", "write_seconds")) -> dict[str, float]:
    """Seconds spent on each stage's tasks, summed over blocks, from the completion records: by
    default their own and those of the writes a stage does behind its blocks (`write_seconds`);
    `fields`: other times the tasks record (`network_seconds`: `predict`'s forward passes)."""
    seconds: dict[str, float] = defaultdict(float)
    for stage, result in _task_results(work_dir):
        seconds[stage] += sum(result.get(field, 0.0) for field in fields)
    return dict(seconds)


def emflow_block_stage_spans(work_dir: Path) -> dict[str, float]:
    """Per block-wise stage, the seconds from its first block's start to its last record, from the
    completion records: with one worker, what the stage took including the writes a stage does
    behind its blocks (`write_seconds`, not in a block's `seconds`; `task_start`)."""
    spans = {}
    for path in (work_dir / "status").iterdir():
        if path.is_dir():
            records = list(JournalReader(path).refresh().values())
            if records:
                started = min(task_start(record.finished, record.result) for record in records)
                spans[path.name] = max(record.finished for record in records) - started
    return spans


def emflow_peak_rss_by_stage(work_dir: Path) -> dict[str, dict[str, int]]:
    """Per stage, from the records: the largest peak RSS (bytes) of a process running a task of it,
    and the largest growth of a process's RSS above what it had when the task started."""
    peaks: dict[str, dict[str, int]] = defaultdict(lambda: {"peak": 0, "growth": 0})
    for stage, result in _task_results(work_dir):
        if "peak_rss_bytes" in result:
            peaks[stage]["peak"] = max(peaks[stage]["peak"], result["peak_rss_bytes"])
            growth = result["peak_rss_bytes"] - (result.get("rss_at_start_bytes") or result["peak_rss_bytes"])
            peaks[stage]["growth"] = max(peaks[stage]["growth"], growth)
    return dict(peaks)


def stage_io_reference(config_path: Path, scratch: Path) -> dict[str, dict]:
    """Per block-wise stage of the finished emflow run of `config_path`: what its IO alone costs.

    Derived from the stage's spec, so that it follows the stages as they change: per block, every
    array it reads over a region (`Read.array`, with the region's halo, or its face slabs for a
    `faces` read; inputs as stored, output volumes as the run wrote them) is read and decoded, and the partial files of the blocks it
    reads linked partials of are loaded; then what the block wrote, read back from the run's output
    untimed, is encoded and written again, its volumes' chunks into arrays under `scratch` made
    with the same zarr metadata (chunk shape, codecs, fill value) and its partial file with the
    same writer; both writers take each file's digest as they write it, as in the run
    (`emflow.targets.atomic`), so the reference's writes cost what the stages' do. Global bundles
    and record results a block reads (a memory-mapped slice, a dict) are left out. Returns, per stage, the read, write and total seconds summed over blocks, and the
    number of blocks.
    """
    run = load_run(str(config_path))
    references = {}
    for spec in run.stages:
        if spec.blockwise:
            references[spec.name] = _stage_io_seconds(run, spec, scratch / spec.name)
    return references


def _stage_io_seconds(run: Run, spec: StageSpec, scratch: Path) -> dict:
    reads = run.reads(spec)
    array_reads = [(read, run.regions(spec, read.region)) for read in reads if read.kind == "array" and read.region is not None]
    linked_partials = [(read.name, linked) for read in reads if read.kind == "partials" and (linked := run.linked_blocks(spec, read))]
    written = {write.name: _array_like(run, write.name, scratch) for write in spec.writes if write.kind == "array"}
    writes_partials = any(write.kind == "partials" for write in spec.writes)
    boxes = run.regions(spec, BOX)
    read_seconds = write_seconds = 0.0
    number_of_blocks = spec.blocks(run).number_of_blocks
    for block_id in range(number_of_blocks):
        started = time.perf_counter()
        for read, regions in array_reads:
            if read.faces:
                # As the stage reads it: the block's box and the slabs beyond its upper faces.
                for slab in face_slabs(
                    Box(tuple(boxes[block_id][0]), tuple(boxes[block_id][1])), Box(tuple(regions[block_id][0]), tuple(regions[block_id][1]))
                ):
                    _read_array(run, read.name, np.array([slab.begin, slab.end]))
            else:
                _read_array(run, read.name, regions[block_id])
        for stage, linked in linked_partials:
            for other in linked[block_id]:
                _load_partial(run, stage, int(other))
        read_seconds += time.perf_counter() - started
        # What the block wrote, read back untimed: the reference encodes the same values.
        outputs = [(array, _selection(array, boxes[block_id]), _read_array(run, name, boxes[block_id])) for name, array in written.items()]
        partial = _load_partial(run, spec.name, block_id) if writes_partials else None
        started = time.perf_counter()
        for array, selection, values in outputs:
            write_selection(array, selection, values)  # as the stages write (emflow.storage.chunk_io)
        if isinstance(partial, dict):
            atomic_save_npz(scratch / "partials" / f"{block_id}.npz", **partial)
        elif partial is not None:
            atomic_save_npy(scratch / "partials" / f"{block_id}.npy", partial)
        write_seconds += time.perf_counter() - started
    return {
        "read_seconds": read_seconds,
        "write_seconds": write_seconds,
        "seconds": read_seconds + write_seconds,
        "blocks": number_of_blocks,
    }


def stage_rows(task_seconds: dict[str, float], references: dict[str, dict], megavoxels: float) -> list[dict]:
    """Per block-wise stage (in run order): task seconds, reference seconds, each as MVox/s of the
    whole volume (`megavoxels`), and their ratio."""
    rows = []
    for stage, reference in references.items():
        seconds = task_seconds.get(stage, 0.0)
        rows.append(
            {
                "stage": stage,
                "blocks": reference["blocks"],
                "task_seconds": seconds,
                "mvox_per_second": megavoxels / seconds if seconds else None,
                "reference_seconds": reference["seconds"],
                "reference_read_seconds": reference["read_seconds"],
                "reference_write_seconds": reference["write_seconds"],
                "reference_mvox_per_second": megavoxels / reference["seconds"] if reference["seconds"] else None,
                "ratio": seconds / reference["seconds"] if reference["seconds"] else None,
            }
        )
    return rows


def _selection(array, region: np.ndarray) -> tuple[slice, ...]:
    """`region` (2, ndim: begin, end) of an array, whole along its leading axes (channels)."""
    begin, end = region
    return (slice(None),) * (array.ndim - len(begin)) + tuple(slice(int(low), int(high)) for low, high in zip(begin, end))


def _read_array(run: Run, name: str, region: np.ndarray) -> np.ndarray:
    """Array `name` of the run (an input as stored, or an output volume) over `region`, decoded."""
    if name in run.inputs:
        dataset = run.inputs[name]
        with opened_volume(dataset.path, dataset.key) as volume:
            return read_region(volume, _selection(volume, region), dataset.location)
    array = run.store.output_array(name)
    return read_selection(array, _selection(array, region))


def _array_like(run: Run, name: str, folder: Path) -> zarr.Array:
    """An empty array under `folder` with the zarr metadata (shape, chunks, codecs) of output volume `name`."""
    path = run.layout.output_path / run.store.volumes[name].path
    copy = folder / run.store.volumes[name].path
    copy.mkdir(parents=True)
    shutil.copyfile(path / "zarr.json", copy / "zarr.json")
    return zarr.open_array(str(copy), mode="r+")


def _load_partial(run: Run, stage: str, block_id: int) -> dict[str, np.ndarray] | np.ndarray | None:
    """A block's partial result as its stage wrote it: the arrays of its .npz, its .npy, or None."""
    npz, npy = (run.layout.partial(stage, block_id, suffix) for suffix in (".npz", ".npy"))
    if npz.exists():
        with np.load(npz) as partial:
            return {field: partial[field] for field in partial.files}
    return np.load(npy) if npy.exists() else None


# The emflow contender's outputs beyond the segmentation elf writes: the default config's.
# "segmentation only" writes what elf writes and no more: no multiscale pyramid for viewers
# (`[output] pyramid`) and no run report (`[output] report`).
SEGMENTATION_ONLY = {"pyramid": False, "report": False}


def emflow_command(
    input_path: Path, run_dir: Path, block_shape: list[int], workers: int, output: dict | None = None
) -> tuple[list[str], dict]:
    """The command of an emflow run, and its config (written to `run_dir`); `output`: further
    `[output]` keys (default: none, the default config's outputs)."""
    defaults = default_config()
    config = {
        "input": {
            "path": str(input_path),
            "boundaries_key": "boundaries",
            "resolution": list(read_resolution(open_volume(input_path, "boundaries"))),
        },
        "output": {"path": str(run_dir / "emflow.zarr"), **(output or {})},
        "blocking": {"block_shape": block_shape, "halo": defaults["blocking"]["halo"]},
        "multicut": {"beta": defaults["multicut"]["beta"], "solver": defaults["multicut"]["solver"]},
    }
    config_path = run_dir / "emflow.toml"
    config_path.write_text(tomli_w.dumps(config))
    return [sys.executable, "-m", "emflow", "run", str(config_path), "--workers", str(workers)], config


def run_emflow_once(command: list[str], run_dir: Path, *, sample_pss: bool = False) -> dict:
    # A finished output would make the run a no-op, so every run starts from none.
    for path in (run_dir / "emflow.zarr", run_dir / "emflow.zarr.work"):
        shutil.rmtree(path, ignore_errors=True)
    measurement = run_measured(command, run_dir / "emflow.log", sample_pss=sample_pss)
    if measurement.exit_code != 0:
        raise SystemExit(f"emflow run failed (exit code {measurement.exit_code}); see {run_dir / 'emflow.log'}")
    work_dir = run_dir / "emflow.zarr.work"
    return {
        "measurement": asdict(measurement),
        "task_seconds_by_stage": emflow_task_seconds(work_dir),
        "peak_rss_bytes_by_stage": emflow_peak_rss_by_stage(work_dir),
    }


class ElfUnavailable(RuntimeError):
    """elf, or a dependency it imports, cannot be imported here."""


def elf_command(input_path: Path, run_dir: Path, chunks: list[int], workers: int) -> list[str]:
    return [
        sys.executable,
        str(ELF_SCRIPT),
        f"{input_path}:boundaries",
        f"{run_dir / 'elf.zarr'}:segmentation",
        str(run_dir / "elf_report.json"),
        "--threads",
        str(workers),
        "--chunks",
        *map(str, chunks),
    ]


def run_elf_once(command: list[str], run_dir: Path, *, sample_pss: bool = False) -> dict:
    shutil.rmtree(run_dir / "elf.zarr", ignore_errors=True)
    measurement = run_measured(command, run_dir / "elf.log", sample_pss=sample_pss)
    report_path = run_dir / "elf_report.json"
    if measurement.exit_code == EXIT_ELF_UNAVAILABLE:
        raise ElfUnavailable(json.loads(report_path.read_text())["reason"])
    if measurement.exit_code != 0:
        raise SystemExit(f"elf run failed (exit code {measurement.exit_code}); see {run_dir / 'elf.log'}")
    report = json.loads(report_path.read_text())
    return {
        "measurement": asdict(measurement),
        "phase_seconds": report["seconds"],
        "version": report["version"],
        "parameters": report["parameters"],
    }


def summarize(runs: list[dict], segmentation, input_path: Path, memory_run: dict | None = None) -> dict:
    """Median wall time and throughput of the timed runs, the largest memory of all runs (the tree's
    PSS from `memory_run`, the one run that sampled it, if any), and the segmentation's quality.

    The quality is that of the last run's segmentation; both contenders are deterministic.
    """
    measurements = [run["measurement"] for run in runs]
    wall_seconds = statistics.median(measurement["wall_seconds"] for measurement in measurements)
    if memory_run is not None:
        measurements.append(memory_run["measurement"])
    metrics = evaluate(segmentation, open_volume(input_path, "neuron_ids"))
    return {
        "status": "ok",
        "wall_seconds_median": wall_seconds,
        "machine": median_machine([run["measurement"] for run in runs]),
        "mvox_per_second": math.prod(segmentation.shape) / 1e6 / wall_seconds,
        "max_rss_bytes": max(measurement["max_rss_bytes"] for measurement in measurements),
        "peak_tree_pss_bytes": None if memory_run is None else memory_run["measurement"]["peak_tree_pss_bytes"],
        "quality": {key: metrics[key] for key in QUALITY_KEYS},
        "runs": runs,
        "memory_run": memory_run,
    }


def median_machine(measurements: list[dict]) -> dict[str, float | None] | None:
    """The median over the runs' measurements of each share `machine_shares` gives: None for a
    share some run lacks (no /proc/pressure), and None if no run has any."""
    shares = [measurement["machine"] for measurement in measurements if measurement.get("machine")]
    if not shares:
        return None
    medians: dict[str, float | None] = {}
    for key in shares[0]:
        values = [share[key] for share in shares if share[key] is not None]
        medians[key] = statistics.median(values) if len(values) == len(shares) else None
    return medians


def machine_cells(machine: dict | None, keys: tuple[str, ...] = ("busy", "iowait", "steal")) -> list[str]:
    """Table cells of the shares `keys` of `machine_shares` (default: cores busy, IO wait and
    stolen, each as % of all cores' time); "-" where a share is missing."""
    return ["-" if not machine or machine.get(key) is None else f"{machine[key]:.0%}" for key in keys]


def machine_per_run(runs: list[dict | None]) -> str:
    """Cores busy / IO wait / stolen of each run, as text: "92%/0%/1%, 94%/0%/1%"."""
    return ", ".join("/".join(machine_cells(shares)) for shares in runs)


def write_results(path: Path, results: dict) -> None:
    """Write a benchmark's raw results as JSON (values JSON cannot hold, such as paths, as text)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2, default=str) + "\n")


def machine_description() -> dict:
    cpu_model = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.MULTILINE)
    memory_kb = re.search(r"^MemTotal:\s+(\d+) kB", Path("/proc/meminfo").read_text(), re.MULTILINE)
    return {
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu_model.group(1) if cpu_model else platform.processor(),
        "memory_gib": round(int(memory_kb.group(1)) / 2**20, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": {name: metadata.version(name) for name in ("numpy", "bioimage-cpp", "luigi", "zarr")},
    }


def _gib(size_bytes: int | None) -> str:
    return "-" if size_bytes is None else f"{size_bytes / 2**30:.2f}"


# The contenders of the tables, in order: results key, program, what it ran.
CONTENDERS = (("emflow", "emflow", ""), ("emflow_segmentation_only", "emflow", ", segmentation only"), ("elf", "elf", ""))


def _contenders(results: dict, versions: bool = False) -> list[tuple[str, str]]:
    """(results key, label) of the contenders in `results`; `versions`: with the program's version."""
    return [
        (name, f"{program} {results[name].get('version', '')}{what}" if versions else f"{program}{what}")
        for name, program, what in CONTENDERS
        if name in results
    ]


def _rate(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def print_table(results: dict) -> None:
    volume = results["volume"]
    print(
        f"\nend to end on {'x'.join(map(str, volume['shape']))} = {volume['megavoxels']:.1f} MVox "
        f"(FlyEM dev cube {tiling_description(volume['tiles'])}, mirrored), {results['workers']} workers/threads, "
        f"emflow blocks {'x'.join(map(str, results['block_shape']))}; median of {results['repeats']} runs, memory the largest"
    )
    print(
        f"{'contender':<26} {'wall s':>8} {'MVox/s':>8} {'max RSS GiB':>12} {'tree PSS GiB':>13} {'ARAND':>7} {'VOI split':>10} {'VOI merge':>10}"
    )
    for name, label in _contenders(results):
        result = results[name]
        if result["status"] != "ok":
            print(f"{label:<26} {result['status']}")
            continue
        quality = result["quality"]
        print(
            f"{label:<26} {result['wall_seconds_median']:>8.1f} {result['mvox_per_second']:>8.3f} "
            f"{_gib(result['max_rss_bytes']):>12} {_gib(result['peak_tree_pss_bytes']):>13} "
            f"{quality['adapted_rand_error']:>7.4f} {quality['voi_split']:>10.3f} {quality['voi_merge']:>10.3f}"
        )
    if "ratios" in results:
        ratios = results["ratios"]
        print(
            f"emflow / elf: speed (MVox/s) {ratios['speed']:.2f}, max RSS {ratios['max_rss']:.2f}, tree PSS {ratios['peak_tree_pss']:.2f}"
            + (f"; segmentation only: speed {ratios['speed_segmentation_only']:.2f}" if "speed_segmentation_only" in ratios else "")
        )
    for name, label in _contenders(results):
        if results[name]["status"] == "ok":
            print(f"{label} wall s of each run: " + ", ".join(f"{run['measurement']['wall_seconds']:.1f}" for run in results[name]["runs"]))
    stages = results["emflow"]["runs"][-1]["task_seconds_by_stage"]
    print(
        "emflow task s per stage, summed over blocks (last run): "
        + ", ".join(f"{stage} {seconds:.1f}" for stage, seconds in stages.items())
    )
    print(
        f"\nemflow block-wise stages (last run) against their IO alone (reference pass {results['emflow']['reference_pass_seconds']:.1f} s):"
    )
    print(f"{'stage':<22} {'blocks':>7} {'task s':>8} {'MVox/s':>8} {'reference s':>12} {'reference MVox/s':>17} {'ratio':>6}")
    for row in results["emflow"]["stages"]:
        print(
            f"{row['stage']:<22} {row['blocks']:>7} {row['task_seconds']:>8.2f} {_rate(row['mvox_per_second']):>8} "
            f"{row['reference_seconds']:>12.2f} {_rate(row['reference_mvox_per_second']):>17} {_rate(row['ratio'], 1):>6}"
        )
    if results["elf"]["status"] == "ok":
        phases = results["elf"]["runs"][-1]["phase_seconds"]
        print("elf phase s (last run): " + ", ".join(f"{phase} {seconds:.1f}" for phase, seconds in phases.items()))


def run(
    *,
    scale: int | Sequence[int] = 2,
    workers: int = 2,
    block_shape: list[int] | None = None,
    repeats: int = 3,
    out: Path | None = None,
    skip_elf: bool = False,
    segmentation_only: bool = True,
) -> dict:
    """Run the benchmark (see the module docstring) and return its results; `scale`: copies of the
    dev cube per axis (see `as_tiles`); `block_shape` None: emflow's "auto" block shape for the tiled
    volume; `segmentation_only`: also time emflow writing only the segmentation (`SEGMENTATION_ONLY`)."""
    tiles = as_tiles(scale)
    if min(workers, repeats) < 1:
        raise ValueError("workers and repeats must be at least 1")
    block_shape = list(block_shape or default_block_shape(tiles))
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    out_dir = (out or Path(tempfile.mkdtemp(prefix="end_to_end-", dir=RESULTS_DIR))).resolve()
    run_dir = out_dir / "run"
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        started = time.perf_counter()
        input_path = prepare_input(out_dir, tiles, tuple(block_shape))
        print(f"input ready in {time.perf_counter() - started:.1f} s: {input_path}", flush=True)
        shape = tuple(open_volume(input_path, "neuron_ids").shape)
        results = {
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": machine_description(),
            "volume": {"shape": shape, "megavoxels": math.prod(shape) / 1e6, "tiles": tiles, "source": str(SOURCE_PATH)},
            "workers": workers,
            "block_shape": block_shape,
            "repeats": repeats,
            "measures": {
                "wall_seconds_median": "median over the timed runs of the wall time of the contender's process tree, start to exit",
                "max_rss_bytes": "largest peak RSS of any single process of a run (wait4 rusage), largest over all runs",
                "peak_tree_pss_bytes": f"largest sum of PSS over the processes of the memory run (one more run, not timed), "
                f"sampled every {MEMORY_SAMPLE_SECONDS} s",
                "peak_rss_bytes_by_stage": "emflow, last run: largest peak RSS of a process while it ran a task of the stage (from the completion records)",
                "stages": "emflow, last run, per block-wise stage: task seconds summed over blocks (completion records) and MVox/s "
                "(volume / task s), beside the reference: reading and decoding what its blocks read, encoding and writing what they "
                "wrote, with the same codecs, summed over blocks in one process after the run (stage_io_reference); ratio = task s / reference s",
            },
        }
        emflow, emflow_config = emflow_command(input_path, run_dir, block_shape, workers)
        segmentation_only_dir = run_dir / "segmentation_only"
        segmentation_only_dir.mkdir(exist_ok=True)
        emflow_segmentation_only = emflow_command(input_path, segmentation_only_dir, block_shape, workers, SEGMENTATION_ONLY)[0]
        elf = None if skip_elf else elf_command(input_path, run_dir, block_shape, workers)
        elf_status = "skipped" if skip_elf else "ok"
        runs = {"emflow": [], "emflow_segmentation_only": [], "elf": []}
        # Alternating the contenders spreads slow phases of a shared machine over all.
        for repeat in range(1, repeats + 1):
            print(f"run {repeat}/{repeats}: emflow ...", flush=True)
            runs["emflow"].append(run_emflow_once(emflow, run_dir))
            if segmentation_only:
                print(f"run {repeat}/{repeats}: emflow, segmentation only ...", flush=True)
                runs["emflow_segmentation_only"].append(run_emflow_once(emflow_segmentation_only, segmentation_only_dir))
            if elf_status == "ok":
                print(f"run {repeat}/{repeats}: elf ...", flush=True)
                try:
                    runs["elf"].append(run_elf_once(elf, run_dir))
                except ElfUnavailable as error:
                    elf_status = f"unavailable: {error}"
                    print(f"elf: {elf_status}", flush=True)
        # The tree's PSS from one more run each, not timed: sampling it slows the run it samples.
        print("memory run: emflow ...", flush=True)
        memory_runs = {"emflow": run_emflow_once(emflow, run_dir, sample_pss=True)}
        if elf_status == "ok":
            print("memory run: elf ...", flush=True)
            memory_runs["elf"] = run_elf_once(elf, run_dir, sample_pss=True)

        print("stage IO reference ...", flush=True)
        started = time.perf_counter()
        references = stage_io_reference(run_dir / "emflow.toml", out_dir / "io_reference")
        shutil.rmtree(out_dir / "io_reference")
        reference_pass_seconds = time.perf_counter() - started
        print("scoring ...", flush=True)
        results["emflow"] = {
            "version": metadata.version("emflow"),
            "command": " ".join(emflow),
            "config": emflow_config,
            **summarize(runs["emflow"], open_volume(run_dir / "emflow.zarr", "segmentation"), input_path, memory_runs["emflow"]),
            "stages": stage_rows(runs["emflow"][-1]["task_seconds_by_stage"], references, results["volume"]["megavoxels"]),
            "reference_pass_seconds": reference_pass_seconds,
        }
        if segmentation_only:
            results["emflow_segmentation_only"] = {
                "version": metadata.version("emflow"),
                "command": " ".join(emflow_segmentation_only),
                "output": SEGMENTATION_ONLY,
                **summarize(
                    runs["emflow_segmentation_only"], open_volume(segmentation_only_dir / "emflow.zarr", "segmentation"), input_path
                ),
            }
        if elf_status == "ok":
            results["elf"] = {
                "version": runs["elf"][-1]["version"],
                "command": " ".join(elf),
                "parameters": runs["elf"][-1]["parameters"],
                **summarize(runs["elf"], open_volume(run_dir / "elf.zarr", "segmentation"), input_path, memory_runs["elf"]),
            }
            results["ratios"] = {
                "speed": results["emflow"]["mvox_per_second"] / results["elf"]["mvox_per_second"],
                "max_rss": results["emflow"]["max_rss_bytes"] / results["elf"]["max_rss_bytes"],
                "peak_tree_pss": results["emflow"]["peak_tree_pss_bytes"] / results["elf"]["peak_tree_pss_bytes"],
            }
            if segmentation_only:
                results["ratios"]["speed_segmentation_only"] = (
                    results["emflow_segmentation_only"]["mvox_per_second"] / results["elf"]["mvox_per_second"]
                )
        else:
            results["elf"] = {"status": elf_status}
    finally:
        if out is None:
            shutil.rmtree(out_dir)
    return results


def markdown(results: dict) -> str:
    """A Markdown section with the table of `results`."""
    volume = results["volume"]
    lines = [
        "### End to end: boundary map to segmentation",
        "",
        f"{'x'.join(map(str, volume['shape']))} = {volume['megavoxels']:.1f} MVox (FlyEM dev cube {tiling_description(volume['tiles'])}, "
        f"mirrored), {results['workers']} workers/threads, emflow blocks {'x'.join(map(str, results['block_shape']))}; "
        f"median wall time of {results['repeats']} runs, alternating, process start to exit; memory the largest, the tree's PSS "
        "sampled in one more run each (sampling slows a run, so timed runs do not sample).",
        "",
        "| contender | wall s | MVox/s | max RSS GiB | tree PSS GiB | ARAND | VOI split | VOI merge | cores busy | IO wait | stolen |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, label in _contenders(results, versions=True):
        result = results[name]
        if result["status"] != "ok":
            lines.append(f"| {label} | {result['status']} | | | | | | | | | |")
            continue
        quality = result["quality"]
        lines.append(
            f"| {label} | {result['wall_seconds_median']:.1f} | {result['mvox_per_second']:.3f} | "
            f"{_gib(result['max_rss_bytes'])} | {_gib(result['peak_tree_pss_bytes'])} | {quality['adapted_rand_error']:.4f} | "
            f"{quality['voi_split']:.3f} | {quality['voi_merge']:.3f} | " + " | ".join(machine_cells(result.get("machine"))) + " |"
        )
    lines += [
        "",
        "Cores busy, IO wait and stolen: shares of all cores' time during the timed runs (median over them, from /proc/stat), "
        "busy with any process, idle while IO was outstanding, and taken by the hypervisor for another guest.",
    ]
    if "ratios" in results:
        ratios = results["ratios"]
        lines += [
            "",
            f"emflow / elf: speed {ratios['speed']:.2f}x, max RSS {ratios['max_rss']:.2f}x, tree PSS {ratios['peak_tree_pss']:.2f}x"
            + (
                f"; writing only the segmentation, as elf does (`[output] pyramid = false`, `report = false`), "
                f"speed {ratios['speed_segmentation_only']:.2f}x."
                if "speed_segmentation_only" in ratios
                else "."
            ),
        ]
    if results["emflow"]["status"] == "ok":
        lines += [
            "",
            "emflow's block-wise stages (last run): task s summed over blocks, and MVox/s of the whole volume, beside a stage that "
            "computes nothing, measured after the run on its output: reading and decoding the regions (with halos) its blocks read and "
            "encoding and writing what they wrote, same codecs, summed over blocks in one process; ratio = task s / reference s.",
            "",
            "| stage | blocks | task s | MVox/s | reference s | reference MVox/s | ratio |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for row in results["emflow"]["stages"]:
            lines.append(
                f"| {row['stage']} | {row['blocks']:,} | {row['task_seconds']:.2f} | {_rate(row['mvox_per_second'])} | "
                f"{row['reference_seconds']:.2f} | {_rate(row['reference_mvox_per_second'])} | {_rate(row['ratio'], 1)} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--scale",
        type=int,
        nargs="+",
        default=[2],
        metavar="N",
        help="copies of the dev cube per axis, one number or three (z y x; default 2: 62.5 MVox; 4 4 8: 1 GVox)",
    )
    parser.add_argument("--workers", type=int, default=2, help="emflow worker processes and elf threads (default 2)")
    parser.add_argument(
        "--block-shape",
        type=int,
        nargs=3,
        metavar=("Z", "Y", "X"),
        help="emflow block shape, also the input's chunk shape (default: emflow's \"auto\" block shape for the volume)",
    )
    parser.add_argument("--repeats", type=int, default=3, help="runs per contender, alternating; the median time is reported (default 3)")
    parser.add_argument(
        "--out", type=Path, help="folder for inputs and outputs, kept (default: a temporary folder under benchmarks/results, removed)"
    )
    parser.add_argument("--skip-elf", action="store_true", help="run emflow only")
    parser.add_argument(
        "--json",
        type=Path,
        default=RESULTS_DIR / "end_to_end.json",
        help="where to write the results (default benchmarks/results/end_to_end.json)",
    )
    arguments = parser.parse_args(argv)
    if len(arguments.scale) not in (1, 3) or min(*arguments.scale, arguments.workers, arguments.repeats) < 1:
        parser.error("--scale takes one or three numbers; --scale, --workers and --repeats must be at least 1")
    results = run(
        scale=arguments.scale[0] if len(arguments.scale) == 1 else arguments.scale,
        workers=arguments.workers,
        block_shape=arguments.block_shape,
        repeats=arguments.repeats,
        out=arguments.out,
        skip_elf=arguments.skip_elf,
    )
    print_table(results)
    write_results(arguments.json, results)
    print(f"results written to {arguments.json}")


if __name__ == "__main__":
    main()
