"""The reports' charts as SVG text: deterministic (same data, same bytes), small, no plotting library.

Browsers draw SVG files given as ``<img>`` like PNGs, at the ``width`` and ``height`` written here
(pixels). Text is placed with an estimated width per character (`CHARACTER_WIDTH`), which is all a
chart of a few labels needs.
"""

from __future__ import annotations

import html
import math

import numpy as np

FONT_SIZE = 11
# Pixels per character of FONT_SIZE sans-serif text, generous so that labels do not overlap.
CHARACTER_WIDTH = 6.6
# matplotlib's "tab10" colours, in order, so that the charts look like the matplotlib figures.
COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b")
HISTOGRAM_BINS = 30


def _svg(width: float, height: float, elements: list[str]) -> str:
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" height="{height:.0f}" '
        f'viewBox="0 0 {width:.0f} {height:.0f}" font-family="sans-serif" font-size="{FONT_SIZE}">\n'
        f'<rect width="100%" height="100%" fill="white"/>\n' + "\n".join(elements) + "\n</svg>\n"
    )


def _text(x: float, y: float, text: str, anchor: str = "middle", **attributes) -> str:
    extra = "".join(f' {name.replace("_", "-")}="{value}"' for name, value in attributes.items())
    return f'<text x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}"{extra}>{html.escape(text)}</text>'


def _line(x1: float, y1: float, x2: float, y2: float, color: str = "#222") -> str:
    return f'<line x1="{x1:.1f}" y1="{y1:.1f}" x2="{x2:.1f}" y2="{y2:.1f}" stroke="{color}"/>'


def _number(value: float) -> str:
    """A tick label: plain digits up to 99999, else a power of ten or 3 significant digits."""
    if value == 0:
        return "0"
    if 1e-3 <= abs(value) < 1e5:
        return str(int(value)) if float(value).is_integer() else f"{value:.4g}"
    exponent = math.floor(math.log10(abs(value)))
    mantissa = value / 10**exponent
    return f"1e{exponent}" if math.isclose(mantissa, 1) else f"{value:.3g}"


def nice_ticks(largest: float, count: int = 4) -> list[float]:
    """Ticks 0, s, 2 s, ... covering [0, largest], s a 1, 2 or 5 times a power of ten, about `count` of them."""
    if not largest > 0:
        return [0.0, 1.0]
    raw_step = largest / count
    power = 10 ** math.floor(math.log10(raw_step))
    step = next(factor * power for factor in (1, 2, 5, 10) if factor * power >= raw_step)
    return [index * step for index in range(math.ceil(largest / step - 1e-9) + 1)]


def size_histogram_svg(sizes: dict[str, np.ndarray], voxel_volume_um3: float | None) -> str:
    """Step histograms of object sizes (voxels, `HISTOGRAM_BINS` log bins, log counts) of several
    label sets, e.g. segments and groundtruth bodies, with the size in µm³ along the top.

    Args:
        sizes: name -> (n,) voxel counts of its objects.
        voxel_volume_um3: µm³ per voxel for the top axis, or None (no top axis).
    """
    width, height = 520.0, 320.0
    left, right, top, bottom = 60.0, 20.0, 48.0 if voxel_volume_um3 else 20.0, 44.0
    plot_width, plot_height = width - left - right, height - top - bottom
    largest = max([int(np.max(values)) for values in sizes.values() if len(values)] + [2])
    edges = np.logspace(0, np.log10(largest) + 0.01, HISTOGRAM_BINS)
    counts = {name: np.histogram(np.asarray(values), bins=edges)[0] for name, values in sizes.items()}
    highest = max([int(count.max()) for count in counts.values() if count.size] + [1])
    x_decades = math.log10(edges[-1])
    y_decades = math.ceil(math.log10(highest) + 1e-9) or 1

    def x_of(size: float) -> float:
        return left + plot_width * math.log10(size) / x_decades

    def y_of(count: float) -> float:
        # The axis runs from half an object, where empty bins sit, to 10**y_decades objects.
        return top + plot_height * (1 - (math.log10(max(count, 0.5)) + math.log10(2)) / (y_decades + math.log10(2)))

    elements = [f'<rect x="{left}" y="{top}" width="{plot_width}" height="{plot_height}" fill="none" stroke="#222"/>']
    for decade in range(math.floor(x_decades) + 1):
        x = x_of(10**decade)
        elements += [_line(x, top + plot_height, x, top + plot_height + 4), _text(x, top + plot_height + 16, _number(10**decade))]
        if voxel_volume_um3:
            elements += [_line(x, top, x, top - 4), _text(x, top - 8, _number(10**decade * voxel_volume_um3))]
    for decade in range(y_decades + 1):
        y = y_of(10**decade)
        elements += [_line(left - 4, y, left, y), _text(left - 7, y + 4, _number(10**decade), anchor="end")]
    elements.append(_text(left + plot_width / 2, height - 8, "size (voxels)"))
    if voxel_volume_um3:
        elements.append(_text(left + plot_width / 2, 14, "size (µm³)"))
    elements.append(_text(14, top + plot_height / 2, "objects", transform=f"rotate(-90 14 {top + plot_height / 2:.1f})"))
    for index, (name, count) in enumerate(counts.items()):
        color = COLORS[index % len(COLORS)]
        points = []
        for begin, end, value in zip(edges[:-1], edges[1:], count):
            y = y_of(value)
            points += [f"{x_of(begin):.1f},{y:.1f}", f"{x_of(end):.1f},{y:.1f}"]
        elements.append(f'<polyline points="{" ".join(points)}" fill="none" stroke="{color}" stroke-width="1.5"/>')
        legend_y = top + 16 + 16 * index
        elements += [
            _line(left + plot_width - 170, legend_y - 4, left + plot_width - 150, legend_y - 4, color),
            _text(left + plot_width - 144, legend_y, f"{name} ({len(sizes[name])})", anchor="start"),
        ]
    return _svg(width, height, elements)


def stage_bars_svg(stage_seconds: dict[str, float], stage_peak_rss_bytes: dict[str, int]) -> str:
    """Horizontal bars, one row per stage in the given order: seconds on the left, peak resident
    memory (MiB) on the right; a stage missing from `stage_peak_rss_bytes` shows 0."""
    stages = list(stage_seconds)
    row_height, panel_width, gap = 20.0, 220.0, 30.0
    label_width = 12 + CHARACTER_WIDTH * max([len(stage) for stage in stages] + [5])
    top, bottom = 10.0, 44.0
    plot_height = row_height * max(len(stages), 1)
    width = label_width + 2 * panel_width + gap + 20
    height = top + plot_height + bottom
    elements = []
    for row, stage in enumerate(stages):
        elements.append(_text(label_width - 6, top + row_height * (row + 0.5) + 4, stage, anchor="end"))
    panels = (
        ("seconds", [float(stage_seconds[stage]) for stage in stages], COLORS[0]),
        ("peak RSS (MiB)", [stage_peak_rss_bytes.get(stage, 0) / 2**20 for stage in stages], COLORS[1]),
    )
    for index, (title, values, color) in enumerate(panels):
        left = label_width + index * (panel_width + gap)
        ticks = nice_ticks(max(values, default=0.0))
        scale = panel_width / ticks[-1]
        elements.append(f'<rect x="{left:.1f}" y="{top}" width="{panel_width}" height="{plot_height}" fill="none" stroke="#222"/>')
        for row, value in enumerate(values):
            elements.append(
                f'<rect x="{left:.1f}" y="{top + row_height * row + 3:.1f}" width="{value * scale:.1f}" '
                f'height="{row_height - 6:.1f}" fill="{color}"/>'
            )
        for tick in ticks:
            x = left + tick * scale
            elements += [_line(x, top + plot_height, x, top + plot_height + 4), _text(x, top + plot_height + 16, _number(tick))]
        elements.append(_text(left + panel_width / 2, height - 8, title))
    return _svg(width, height, elements)
