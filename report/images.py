"""Pictures of sections without a plotting library: label colours, overlays, and PNG encoding.

The run report is written at the end of every run, so its figures must cost little: importing
matplotlib alone took 0.6 s and drawing the run report's three figures with it 0.5 s more (62.5 MVox
benchmark run, 2 cores), 7 % of the whole run. A section preview is an image, so it is encoded
here directly (zlib level 1: 23 ms and 0.95 MB for two 500 x 500 panels of a noisy boundary map, against 120 ms and 1.05 MB at level 6); the charts are SVG (`charts`).
"""

from __future__ import annotations

import struct
import zlib

import numpy as np

# Largest section edge drawn in a preview (voxels); wider sections are subsampled to fit.
PREVIEW_PIXELS = 1024
# Smallest panel edge of a preview (pixels): smaller sections are enlarged by a whole factor, each
# voxel a square of pixels, so that a small crop (the demo's 128 x 128) is not a thumbnail.
PREVIEW_MIN_PIXELS = 384
# Columns of white between the two panels of a preview.
PANEL_GAP = 8


def label_colors(labels: np.ndarray) -> np.ndarray:
    """(..., 3) float32 RGB in [0.25, 1] per label id, the same colour for the same id in every figure;
    black for 0. A multiplicative hash spreads neighbouring ids over unrelated colours."""
    labels = np.asarray(labels)
    hashed = labels.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
    hashed ^= hashed >> np.uint64(31)
    # Each channel's byte cast straight into its float plane, not a stack of three uint64 arrays
    # (the run report's 500 x 500 preview section: 5-6 against 11-20 ms, the same values).
    colors = np.empty(labels.shape + (3,), np.float32)
    for channel, shift in enumerate((8, 24, 40)):
        colors[..., channel] = (hashed >> np.uint64(shift)).astype(np.uint8)
    colors *= np.float32(0.75 / 255)
    colors += np.float32(0.25)
    colors[labels == 0] = 0
    return colors


def gray(image: np.ndarray) -> np.ndarray:
    """(Y, X, 3) float32 RGB in [0, 1]: intensities scaled between their 1st and 99th percentile."""
    image = np.asarray(image, dtype=np.float32)
    low, high = np.percentile(image, [1, 99]).astype(np.float32) if image.size else (0.0, 1.0)
    # A constant image (no raw data given) shows as mid gray.
    scaled = np.clip((image - low) / (high - low), 0, 1) if high > low else np.full(image.shape, 0.5, np.float32)
    return np.repeat(scaled[..., None], 3, axis=-1)


def overlay(raw: np.ndarray, labels: np.ndarray, mask: np.ndarray | None = None, alpha: float = 0.45) -> np.ndarray:
    """(Y, X, 3) float32 RGB: raw in gray with ``labels`` coloured on top where ``mask`` (default: labels != 0)."""
    return paint(gray(raw), labels, mask, alpha)


def paint(image: np.ndarray, labels: np.ndarray, mask: np.ndarray | None = None, alpha: float = 0.45) -> np.ndarray:
    """``image`` ((Y, X, 3) float RGB, changed in place and returned) with ``labels`` coloured on
    top where ``mask`` (default: labels != 0), at opacity ``alpha``."""
    labels = np.asarray(labels)
    mask = labels != 0 if mask is None else mask
    # Blended everywhere and copied where masked: 8.5 against 16 ms for a 500 x 500 section with
    # the masked pixels gathered and scattered back (the run report's preview), the same values.
    np.copyto(image, (1 - alpha) * image + alpha * label_colors(labels), where=np.asarray(mask)[..., None])
    return image


def label_borders(labels: np.ndarray) -> np.ndarray:
    """(Y, X) bool: pixels whose right or lower neighbour has another label."""
    edges = np.zeros(labels.shape, bool)
    edges[:, :-1] |= labels[:, 1:] != labels[:, :-1]
    edges[:-1, :] |= labels[1:, :] != labels[:-1, :]
    return edges


def rgb_png(image: np.ndarray) -> bytes:
    """PNG bytes of an (H, W, 3) RGB image, float in [0, 1] (rounded to 8 bits) or uint8.

    No metadata, so the same image always gives the same bytes.
    """
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or 0 in image.shape:
        raise ValueError(f"image must be (H, W, 3) and not empty, got shape {image.shape}")
    if image.dtype != np.uint8:
        image = np.round(np.clip(image, 0, 1) * 255).astype(np.uint8)
    height, width = image.shape[:2]
    # Filter type 0 (none) before each row.
    rows = np.concatenate([np.zeros((height, 1), np.uint8), image.reshape(height, width * 3)], axis=1)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB, no interlace
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows.tobytes(), 1)) + chunk(b"IEND", b"")


def preview_image(raw: np.ndarray, segmentation: np.ndarray) -> np.ndarray:
    """(k Y, 2 k X + `PANEL_GAP`, 3) float32 RGB: the raw section beside the segmentation over it,
    with segment borders in black.

    Sections larger than `PREVIEW_PIXELS` along an axis are subsampled (every k-th voxel) first, so
    that a preview of a large section stays small; sections smaller than `PREVIEW_MIN_PIXELS` are
    enlarged by the whole factor k that keeps them under it.
    """
    largest = max(np.shape(segmentation))
    step = max(1, -(-largest // PREVIEW_PIXELS))
    raw, segmentation = np.asarray(raw)[::step, ::step], np.asarray(segmentation)[::step, ::step]
    raw_panel = gray(raw)
    segmented = paint(raw_panel.copy(), segmentation)
    segmented[label_borders(segmentation)] = 0
    zoom = max(1, PREVIEW_MIN_PIXELS // max(largest, 1))
    left, right = (panel.repeat(zoom, axis=0).repeat(zoom, axis=1) for panel in (raw_panel, segmented))
    return np.concatenate([left, np.ones((left.shape[0], PANEL_GAP, 3), np.float32), right], axis=1)
