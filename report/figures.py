"""The evaluation report's slice views and heat maps, as PNG bytes: deterministic (same data, same
bytes) and small. (The charts are SVG, `charts`; section previews are encoded directly, `images`.)

matplotlib's object API on its Agg canvas, never pyplot, so that no global state or GUI backend is
involved; PNGs carry no software or date metadata.
"""

from __future__ import annotations

import io

import numpy as np
from matplotlib.figure import Figure

from .images import gray, label_borders, overlay

# 100 dpi: a 4-panel slice view of 6.4 x 1.9 inches is 640 x 190 pixels, about 100 kB.
DPI = 100


def png_bytes(figure: Figure) -> bytes:
    """The figure as PNG bytes at `DPI`, without software or date metadata (so the same figure gives the same bytes)."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI, metadata={"Software": None})
    return buffer.getvalue()


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
    segmentation_image = overlay(raw, segmentation)
    segmentation_image[label_borders(groundtruth)] = 1.0
    panels = [
        (raw_name, gray(raw)),
        ("prediction", None if prediction is None else np.clip(np.asarray(prediction, dtype=np.float64), 0, 1)),
        ("segmentation (GT borders white)", segmentation_image),
        ("error, by partner id", overlay(raw, np.where(error_mask, error_labels, 0), error_mask, alpha=0.7)),
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
