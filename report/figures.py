"""The figures of emflow's reports, as PNG bytes: deterministic (same data, same bytes) and small.

matplotlib's object API on its Agg canvas, never pyplot, so that no global state or GUI backend is
involved; PNGs carry no software or date metadata.
"""

from __future__ import annotations

import io

import numpy as np
from matplotlib.figure import Figure

# 100 dpi: a 4-panel slice view of 6.4 x 1.9 inches is 640 x 190 pixels, about 100 kB.
DPI = 100
# Largest section edge drawn in a preview (voxels); a 3.1 inch panel at 100 dpi shows 310 of them.
PREVIEW_PIXELS = 1024


def png_bytes(figure: Figure) -> bytes:
    """The figure as PNG bytes at `DPI`, without software or date metadata (so the same figure gives the same bytes)."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI, metadata={"Software": None})
    return buffer.getvalue()


def label_colors(labels: np.ndarray) -> np.ndarray:
    """(..., 3) float RGB in [0.25, 1] per label id, the same colour for the same id in every figure;
    black for 0. A multiplicative hash spreads neighbouring ids over unrelated colours."""
    hashed = np.asarray(labels).astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
    hashed ^= hashed >> np.uint64(31)
    channels = np.stack([(hashed >> np.uint64(shift)) & np.uint64(255) for shift in (8, 24, 40)], axis=-1)
    colors = 0.25 + 0.75 * channels.astype(np.float64) / 255
    colors[np.asarray(labels) == 0] = 0
    return colors


def _gray(image: np.ndarray) -> np.ndarray:
    """Raw intensities scaled to [0, 1] between their 1st and 99th percentile, as RGB."""
    image = np.asarray(image, dtype=np.float64)
    low, high = np.percentile(image, [1, 99]) if image.size else (0.0, 1.0)
    # A constant image (no raw data given) shows as mid gray.
    scaled = np.clip((image - low) / (high - low), 0, 1) if high > low else np.full(image.shape, 0.5)
    return np.repeat(scaled[..., None], 3, axis=-1)


def _overlay(raw: np.ndarray, labels: np.ndarray, mask: np.ndarray | None = None, alpha: float = 0.45) -> np.ndarray:
    """Raw in gray with ``labels`` coloured on top where ``mask`` (default: labels != 0)."""
    image = _gray(raw)
    mask = np.asarray(labels) != 0 if mask is None else mask
    image[mask] = (1 - alpha) * image[mask] + alpha * label_colors(labels)[mask]
    return image


def _boundaries(labels: np.ndarray) -> np.ndarray:
    """Pixels whose right or lower neighbour has another label."""
    edges = np.zeros(labels.shape, bool)
    edges[:, :-1] |= labels[:, 1:] != labels[:, :-1]
    edges[:-1, :] |= labels[1:, :] != labels[:-1, :]
    return edges


def error_view_figure(
    raw: np.ndarray | None,
    prediction: np.ndarray | None,
    segmentation: np.ndarray,
    groundtruth: np.ndarray,
    error_mask: np.ndarray,
    error_labels: np.ndarray,
    title: str,
    marker: tuple[float, float] | None = None,
) -> bytes:
    """Four panels of one 2D crop: raw, prediction, segmentation over raw, the error over raw.

    Args:
        raw: (Y, X) intensities, or None (a gray panel says so).
        prediction: (Y, X) boundary map or mean affinity in [0, 1], or None (panel says so).
        segmentation: (Y, X) segment ids; groundtruth boundaries are drawn on it in white.
        groundtruth: (Y, X) body ids.
        error_mask: (Y, X) bool, the error's voxels (a merging segment, or a split body).
        error_labels: (Y, X) ids that colour the error's voxels (the bodies of a merged segment,
            or the segments of a split body).
        title: the figure title.
        marker: (row, column) to mark with a cross (the error's position), or None.
    """
    raw_name = "raw" if raw is not None else "raw (not given)"
    raw = np.zeros(np.shape(segmentation)) if raw is None else raw
    figure = Figure(figsize=(8.0, 2.4))
    axes = figure.subplots(1, 4)
    segmentation_image = _overlay(raw, segmentation)
    segmentation_image[_boundaries(groundtruth)] = 1.0
    panels = [
        (raw_name, _gray(raw)),
        ("prediction", None if prediction is None else np.clip(np.asarray(prediction, dtype=np.float64), 0, 1)),
        ("segmentation (GT borders white)", segmentation_image),
        ("error, by partner id", _overlay(raw, np.where(error_mask, error_labels, 0), error_mask, alpha=0.7)),
    ]
    for axis, (name, image) in zip(axes, panels):
        if image is None:
            axis.text(0.5, 0.5, "no prediction given", ha="center", va="center", fontsize=7, transform=axis.transAxes)
        elif image.ndim == 2:
            axis.imshow(image, cmap="magma", vmin=0, vmax=1, interpolation="nearest")
        else:
            axis.imshow(image, interpolation="nearest")
        if marker is not None and image is not None:
            axis.plot([marker[1]], [marker[0]], marker="+", color="cyan", markersize=9, markeredgewidth=1.5)
        axis.set_title(name, fontsize=7)
        axis.set_xticks([])
        axis.set_yticks([])
    figure.suptitle(title, fontsize=8)
    figure.subplots_adjust(left=0.01, right=0.99, bottom=0.02, top=0.8, wspace=0.04)
    return png_bytes(figure)


def voi_heat_map_figure(contributions: np.ndarray, blocks_per_axis: tuple[int, int, int]) -> bytes:
    """Per-block VOI split and merge shares (bits), summed over z (top view) and over y (side view).

    Args:
        contributions: (number of blocks, 2) [split, merge] bits per block in C order of the block grid.
        blocks_per_axis: the block grid (z, y, x).
    """
    grid = np.asarray(contributions, dtype=np.float64).reshape(*blocks_per_axis, 2)
    figure = Figure(figsize=(6.4, 4.6))
    axes = figure.subplots(2, 2)
    for row, term in enumerate(("split", "merge")):
        for column, (view, summed_axis, labels) in enumerate(
            (("top view, summed over z", 0, ("x block", "y block")), ("side view, summed over y", 1, ("x block", "z block")))
        ):
            axis = axes[row, column]
            image = axis.imshow(grid[..., row].sum(axis=summed_axis), cmap="viridis", interpolation="nearest", origin="upper")
            figure.colorbar(image, ax=axis, fraction=0.046, pad=0.03).ax.tick_params(labelsize=6)
            axis.set_title(f"VOI {term} (bits), {view}", fontsize=7)
            axis.set_xlabel(labels[0], fontsize=7)
            axis.set_ylabel(labels[1], fontsize=7)
            axis.tick_params(labelsize=6)
            # Integer block indices, at most about 8 ticks per axis.
            for set_ticks, extent in ((axis.set_xticks, image.get_array().shape[1]), (axis.set_yticks, image.get_array().shape[0])):
                set_ticks(np.arange(0, extent, max(1, extent // 8)))
    figure.subplots_adjust(left=0.08, right=0.95, bottom=0.08, top=0.94, wspace=0.35, hspace=0.45)
    return png_bytes(figure)


def size_histogram_figure(sizes: dict[str, np.ndarray], voxel_volume_um3: float | None) -> bytes:
    """Histograms of object sizes (voxels, log bins) of several label sets, e.g. segments and GT bodies.

    Args:
        sizes: name -> (n,) voxel counts of its objects.
        voxel_volume_um3: µm³ per voxel for a second axis, or None.
    """
    figure = Figure(figsize=(5.0, 3.0))
    axis = figure.subplots()
    largest = max([int(values.max()) for values in sizes.values() if len(values)] + [2])
    bins = np.logspace(0, np.log10(largest) + 0.01, 30)
    for name, values in sizes.items():
        axis.hist(values, bins=bins, histtype="step", linewidth=1.5, label=f"{name} ({len(values)})")
    axis.set_xscale("log")
    axis.set_yscale("log")
    axis.set_xlabel("size (voxels)", fontsize=8)
    axis.set_ylabel("objects", fontsize=8)
    axis.tick_params(labelsize=7)
    axis.legend(fontsize=7, frameon=False)
    if voxel_volume_um3:
        secondary = axis.secondary_xaxis("top", functions=(lambda v: v * voxel_volume_um3, lambda v: v / voxel_volume_um3))
        secondary.set_xlabel("size (µm³)", fontsize=8)
        secondary.tick_params(labelsize=7)
    figure.subplots_adjust(left=0.13, right=0.96, bottom=0.15, top=0.84 if voxel_volume_um3 else 0.95)
    return png_bytes(figure)


def preview_figure(raw: np.ndarray, segmentation: np.ndarray, title: str) -> bytes:
    """Raw and the segmentation over it, side by side, with segment borders.

    Sections larger than `PREVIEW_PIXELS` along an axis are subsampled (every k-th voxel) first: the
    figure has fewer pixels than that anyway, and overlay arrays of a whole large section would not fit.
    """
    step = max(1, -(-max(np.shape(segmentation)) // PREVIEW_PIXELS))
    raw, segmentation = np.asarray(raw)[::step, ::step], np.asarray(segmentation)[::step, ::step]
    figure = Figure(figsize=(6.4, 3.4))
    axes = figure.subplots(1, 2)
    overlay = _overlay(raw, segmentation)
    overlay[_boundaries(np.asarray(segmentation))] = 0
    for axis, (name, image) in zip(axes, (("raw", _gray(raw)), ("segmentation", overlay))):
        axis.imshow(image, interpolation="nearest")
        axis.set_title(name, fontsize=8)
        axis.set_xticks([])
        axis.set_yticks([])
    figure.suptitle(title, fontsize=8)
    figure.subplots_adjust(left=0.01, right=0.99, bottom=0.02, top=0.86, wspace=0.04)
    return png_bytes(figure)


def stage_figure(stage_seconds: dict[str, float], stage_peak_rss_bytes: dict[str, int]) -> bytes:
    """Horizontal bars: time and peak memory per stage (stages in the given order)."""
    stages = list(stage_seconds)
    height = 0.8 + 0.25 * len(stages)  # inches: the bars plus fixed room for the axis labels
    figure = Figure(figsize=(6.4, height))
    time_axis, memory_axis = figure.subplots(1, 2, sharey=True)
    positions = np.arange(len(stages))
    time_axis.barh(positions, [stage_seconds[stage] for stage in stages], color="tab:blue")
    memory_axis.barh(positions, [stage_peak_rss_bytes.get(stage, 0) / 2**20 for stage in stages], color="tab:orange")
    time_axis.set_yticks(positions, stages, fontsize=7)
    time_axis.invert_yaxis()
    time_axis.set_xlabel("seconds", fontsize=7)
    memory_axis.set_xlabel("peak RSS (MiB)", fontsize=7)
    for axis in (time_axis, memory_axis):
        axis.tick_params(labelsize=7)
    figure.subplots_adjust(left=0.25, right=0.98, bottom=0.5 / height, top=1 - 0.1 / height, wspace=0.08)
    return png_bytes(figure)
