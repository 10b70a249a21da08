"""The evaluation report (``emflow evaluate --report DIR``): report.json, report.html and its figures.

Everything comes from the merged overlap table and what `emflow.evaluation` computes from it, plus a
few 2D crops through the worst errors (`read_error_view`), so writing the report never needs the whole
volume.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from emflow.evaluation import OverlapTable, judgement

from . import charts, figures, page

# Crop edge (voxels) of the slice views: wide enough for a few neurite cross-sections at 4-10 nm.
VIEW_SIZE = 160

# What the metrics table says about each key it knows; other keys are listed without a note.
METRIC_NOTES = {
    "voi_split": "VOI split H(seg | GT), bits: over-segmentation",
    "voi_merge": "VOI merge H(GT | seg), bits: under-segmentation",
    "voi_sum": "VOI split + merge, bits",
    "adapted_rand_error": "1 - Rand F-score (SNEMI3D), lower is better",
    "rand_precision": "Rand precision: drops with merges",
    "rand_recall": "Rand recall: drops with splits",
    "cremi_score": "sqrt(VOI sum x adapted Rand error), lower is better",
    "number_of_voxels": "voxels evaluated (GT label != 0)",
    "number_of_groundtruth_bodies": "GT bodies",
    "number_of_segments": "segments on labelled voxels",
    "split_bodies": "GT bodies overlapping 2+ segments",
    "merged_segments": "segments overlapping 2+ GT bodies",
    "expected_run_length_nm": "ERL along GT skeletons (FFN), nm",
    "gt_expected_run_length_nm": "ERL of a perfect segmentation, nm",
    "normalized_erl": "ERL / GT ERL, higher is better",
    "skeleton_length_nm": "total GT skeleton length, nm",
    "number_of_skeletons": "GT bodies with skeletons",
    "skeleton_merges": "merges along skeletons (splits needed)",
    "skeleton_splits": "splits along skeletons (merges needed)",
}


@dataclass(frozen=True)
class ErrorView:
    """A (Y, X) crop of one z-section through an error, for a slice view.

    ``kind`` is ``"merge"`` or ``"split"``; ``error`` the entry of
    ``segmentation_errors(...)["worst_merges" | "worst_splits"]``; ``section`` the crop's z and
    ``origin`` its first (y, x) voxel; ``raw`` and ``prediction`` (boundary probability in [0, 1])
    may be None when not available.
    """

    kind: str
    error: dict
    section: int
    origin: tuple[int, int]
    raw: np.ndarray | None
    prediction: np.ndarray | None
    segmentation: np.ndarray
    groundtruth: np.ndarray


def view_position(error: dict) -> list[int]:
    """Where a slice view of an error is centred: the anchor of its second-largest overlap (the merged-in
    body, or the split-off piece, where the error shows), or of its only overlap."""
    overlaps = error["overlaps"]
    return list((overlaps[1] if len(overlaps) > 1 else overlaps[0])["position_voxel"])


def read_error_view(kind: str, error: dict, segmentation, groundtruth, raw=None, prediction=None, size: int = VIEW_SIZE) -> ErrorView:
    """Read the crop of a slice view from (Z, Y, X) arrays or lazy array-likes (zarr, h5py).

    The crop is ``size`` x ``size`` voxels of the z-section through `view_position`, centred on it and
    shifted to stay inside the volume (smaller only if the volume is). Reads four 2D crops at most.
    """
    if kind not in ("merge", "split"):
        raise ValueError(f"kind must be 'merge' or 'split', got {kind!r}")
    z, y, x = view_position(error)
    shape = tuple(segmentation.shape)
    origin = tuple(int(min(max(center - size // 2, 0), max(extent - size, 0))) for center, extent in zip((y, x), shape[1:]))
    crop = (int(z), slice(origin[0], origin[0] + size), slice(origin[1], origin[1] + size))

    def read(volume):
        return None if volume is None else np.asarray(volume[crop])

    return ErrorView(kind, error, int(z), origin, read(raw), read(prediction), read(segmentation), read(groundtruth))


def _view_figure(view: ErrorView) -> bytes:
    if view.kind == "merge":
        error_id = view.error["segmentation_id"]
        mask, partner_labels = view.segmentation == error_id, view.groundtruth
        title = f"worst merge: segment {error_id} joins {view.error['number_of_bodies']} GT bodies (colours)"
    else:
        error_id = view.error["groundtruth_id"]
        mask, partner_labels = view.groundtruth == error_id, view.segmentation
        title = f"worst split: GT body {error_id} in {view.error['number_of_segments']} segments (colours)"
    z, y, x = view_position(view.error)
    return figures.error_view_figure(
        view.raw,
        view.prediction,
        view.segmentation,
        view.groundtruth,
        mask,
        partner_labels,
        f"{title}; z = {view.section}, + at (y, x) = ({y}, {x})",
        marker=(y - view.origin[0], x - view.origin[1]),
    )


def _error_rows(errors: list[dict], id_key: str, bits_key: str, count_key: str) -> list[list]:
    return [
        [
            error[id_key],
            error[bits_key],
            error["voxels"],
            error[count_key],
            str(error["position_voxel"]),
            str([round(value, 1) for value in error["position_nm"]]),
        ]
        for error in errors
    ]


def write_evaluation_report(
    directory: str | Path,
    *,
    metrics: dict,
    errors: dict,
    table: OverlapTable,
    resolution,
    views: Sequence[ErrorView] = (),
    block_voi: np.ndarray | None = None,
    blocks_per_axis: tuple[int, int, int] | None = None,
    title: str = "Segmentation evaluation",
) -> Path:
    """Write report.json, report.html and the figures the page shows into ``directory``.

    Args:
        directory: the report folder (created if missing; files in it are replaced atomically).
        metrics: the flat metrics dict (`emflow.evaluation.metrics_from_overlaps`, plus
            `emflow.skeletons.skeleton_metrics` when skeletons were scored).
        errors: `emflow.evaluation.segmentation_errors` of the same table.
        table: the merged OverlapTable (for the size histograms).
        resolution: nm per voxel (z, y, x).
        views: slice views (`read_error_view`), e.g. of the worst merge and the worst split.
        block_voi: `emflow.evaluation.block_voi_contributions`, (blocks, 2) bits, for the heat map; with
            ``blocks_per_axis`` (the block grid, z, y, x). Left out of the page when None.
        title: the page title.

    Returns:
        The path of report.html. report.json holds ``metrics``, ``judgement``, ``resolution_nm``,
        ``errors`` (all of ``errors``), ``block_voi_bits`` and ``blocks_per_axis`` (or None), and
        ``figures`` (file name -> caption).
    """
    verdict = judgement(metrics)
    figure_files: dict[str, bytes | str] = {}
    captions: dict[str, str] = {}

    def add_figure(name: str, image: bytes | str, caption: str) -> str:
        figure_files[name], captions[name] = image, caption
        return page.figure(name, caption)

    body = [
        f'<p class="verdict">{html.escape(verdict)}</p>',
        "<h2>Metrics</h2>",
        page.table(
            ["metric", "value", "meaning"],
            [[key, value, METRIC_NOTES.get(key, "")] for key, value in metrics.items() if isinstance(value, (int, float))],
        ),
    ]

    for kind, key, id_key, bits_key, count_key, partner in (
        ("merge", "worst_merges", "segmentation_id", "voi_merge_bits", "number_of_bodies", "GT bodies"),
        ("split", "worst_splits", "groundtruth_id", "voi_split_bits", "number_of_segments", "segments"),
    ):
        body.append(f"<h2>Worst {kind}s (by share of the VOI {kind} term)</h2>")
        body.append(
            page.table(
                [id_key, f"VOI {kind} (bits)", "voxels", partner, "position (voxel z, y, x)", "position (nm)"],
                _error_rows(errors[key], id_key, bits_key, count_key),
            )
        )
        for index, view in enumerate(view for view in views if view.kind == kind):
            body.append(
                add_figure(
                    f"worst_{kind}_{index}.png",
                    _view_figure(view),
                    f"Slice view of the {kind} {view.error[id_key]}: raw, prediction, segmentation, and the error's voxels "
                    f"coloured by their {partner}; centred on its second-largest overlap, where the error shows.",
                )
            )

    if block_voi is not None:
        body.append("<h2>Where the errors are</h2>")
        body.append(
            add_figure(
                "voi_per_block.png",
                figures.voi_heat_map_figure(block_voi, blocks_per_axis),
                "Share of the VOI split and merge terms carried by each block's voxels (bits).",
            )
        )

    segment_ids = table.segmentation_ids
    segment_sizes = np.bincount(np.unique(segment_ids, return_inverse=True)[1], weights=table.counts).astype(np.int64)
    segment_sizes = segment_sizes[np.unique(segment_ids) != 0]
    labelled = table.groundtruth_ids != 0
    groundtruth_sizes = np.bincount(np.unique(table.groundtruth_ids[labelled], return_inverse=True)[1], weights=table.counts[labelled])
    voxel_volume_um3 = float(np.prod(np.asarray(resolution, dtype=np.float64))) * 1e-9
    body.append("<h2>Sizes</h2>")
    body.append(
        add_figure(
            "sizes.svg",
            charts.size_histogram_svg(
                {"segments (id != 0)": segment_sizes, "GT bodies": groundtruth_sizes.astype(np.int64)}, voxel_volume_um3
            ),
            "Object sizes of the segmentation against the groundtruth.",
        )
    )
    body.append('<p>All numbers, every body\'s splits and every merging segment: <a href="report.json">report.json</a>.</p>')

    data = {
        "metrics": metrics,
        "judgement": verdict,
        "resolution_nm": [float(value) for value in resolution],
        "errors": errors,
        "block_voi_bits": None if block_voi is None else np.asarray(block_voi).tolist(),
        "blocks_per_axis": None if blocks_per_axis is None else list(blocks_per_axis),
        "figures": captions,
    }
    return page.write_report_files(directory, "report.html", page.page(title, "\n".join(body)), "report.json", data, figure_files)
