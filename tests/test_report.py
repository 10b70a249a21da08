"""emflow.report: the evaluation and run reports, rendered by a real headless Chromium."""

import json
import re
import struct
import subprocess
import xml.etree.ElementTree as ElementTree
import zlib
from pathlib import Path

import numpy as np
import pytest
from system_programs import require_chromium

from emflow import evaluation
from emflow.blocking import Blocking
from emflow.report import charts, images
from emflow.report.evaluation import read_error_view, write_evaluation_report
from emflow.report.run import write_run_report

RESOLUTION = (10.0, 10.0, 10.0)


def _rendered_dom(page: Path, profile: Path) -> str:
    """The page's DOM after Chromium loaded it and its scripts ran (the figure check among them)."""
    result = subprocess.run(
        [
            require_chromium(),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            f"--user-data-dir={profile}",
            "--virtual-time-budget=5000",
            "--dump-dom",
            page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return result.stdout


def _image_size(path: Path) -> tuple[int, int]:
    """(width, height) in pixels of a PNG file (its header) or an SVG file (its root's attributes)."""
    if path.suffix == ".svg":
        root = ElementTree.parse(path).getroot()
        return int(root.get("width")), int(root.get("height"))
    header = path.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n", path
    return struct.unpack(">II", header[16:24])


def _check_page_renders_its_figures(page: Path, tmp_path: Path) -> list[str]:
    """Assert Chromium loads every image of the page at its file's size; return the image files."""
    sources = re.findall(r'<img src="([^"]+)"', page.read_text())
    assert sources and not any(source.startswith("data:") for source in sources)
    dom = _rendered_dom(page, tmp_path / "profile")
    assert f'data-figures-loaded="{len(sources)}/{len(sources)}"' in dom
    rendered = re.findall(r'<img src="([^"]+)"[^>]*data-natural-width="(\d+)" data-natural-height="(\d+)"', dom)
    assert {source: (int(width), int(height)) for source, width, height in rendered} == {
        source: _image_size(page.parent / source) for source in sources
    }
    # The check can fail: without one of its files the page counts one image less and says which.
    missing = page.parent / sources[-1]
    saved = missing.read_bytes()
    missing.unlink()
    dom = _rendered_dom(page, tmp_path / "profile")
    missing.write_bytes(saved)
    assert f'data-figures-loaded="{len(sources) - 1}/{len(sources)}"' in dom
    assert f"figure missing: {sources[-1]}" in dom
    return sources


@pytest.fixture(scope="module")
def evaluated(flyem_crop):
    """The crop's oversegmentation scored blockwise: tables, metrics, errors, block VOI shares."""
    segmentation, groundtruth = flyem_crop["oversegmentation"], flyem_crop["neuron_ids"]
    blocking = Blocking(groundtruth.shape, (32, 64, 64))
    boxes = [blocking.block(block_id) for block_id in range(blocking.number_of_blocks)]
    tables = [evaluation.block_overlaps(segmentation[box.slicing], groundtruth[box.slicing], box.begin) for box in boxes]
    table = evaluation.merge_overlaps(tables)
    errors = evaluation.segmentation_errors(table, RESOLUTION, number_of_worst=5)
    return {
        "table": table,
        "metrics": evaluation.metrics_from_overlaps(table),
        "errors": errors,
        "block_voi": evaluation.block_voi_contributions(table, tables),
        "blocks_per_axis": blocking.blocks_per_axis,
        "views": [
            read_error_view("merge", errors["worst_merges"][0], segmentation, groundtruth, flyem_crop["raw"]),
            read_error_view(
                "split",
                errors["worst_splits"][0],
                segmentation,
                groundtruth,
                flyem_crop["raw"],
                prediction=(flyem_crop["raw"] < 100).astype(np.float32),
            ),
        ],
    }


def _write_evaluation_report(directory, evaluated):
    return write_evaluation_report(
        directory,
        metrics=evaluated["metrics"],
        errors=evaluated["errors"],
        table=evaluated["table"],
        resolution=RESOLUTION,
        views=evaluated["views"],
        block_voi=evaluated["block_voi"],
        blocks_per_axis=evaluated["blocks_per_axis"],
    )


def test_evaluation_report_renders_in_chromium(evaluated, tmp_path):
    page = _write_evaluation_report(tmp_path / "report", evaluated)

    sources = _check_page_renders_its_figures(page, tmp_path)

    assert set(sources) == {"worst_merge_0.png", "worst_split_0.png", "voi_per_block.png", "sizes.svg"}
    data = json.loads((page.parent / "report.json").read_text())
    assert data["metrics"] == pytest.approx(evaluated["metrics"])
    assert data["judgement"] == evaluation.judgement(evaluated["metrics"])
    assert set(data["figures"]) == set(sources)
    assert data["errors"]["worst_merges"][0] == evaluated["errors"]["worst_merges"][0]
    assert len(data["errors"]["bodies"]) == evaluated["metrics"]["number_of_groundtruth_bodies"]
    text = page.read_text()
    assert "adapted_rand_error" in text and str(evaluated["errors"]["worst_splits"][0]["groundtruth_id"]) in text


def test_figures_are_deterministic(evaluated, tmp_path):
    first = _write_evaluation_report(tmp_path / "first", evaluated).parent
    second = _write_evaluation_report(tmp_path / "second", evaluated).parent

    for path in sorted(first.iterdir()):
        assert path.read_bytes() == (second / path.name).read_bytes(), path.name
        if path.suffix == ".png":
            assert path.stat().st_size < 300_000, path.name


def test_run_report_renders_in_chromium(flyem_crop, tmp_path):
    segmentation = flyem_crop["oversegmentation"]
    _, sizes = np.unique(segmentation[segmentation != 0], return_counts=True)
    stage_seconds = {"predict": 12.5, "supervoxels": 3.0, "graph": 2.0, "multicut": 1.25}
    stage_peak_rss_bytes = {"predict": 3 * 2**30, "supervoxels": 2**29, "graph": 2**28}

    page = write_run_report(
        tmp_path / "work",
        stage_seconds=stage_seconds,
        stage_peak_rss_bytes=stage_peak_rss_bytes,
        segment_sizes=sizes,
        raw_section=flyem_crop["raw"][32],
        segmentation_section=segmentation[32],
        resolution=RESOLUTION,
        volume_shape=segmentation.shape,
    )

    sources = _check_page_renders_its_figures(page, tmp_path)
    assert set(sources) == {"run_preview.png", "run_sizes.svg", "run_stages.svg"}
    data = json.loads((page.parent / "run_report.json").read_text())
    assert data["segments"]["number_of_segments"] == sizes.size
    assert data["segments"]["segmented_voxels"] == np.count_nonzero(segmentation)
    assert data["segments"]["p50_voxels"] == np.median(sizes)
    assert data["total_seconds"] == 18.75
    assert data["megavoxels_per_second"] == pytest.approx(segmentation.size / 1e6 / 18.75)
    assert data["peak_rss_bytes"] == 3 * 2**30
    assert data["stages"]["multicut"] == {"seconds": 1.25, "peak_rss_bytes": 0}


def _decoded_png(data: bytes) -> np.ndarray:
    """The (H, W, 3) uint8 pixels of an 8-bit RGB PNG whose rows are unfiltered (filter type 0)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    chunks, position = {}, 8
    while position < len(data):
        (length,) = struct.unpack(">I", data[position : position + 4])
        kind, body = data[position + 4 : position + 8], data[position + 8 : position + 8 + length]
        assert struct.unpack(">I", data[position + 8 + length : position + 12 + length])[0] == zlib.crc32(kind + body)
        chunks[kind] = chunks.get(kind, b"") + body
        position += 12 + length
    width, height, depth, color_type = struct.unpack(">IIBB", chunks[b"IHDR"][:10])
    assert (depth, color_type) == (8, 2)
    rows = np.frombuffer(zlib.decompress(chunks[b"IDAT"]), np.uint8).reshape(height, 1 + 3 * width)
    assert (rows[:, 0] == 0).all()
    return rows[:, 1:].reshape(height, width, 3)


def test_section_preview_png_holds_the_pixels(flyem_crop):
    raw, segmentation = flyem_crop["raw"][32], flyem_crop["oversegmentation"][32]

    preview = images.preview_image(raw, segmentation)
    decoded = _decoded_png(images.rgb_png(preview))

    # A small section is enlarged by a whole factor, each voxel a square of pixels.
    zoom = images.PREVIEW_MIN_PIXELS // max(segmentation.shape)
    assert zoom >= 2
    assert decoded.shape == (zoom * segmentation.shape[0], 2 * zoom * segmentation.shape[1] + images.PANEL_GAP, 3)
    np.testing.assert_array_equal(decoded, np.round(preview * 255).astype(np.uint8))
    # Left: raw in gray; right: borders black, the inside of a segment tinted by its colour.
    left = decoded[::zoom, : zoom * segmentation.shape[1] : zoom]
    assert (left[..., 0] == left[..., 1]).all() and (left[..., 1] == left[..., 2]).all()
    right = decoded[::zoom, zoom * segmentation.shape[1] + images.PANEL_GAP :: zoom]
    np.testing.assert_array_equal(right[images.label_borders(segmentation)], 0)
    assert not (right[..., 0] == right[..., 1]).all()
    np.testing.assert_array_equal(decoded, decoded[::zoom].repeat(zoom, axis=0))
    # A section larger than PREVIEW_PIXELS is subsampled to fit.
    large = np.tile(segmentation, (1, -(-images.PREVIEW_PIXELS // segmentation.shape[1]) + 1))
    assert (
        images.preview_image(np.tile(raw, (1, large.shape[1] // raw.shape[1])), large).shape[1]
        <= 2 * images.PREVIEW_PIXELS + images.PANEL_GAP
    )


def test_stage_chart_bars_follow_the_numbers():
    stage_seconds = {"supervoxels": 12.0, "block_graph": 6.0, "multicut": 0.5}
    svg = ElementTree.fromstring(charts.stage_bars_svg(stage_seconds, {"supervoxels": 2**30}))

    namespace = "{http://www.w3.org/2000/svg}"
    bars = [rect for rect in svg.iter(f"{namespace}rect") if rect.get("fill") in charts.COLORS]
    seconds_bars = [float(rect.get("width")) for rect in bars if rect.get("fill") == charts.COLORS[0]]
    memory_bars = [float(rect.get("width")) for rect in bars if rect.get("fill") == charts.COLORS[1]]
    assert len(seconds_bars) == len(memory_bars) == 3
    pixels_per_second = seconds_bars[0] / 12.0
    assert seconds_bars == pytest.approx([seconds * pixels_per_second for seconds in stage_seconds.values()], abs=0.1)
    assert memory_bars[0] > 0 and memory_bars[1:] == [0, 0]
    labels = [text.text for text in svg.iter(f"{namespace}text")]
    assert {"supervoxels", "block_graph", "multicut", "seconds", "peak RSS (MiB)"} <= set(labels)


def test_nice_ticks_cover_the_largest_value():
    for largest in (0.3, 1.0, 13.62, 312.0, 7e5):
        ticks = charts.nice_ticks(largest)
        assert ticks[0] == 0 and ticks[-1] >= largest and ticks[-2] < largest
        steps = np.diff(ticks)
        assert np.allclose(steps, steps[0]) and 2 <= len(ticks) <= 7
