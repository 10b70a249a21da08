"""The run report: what a finished segmentation run holds and cost, without ground truth.

Written into `<work folder>/report/` at the end of every `emflow run`, and again by `emflow report
CONFIG`: segments and their size distribution, time and peak memory per stage, throughput, and a
preview of the middle section with the segmentation over the raw data (`emflow.report.run.write_run_report`).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from emflow.affinity_statistics import nearest_neighbour_channels
from emflow.blocking import Box
from emflow.report.run import write_run_report
from emflow.storage.chunks import chunk_files, region_states, states_array
from emflow.storage.store import level_name
from emflow.storage.volumes import opened_volume
from emflow.tasks.adapter import stage_record
from emflow.tasks.affinities import INPUT as AFFINITIES
from emflow.tasks.context import Run
from emflow.tasks.preview import BACKGROUNDS, assemble_section, background, level_section, middle_section, preview_level, preview_window
from emflow.tasks.spec import Read

from .summary import node_label_source, stage_cost

# The stage whose partial results (each block's supervoxel sizes) the report reads: `emflow clean` keeps them.
SIZES_STAGE = "supervoxels"


def segment_sizes(run: Run) -> np.ndarray:
    """Voxels per segment (background left out), from each supervoxel's size and its segment: O(supervoxels)."""
    node_labels = run.store.load_global(node_label_source(run), "node_labels")
    sizes = np.zeros(len(node_labels), dtype=np.int64)
    number_of_blocks = run.stage(SIZES_STAGE).blocks(run).number_of_blocks
    # Read through a cache, so that a run that changed a few blocks reads their files only.
    cache = run.layout.partials_cache("report", SIZES_STAGE)
    if "given_supervoxels" in run.inputs:
        table = run.store.load_global("supervoxel_ids", "ids")
        for ids, block_sizes in run.store.load_partials(SIZES_STAGE, number_of_blocks, ("ids", "sizes"), cache):
            np.add.at(sizes, np.searchsorted(table, ids) + 1, block_sizes)
    else:
        offsets = run.store.load_global("supervoxel_ids", "offsets")
        for block_id, (block_sizes,) in enumerate(run.store.load_partials(SIZES_STAGE, number_of_blocks, ("sizes",), cache)):
            sizes[int(offsets[block_id]) + 1 : int(offsets[block_id]) + 1 + len(block_sizes)] = block_sizes
    # Segment ids are supervoxel ids (sparse, up to the volume's voxel count): counted by their rank.
    segments = np.unique(node_labels[1:], return_inverse=True)[1].ravel()
    return np.bincount(segments, weights=sizes[1:]).astype(np.int64)


def report_is_current(run: Run) -> bool:
    """Whether the run report is newer than every stage record (a no-op rerun leaves it alone)."""
    report = run.layout.work_dir / "report" / "run_report.json"
    if not report.exists():
        return False
    written = report.stat().st_mtime_ns
    return all(
        stage_record(run, spec.name).path.stat().st_mtime_ns <= written for spec in run.stages if stage_record(run, spec.name).path.exists()
    )


def preview_source(run: Run, section_index: int, level: int) -> str:
    """What the report's preview of section z = `section_index`, read at pyramid level `level`
    (`preview_level`), is drawn from, as a SHA-256 hex digest: the section and the states (size,
    modification time) of the chunk files it lies in, of the segmentation and of the data shown
    under it (an HDF5 input: its file's state), at the levels they are read from. One `stat` per
    chunk of the section for outputs; an input's states are those the run's checks read."""
    shape = run.geometry.shape
    shown = background(run)
    digest = hashlib.sha256(json.dumps([section_index, list(shape), shown, level]).encode())
    for name in ("segmentation", shown):
        name, section, _ = level_section(run, name, level, section_index)
        section_box = np.array([[section.begin, section.end]], dtype=np.int64)
        if name in run.inputs:
            dataset = run.inputs[name]
            digest.update(region_states(dataset.path, dataset.key, section_box)[0])
        else:
            digest.update(states_array(chunk_files(run.layout.output_path, run.store.volumes[name].path, section_box)[0]).tobytes())
    return digest.hexdigest()


def preview_sections(run: Run, section_index: int, level: int) -> tuple[np.ndarray, np.ndarray]:
    """The (Y', X') sections the preview shows of level-0 section `section_index` (`preview_window`
    of them): the data under the segmentation (`background`) and the segmentation, at pyramid
    level `level` (`preview_level`; data without that level, an input, is read at every k-th voxel
    of level 0 along y and x, to the same shape). Put together from the pieces the blocks saved
    (`emflow.tasks.preview`) where they did, else read."""
    name, section, steps = level_section(run, "segmentation", level, section_index)
    segmentation = _saved_section(run, run.producer(Read.array(name)).name, section, steps)
    if segmentation is None:
        segmentation = _read_section(run, name, section)
    shown = background(run)
    name, section, steps = level_section(run, shown, level, section_index)
    if shown == "boundaries" and SIZES_STAGE in {spec.name for spec in run.stages}:
        saved = _saved_section(run, SIZES_STAGE, section, steps)
        if saved is not None:
            return saved, segmentation
    if name != level_name(shown, 0):
        return run.store.read(name, section)[0], segmentation
    y, x = (slice(begin, end, step) for begin, end, step in zip(section.begin[1:], section.end[1:], steps))
    if shown not in run.inputs:
        return np.asarray(run.store.output_array(name)[section_index, y, x]), segmentation
    dataset = run.inputs[shown]
    with opened_volume(dataset.path, dataset.key) as volume:
        # Every channel of affinities (C, z, y, x).
        channels = (slice(None),) * (len(dataset.shape) - 3)
        data = np.asarray(volume[(*channels, section_index, y, x)])
    if shown == AFFINITIES:
        data = data[nearest_neighbour_channels(run.config.input.affinity_offsets)].mean(axis=0, dtype=np.float32)
    return data, segmentation


def _saved_section(run: Run, stage: str, section: Box, steps: tuple[int, int]) -> np.ndarray | None:
    """The section (`level_section`) from the pieces the blocks of `stage` saved with their partial
    results (`emflow.tasks.preview.block_section`); None where a block holding some of it saved none."""
    blocking = run.stage(stage).blocks(run)
    boxes = {block_id: blocking.block(block_id) for block_id in blocking.blocks_intersecting(section.begin, section.end)}
    try:
        return assemble_section(section, steps, boxes, lambda block_id: run.store.load_partial_bundle(stage, block_id))
    except (KeyError, OSError):
        return None


# Reads of more chunks than this go through `Store.read` (see `_read_section`).
ZARR_READ_CHUNKS = 64


def _read_section(run: Run, name: str, section: Box) -> np.ndarray:
    """Section `section` (one voxel deep) of output volume `name`, as (Y, X). Through zarr's own
    indexing where it crosses at most `ZARR_READ_CHUNKS` chunks: zarr decodes them in parallel
    threads, and at the end of a run the cores are free (the 62.5 MVox benchmark run's middle
    section, 16 chunks of 64 x 128 x 128 uint64: 0.04-0.07 s, 0.09-0.13 s one chunk at a time).
    Else one chunk at a time, `Store.read`: zarr's own work per chunk came to 0.47-0.49 s for a
    section of 1,024 chunks of 8 x 8 x 8 (20,480 blocks), `Store.read` 0.013-0.07 s."""
    array = run.store.output_array(name)
    chunks = np.prod([(part.stop - 1) // size - part.start // size + 1 for part, size in zip(section.slicing, array.chunks)])
    if chunks <= ZARR_READ_CHUNKS:
        return np.asarray(array[section.slicing])[0]
    return run.store.read(name, section)[0]


def _earlier_preview(report_dir: Path, source: str) -> bytes | None:
    """The report's run_preview.png if the report says it was drawn from `source`, else None. The
    JSON is written after the figures, so a preview it vouches for is the one on disk."""
    try:
        if json.loads((report_dir / "run_report.json").read_text()).get("preview_source") != source:
            return None
        return (report_dir / "run_preview.png").read_bytes()
    except (OSError, ValueError, AttributeError):
        return None


def write_report(run: Run, *, reuse_preview: bool = True) -> Path:
    """Write the run report of a finished run into `<work folder>/report/`; return its HTML page.

    The preview is drawn again only when its section's chunks changed (`preview_source`), unless
    `reuse_preview` is False: reading the middle section and drawing it took 0.17 of the report's
    0.26 s after new data in one input chunk of 512 (benchmarks/reprocessing.py); a cron rerun
    leaves the middle section as it was unless its new data lie in it."""
    report_dir = run.layout.work_dir / "report"
    costs = [stage_cost(run, spec) for spec in run.stages]
    middle = middle_section(run)
    level = preview_level(run)
    source = preview_source(run, middle, level)
    preview = _earlier_preview(report_dir, source) if reuse_preview else None
    segmentation = raw_section = None
    if preview is None:
        raw_section, segmentation = preview_sections(run, middle, level)
    return write_run_report(
        report_dir,
        stage_seconds={cost.stage: cost.seconds for cost in costs},
        stage_peak_rss_bytes={cost.stage: cost.peak_rss_bytes for cost in costs},
        segment_sizes=segment_sizes(run),
        raw_section=raw_section,
        segmentation_section=segmentation,
        resolution=run.geometry.resolution,
        volume_shape=run.geometry.shape,
        section_index=middle,
        title=f"emflow run: {run.layout.output_path}",
        preview=preview,
        preview_source=source,
        preview_level=level,
        preview_part=_part(run, level),
        background=BACKGROUNDS[background(run)],
    )


def _part(run: Run, level: int) -> str:
    """The preview's caption's words for `preview_window` when it is not the whole section."""
    window, shape = preview_window(run, level), run.geometry.level_shape(level)[1:]
    if all(part.stop - part.start == size for part, size in zip(window, shape)):
        return ""
    return ", ".join(f"{axis} {part.start}:{part.stop} of {size}" for axis, part, size in zip("yx", window, shape))
