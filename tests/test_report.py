"""emflow.report: the evaluation and run reports, rendered by a real headless Chromium."""

import json
import re
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest
from system_programs import require_chromium

from emflow import evaluation
from emflow.blocking import Blocking
from emflow.report import read_error_view, write_evaluation_report, write_run_report

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


def _png_size(path: Path) -> tuple[int, int]:
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
        source: _png_size(page.parent / source) for source in sources
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

    assert set(sources) == {"worst_merge_0.png", "worst_split_0.png", "voi_per_block.png", "sizes.png"}
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
    assert set(sources) == {"run_preview.png", "run_sizes.png", "run_stages.png"}
    data = json.loads((page.parent / "run_report.json").read_text())
    assert data["segments"]["number_of_segments"] == sizes.size
    assert data["segments"]["segmented_voxels"] == np.count_nonzero(segmentation)
    assert data["segments"]["p50_voxels"] == np.median(sizes)
    assert data["total_seconds"] == 18.75
    assert data["megavoxels_per_second"] == pytest.approx(segmentation.size / 1e6 / 18.75)
    assert data["peak_rss_bytes"] == 3 * 2**30
    assert data["stages"]["multicut"] == {"seconds": 1.25, "peak_rss_bytes": 0}
