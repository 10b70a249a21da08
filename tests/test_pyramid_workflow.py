"""A run's output images as OME-Zarr: every image valid, labels read as labels, pyramid levels made
block by block equal to downsampling the whole level, and the segmentation's levels its node labels
applied to the supervoxels' levels."""

import numpy as np
import pytest
import zarr
from workflow_helpers import RESOLUTION, read, run_cli, write_config

from emflow.pyramid import downsample_labels
from emflow.workflows.segmentation import SEGMENTATION, load_run

ome_zarr_models = pytest.importorskip("ome_zarr_models", reason="ome-zarr-models is a test dependency: pip install ome-zarr-models")
ome_zarr = pytest.importorskip("ome_zarr", reason="ome-zarr is a test dependency: pip install ome-zarr")
from ome_zarr.io import parse_url  # noqa: E402
from ome_zarr.reader import Label, Multiscales, Reader  # noqa: E402
from ome_zarr_models.v05.image import Image  # noqa: E402
from ome_zarr_models.v05.image_label import ImageLabel  # noqa: E402

BLOCK_SHAPE = (16, 32, 32)  # 4 x 4 x 4 blocks of the crop: two pyramid levels, the last fitting one block


@pytest.fixture(scope="module")
def run(tmp_path_factory, workflow_inputs):
    folder = tmp_path_factory.mktemp("pyramid")
    config = write_config(
        folder / "config.toml", workflow_inputs, folder / "out.zarr", block_shape=BLOCK_SHAPE, halo=(4, 8, 8), output={"pyramid": True}
    )
    assert run_cli("run", config, "--workers", "2") == 0
    return load_run(str(config.resolve())), folder / "out.zarr"


def test_pyramid_levels_are_stages_down_to_one_block(run):
    run, _ = run
    factors = run.geometry.level_factors
    assert factors == ((2, 2, 2), (2, 2, 2))
    assert [spec.name for spec in run.stages][-4:] == ["pyramid_s1", "write_segmentation_s1", "pyramid_s2", "write_segmentation_s2"]
    assert run.geometry.level_shape(2) == (16, 32, 32) and run.geometry.level_blocking(2).number_of_blocks == 1


def test_ready_tasks_go_by_the_most_work_on_a_chain_of_stages_after_them(run):
    """Luigi hands out the ready task of highest priority first. The block graph (the merge, the
    costs, the multicut and the segmentation's blocks after it) goes before the first pyramid
    level (its segmentation level's blocks, or the next levels), the multicut before the second
    level, and the first level before the segmentation's blocks (nothing after them): once the
    multicut is solved the level that the later levels wait for runs beside the segmentation's
    blocks, not alone at the end."""
    run, _ = run
    blocks = {spec.name: spec.blocks(run).number_of_blocks for spec in run.stages if spec.blockwise}
    work = {spec.name: run.work_after(spec) for spec in run.stages}
    segmentation = blocks["write_segmentation"]
    assert work == {
        "prepare_output": blocks["supervoxels"] + work["supervoxels"],
        "supervoxels": blocks["block_graph"] + 3 + segmentation,
        "supervoxel_ids": 3 + segmentation,
        "block_graph": 3 + segmentation,
        "merge_graph": 2 + segmentation,
        "edge_costs": 1 + segmentation,
        "multicut": segmentation,
        "write_segmentation": 0,
        "pyramid_s1": max(blocks["write_segmentation_s1"], blocks["pyramid_s2"] + blocks["write_segmentation_s2"]),
        "write_segmentation_s1": 0,
        "pyramid_s2": blocks["write_segmentation_s2"],
        "write_segmentation_s2": 0,
    }
    priority = {spec.name: SEGMENTATION.block_task(run.config_path, spec.name, 0).priority for spec in run.stages if spec.blockwise}
    assert (
        priority["supervoxels"] > priority["block_graph"] > priority["pyramid_s1"] > priority["pyramid_s2"] > priority["write_segmentation"]
    )
    # Equal chains: the run order decides.
    assert priority["write_segmentation"] > priority["write_segmentation_s1"] > priority["write_segmentation_s2"]
    assert SEGMENTATION.stage_task(run.config_path, "edge_costs").priority > priority["pyramid_s1"]
    assert SEGMENTATION.stage_task(run.config_path, "multicut").priority > priority["pyramid_s2"]


def test_block_groups_wait_for_the_groups_whose_blocks_they_read(run):
    """A block group of a stage whose every read of a block-wise stage is linked requires the
    groups of that stage holding blocks it reads, each holding some, together all, and not that
    stage as a whole; the stages it reads otherwise (global ones) it requires whole."""
    run, _ = run
    for stage, upstream in (("block_graph", "supervoxels"), ("write_segmentation", "supervoxels"), ("pyramid_s2", "pyramid_s1")):
        spec = run.stage(stage)
        links = [run.linked_blocks(spec, read) for read in run.reads(spec) if run.producer(read) is run.stage(upstream)]
        assert links and all(linked is not None for linked in links)
        for group in SEGMENTATION.stage_task(run.config_path, stage).requires():
            first, stop = group.block_range
            read = {int(block_id) for linked in links for block_id in range(first, stop) for block_id in linked[block_id]}
            required = group.requires()
            families = {task.get_task_family() for task in required}
            assert f"{upstream}.stage" not in families
            held = [set(range(*task.block_range)) for task in required if task.get_task_family() == upstream]
            assert all(blocks & read for blocks in held) and read <= set().union(*held)
    write_group = SEGMENTATION.stage_task(run.config_path, "write_segmentation").requires()[0]
    assert {"multicut", "supervoxel_ids", "prepare_output"} <= {task.get_task_family() for task in write_group.requires()}


def test_block_wise_supervoxel_levels_equal_whole_volume_downsampling(run):
    run, output = run
    group = zarr.open_group(str(output / "supervoxels"), mode="r")
    level = np.asarray(group["s0"][...])
    for index, factors in enumerate(run.geometry.level_factors, start=1):
        level = downsample_labels(level, factors)
        assert np.array_equal(np.asarray(group[f"s{index}"][...]), level), f"supervoxels s{index}"


def test_segmentation_levels_are_the_node_labels_of_the_supervoxel_levels(run):
    run, output = run
    segmentation = zarr.open_group(str(output / "segmentation"), mode="r")
    supervoxels = zarr.open_group(str(output / "supervoxels"), mode="r")
    # The node labels, recovered from level 0: each supervoxel lies in one segment.
    ids, first = np.unique(np.asarray(supervoxels["s0"][...]), return_index=True)
    segment_of = dict(zip(ids.tolist(), np.asarray(segmentation["s0"][...]).ravel()[first].tolist()))
    for index in range(1, len(run.geometry.level_factors) + 1):
        level_ids = np.asarray(supervoxels[f"s{index}"][...])
        expected = np.vectorize(segment_of.__getitem__, otypes=[np.uint64])(level_ids)
        assert np.array_equal(np.asarray(segmentation[f"s{index}"][...]), expected), f"segmentation s{index}"


def test_every_output_image_is_valid_ome_zarr_and_labels_read_as_labels(run):
    run, output = run
    for name, volume in run.store.volumes.items():
        if volume.level:
            continue
        group = zarr.open_group(str(output / volume.image), mode="r")
        model = (ImageLabel if volume.label else Image).from_zarr(group)
        (multiscale,) = model.ome_attributes.multiscales
        assert [axis.unit for axis in multiscale.axes if axis.type == "space"] == ["nanometer"] * 3, name
        scale = multiscale.datasets[0].coordinateTransformations[0].scale
        assert list(scale)[-3:] == RESOLUTION, name
        assert all(group[dataset.path].metadata.dimension_names[-3:] == ("z", "y", "x") for dataset in multiscale.datasets), name
        (node,) = list(Reader(parse_url(str(output / volume.image)))())
        assert any(isinstance(spec, Multiscales) for spec in node.specs), name
        assert any(isinstance(spec, Label) for spec in node.specs) == volume.label, name
    assert np.array_equal(read(output, "segmentation"), np.asarray(zarr.open_group(str(output / "segmentation"), mode="r")["s0"][...]))
