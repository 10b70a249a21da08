"""emflow view: neuroglancer, served on 127.0.0.1, draws the segmentation over the raw data (headless Chromium).

Set EMFLOW_VIEWER_SCREENSHOT to a .png path to keep the screenshot (the README's, docs/viewer.png).
"""

import io
import json
import os
import signal
import subprocess
import sys
import urllib.request

import h5py
import numpy as np
import pytest
import zarr
from PIL import Image
from system_programs import require_chromium

from emflow.blocking import Blocking
from emflow.meshes import block_meshes, merge_meshes, mesh_read_box
from emflow.pyramid import downsample_labels, pyramid_factors
from emflow.storage.output import OWNER_ATTRIBUTE, create_block_image, create_output_group, set_group_attributes
from emflow.storage.precomputed import mesh_folder, write_legacy_meshes

pytest.importorskip("neuroglancer", reason="neuroglancer is needed by emflow view: pip install neuroglancer")
from emflow.viewer.serve import serve, sources_from_output  # noqa: E402

RESOLUTION = (10.0, 10.0, 10.0)
BLOCK_SHAPE = (32, 64, 64)


@pytest.fixture(scope="module")
def output(tmp_path_factory, flyem_crop):
    """An output group as a run leaves it: raw in an HDF5 input, the segmentation as a label pyramid, and its meshes."""
    folder = tmp_path_factory.mktemp("view")
    with h5py.File(folder / "input.h5", "w") as file:
        file["raw"] = flyem_crop["raw"]
    labels = flyem_crop["neuron_ids"].astype(np.uint64)
    create_output_group(folder / "out.zarr")
    run_input = {"path": str(folder / "input.h5"), "raw_key": "raw", "boundaries_key": "", "resolution": list(RESOLUTION)}
    set_group_attributes(folder / "out.zarr", {OWNER_ATTRIBUTE: {"config": {"input": run_input}}})
    factors = pyramid_factors(RESOLUTION, labels.shape, BLOCK_SHAPE)
    create_block_image(folder / "out.zarr", "segmentation", labels.shape, BLOCK_SHAPE, np.uint64, RESOLUTION, factors, label=True)
    level = labels
    for number in range(len(factors) + 1):
        level = level if number == 0 else downsample_labels(level, factors[number - 1])
        zarr.open_array(folder / "out.zarr" / "segmentation" / f"s{number}", mode="r+")[...] = level
    blocking = Blocking(labels.shape, BLOCK_SHAPE)
    blocks = [blocking.block(block_id) for block_id in range(blocking.number_of_blocks)]
    parts = [block_meshes(labels[mesh_read_box(block, labels.shape).slicing], block, labels.shape, RESOLUTION) for block in blocks]
    write_legacy_meshes(mesh_folder(folder / "out.zarr"), merge_meshes(parts))
    return folder / "out.zarr"


def screenshot(viewer, segmentation_visible: bool) -> np.ndarray:
    with viewer.txn() as state:
        state.layout = "xy"
        state.layers["segmentation"].visible = segmentation_visible
    reply = viewer.screenshot(size=[640, 480])
    return np.asarray(Image.open(io.BytesIO(reply.screenshot.image)).convert("RGB")).astype(np.float64)


def test_segmentation_is_drawn_over_the_raw_data(tmp_path, output):
    chromium = require_chromium()
    running = serve(sources_from_output(output))
    browser = subprocess.Popen(
        [chromium, "--headless=new", "--no-sandbox", "--use-angle=swiftshader", "--enable-unsafe-swiftshader", "--window-size=800,600"]
        + [f"--user-data-dir={tmp_path / 'chromium'}", running.url],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        # The meshes are served where the segmentation layer reads them.
        with urllib.request.urlopen(f"{running.data_url}/meshes/info", timeout=10) as response:
            assert json.load(response) == {"@type": "neuroglancer_legacy_mesh"}
        raw_only = screenshot(running.viewer, segmentation_visible=False)
        overlaid = screenshot(running.viewer, segmentation_visible=True)
        if os.environ.get("EMFLOW_VIEWER_SCREENSHOT"):
            Image.fromarray(overlaid.astype(np.uint8)).save(os.environ["EMFLOW_VIEWER_SCREENSHOT"], optimize=True)
    finally:
        browser.send_signal(signal.SIGTERM)
        browser.wait(timeout=30)
        running.stop()
    saturation = lambda image: image.max(axis=2) - image.min(axis=2)  # noqa: E731
    # The raw data alone is grey, with the texture of EM.
    data = raw_only.std(axis=2) < 1
    assert data.mean() > 0.9 and raw_only[data].std() > 10
    # With the segmentation, most of the section is coloured...
    coloured = saturation(overlaid) > 40
    assert coloured.mean() > 0.5
    # ...and the raw data shows through the colours: their brightness follows it.
    brightness = overlaid.mean(axis=2)
    assert np.corrcoef(brightness[coloured], raw_only[..., 0][coloured])[0, 1] > 0.3


def test_emflow_view_prints_the_viewer_url_first_and_stops_on_interrupt(output):
    process = subprocess.Popen(
        [sys.executable, "-m", "emflow.cli.main", "view", str(output), "--no-browser"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        first = process.stdout.readline()
        url = first[first.index("http://") :].split()[0]
        assert url.startswith("http://127.0.0.1:")
        with urllib.request.urlopen(url, timeout=10) as response:
            assert response.status == 200 and b"neuroglancer" in response.read().lower()
    finally:
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=30) == 0
