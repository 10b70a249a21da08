"""The run report written at the end of every ``emflow run``, without groundtruth.

run_report.json, run_report.html and three figures: a preview of the middle section with the
segmentation over the raw data, the segment size distribution, and time and peak memory per stage.
The caller passes plain data (dicts, arrays, one section), so the report needs no volume access.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from . import charts, images, page

# Size percentiles reported in the JSON and the page.
PERCENTILES = (5, 25, 50, 75, 95)


def size_summary(segment_sizes: np.ndarray, voxel_volume_um3: float) -> dict:
    """Count, total and percentiles of segment sizes (voxels), with the median also in µm³."""
    sizes = np.asarray(segment_sizes, dtype=np.int64)
    if sizes.size == 0:
        return {"number_of_segments": 0, "segmented_voxels": 0}
    percentiles = np.percentile(sizes, PERCENTILES)
    return {
        "number_of_segments": int(sizes.size),
        "segmented_voxels": int(sizes.sum()),
        "smallest_voxels": int(sizes.min()),
        "largest_voxels": int(sizes.max()),
        "mean_voxels": float(sizes.mean()),
        **{f"p{q}_voxels": float(value) for q, value in zip(PERCENTILES, percentiles)},
        "median_um3": float(percentiles[PERCENTILES.index(50)] * voxel_volume_um3),
        "single_voxel_segments": int(np.count_nonzero(sizes == 1)),
    }


def write_run_report(
    directory: str | Path,
    *,
    stage_seconds: dict[str, float],
    stage_peak_rss_bytes: dict[str, int],
    segment_sizes: np.ndarray,
    raw_section: np.ndarray | None,
    segmentation_section: np.ndarray | None,
    resolution,
    volume_shape,
    section_index: int | None = None,
    title: str = "emflow run",
    preview: bytes | None = None,
    preview_source: str = "",
    preview_level: int = 0,
    preview_part: str = "",
    background: str = "raw data",
) -> Path:
    """Write run_report.json, run_report.html, run_preview.png, run_sizes.svg and run_stages.svg.

    Args:
        directory: the run's work folder (files are replaced atomically).
        stage_seconds: stage name -> wall seconds, in pipeline order.
        stage_peak_rss_bytes: stage name -> peak resident memory of its processes (bytes); stages
            missing here show 0.
        segment_sizes: (n,) voxel counts of the segments, background (id 0) left out.
        raw_section: (Y, X) intensities of the section shown beside the segmentation (`background`).
        segmentation_section: (Y, X) segment ids of the same section.
        resolution: nm per voxel (z, y, x).
        volume_shape: (Z, Y, X) of the segmented volume.
        section_index: z of the section shown (default: the middle one), for the caption.
        title: the page title.
        preview: run_preview.png as drawn before from the same section (the sections are then
            not needed, and may be None).
        preview_source: what the preview was drawn from (`emflow.workflows.report.preview_source`),
            kept in the JSON so that a later report can tell whether `preview` still shows it.
        preview_level: the pyramid level the sections are of (0: full resolution), for the caption.
        preview_part: which part of the section they are, for the caption ("": all of it).
        background: what `raw_section` holds, for the caption ("raw data", "boundary map", ...).

    Returns:
        The path of run_report.html. run_report.json holds ``volume_shape``, ``resolution_nm``,
        ``megavoxels``, ``segments`` (`size_summary`), ``stages`` (name -> seconds, peak_rss_bytes),
        ``total_seconds`` (sum over stages), ``megavoxels_per_second`` (volume / total seconds),
        ``peak_rss_bytes`` (largest of any stage), ``figures`` and ``preview_source``.
    """
    voxel_volume_um3 = float(np.prod(np.asarray(resolution, dtype=np.float64))) * 1e-9
    megavoxels = math.prod(int(extent) for extent in volume_shape) / 1e6
    total_seconds = float(sum(stage_seconds.values()))
    section_index = int(volume_shape[0]) // 2 if section_index is None else int(section_index)
    summary = size_summary(segment_sizes, voxel_volume_um3)
    stages = {
        name: {"seconds": float(seconds), "peak_rss_bytes": int(stage_peak_rss_bytes.get(name, 0))}
        for name, seconds in stage_seconds.items()
    }
    captions = {
        "run_preview.png": f"Section z = {section_index}{_where(preview_level, preview_part)}: {background} (left), "
        "and the segmentation over it with segment borders in black (right).",
        "run_sizes.svg": "Segment sizes (background left out).",
        "run_stages.svg": "Wall time and peak resident memory per stage.",
    }
    figure_files = {
        "run_preview.png": preview if preview is not None else images.rgb_png(images.preview_image(raw_section, segmentation_section)),
        "run_sizes.svg": charts.size_histogram_svg({"segments": np.asarray(segment_sizes)}, voxel_volume_um3),
        "run_stages.svg": charts.stage_bars_svg(stage_seconds, stage_peak_rss_bytes),
    }
    data = {
        "volume_shape": [int(extent) for extent in volume_shape],
        "resolution_nm": [float(value) for value in resolution],
        "megavoxels": megavoxels,
        "segments": summary,
        "stages": stages,
        "total_seconds": total_seconds,
        "megavoxels_per_second": megavoxels / total_seconds if total_seconds > 0 else None,
        "peak_rss_bytes": max((stage["peak_rss_bytes"] for stage in stages.values()), default=0),
        "figures": captions,
        "preview_source": preview_source,
    }
    overview = [
        ["volume (z, y, x)", " x ".join(str(int(extent)) for extent in volume_shape)],
        ["resolution (nm)", " x ".join(f"{float(value):g}" for value in resolution)],
        ["megavoxels", megavoxels],
        ["total time (s)", total_seconds],
        ["throughput (MVox/s)", data["megavoxels_per_second"]],
        ["largest peak memory (MiB)", data["peak_rss_bytes"] / 2**20],
    ]
    body = [
        "<h2>Run</h2>",
        page.table(["", "value"], overview),
        "<h2>Segments</h2>",
        page.table(["statistic", "value"], [[key, value] for key, value in summary.items()]),
        page.figure("run_sizes.svg", captions["run_sizes.svg"]),
        "<h2>Preview</h2>",
        page.figure("run_preview.png", captions["run_preview.png"]),
        "<h2>Stages</h2>",
        page.table(
            ["stage", "seconds", "peak RSS (MiB)"],
            [[name, stage["seconds"], stage["peak_rss_bytes"] / 2**20] for name, stage in stages.items()],
        ),
        page.figure("run_stages.svg", captions["run_stages.svg"]),
        '<p>All numbers: <a href="run_report.json">run_report.json</a>.</p>',
    ]
    return page.write_report_files(directory, "run_report.html", page.page(title, "\n".join(body)), "run_report.json", data, figure_files)


def _where(level: int, part: str) -> str:
    """What follows "Section z = 80" in the preview's caption, e.g. ' (pyramid level 2, y 1:9 of 10)';
    "" for the whole section at full resolution."""
    details = ([f"pyramid level {level}"] if level else []) + ([part] if part else [])
    return f" ({', '.join(details)})" if details else ""
