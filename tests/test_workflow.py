"""End-to-end runs of the block-wise workflow on real FIB-SEM data, through the CLI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import h5py
import luigi
import numpy as np
import pytest
from workflow_helpers import read, read_node_ids, records_since, run_cli, write_config, write_inputs

from emflow.blocking import Blocking
from emflow.costs import edge_costs_from_features
from emflow.evaluation import adapted_rand_error, evaluate
from emflow.graph import in_core_graph_features
from emflow.labels import supervoxel_id_stride
from emflow.storage.volumes import write_volume
from emflow.targets import JournalReader
from emflow.tasks.adapter import invalidate_records, stage_costs, stage_results, stage_target, task_costs
from emflow.workflows.segmentation import SEGMENTATION, load_run
from emflow.workflows.status import workflow_status


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, flyem_crop):
    return write_inputs(tmp_path_factory.mktemp("inputs"), flyem_crop)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, inputs):
    """One complete block-wise run (8 blocks) that several tests inspect without modifying."""
    folder = tmp_path_factory.mktemp("run")
    config = write_config(folder / "config.toml", inputs, folder / "out.zarr")
    assert run_cli("run", config, "--workers", "2") == 0
    return config, folder / "out.zarr"


def test_blockwise_graph_equals_in_core_graph(finished_run, inputs):
    _, output = finished_run
    supervoxels = read_node_ids(output)
    edges, features, number_of_nodes = in_core_graph_features(supervoxels, read(inputs, "boundaries").astype(np.float32))
    assert np.array_equal(read(output, "graph/edges"), edges)
    np.testing.assert_allclose(read(output, "graph/edge_features"), features, rtol=1e-10, atol=1e-12)
    assert number_of_nodes == supervoxels.max() + 1


def test_supervoxel_ids_are_numbered_per_block_and_cover_the_volume(finished_run):
    _, output = finished_run
    supervoxels = read(output, "supervoxels")
    blocking = Blocking(supervoxels.shape, (32, 64, 64))
    assert supervoxel_id_stride(blocking.block_shape) == 10**6
    for block_id in range(blocking.number_of_blocks):
        ids = np.unique(supervoxels[blocking.block(block_id).slicing])
        assert ids[0] == block_id * 10**6 + 1, "no voxel may keep id 0 without a mask"
        assert np.array_equal(ids, np.arange(ids[0], ids[0] + ids.size)), block_id
    nodes = np.unique(read_node_ids(output))
    assert np.array_equal(nodes, np.arange(1, nodes.size + 1))
    assert nodes.size + 1 == read(output, "graph/node_labels").size


def test_segmentation_matches_node_labels_and_is_ome_zarr(finished_run):
    _, output = finished_run
    segmentation = read(output, "segmentation")
    node_labels = read(output, "graph/node_labels")
    assert np.array_equal(segmentation, node_labels[read_node_ids(output)])
    import zarr

    group = zarr.open_group(str(output / "segmentation"), mode="r")
    multiscale = group.attrs["ome"]["multiscales"][0]
    assert group.attrs["ome"]["version"] == "0.5"
    assert multiscale["datasets"][0]["coordinateTransformations"][0]["scale"] == [10.0, 10.0, 10.0]
    assert group["s0"].dtype == np.uint64
    assert group["s0"].chunks == (32, 64, 64)


def test_rerun_of_a_finished_run_is_a_no_op(finished_run):
    config, output = finished_run
    records = sorted((output.parent / "out.zarr.work" / "status").rglob("*.json"))
    before = {path: path.stat().st_mtime_ns for path in records}
    assert run_cli("run", config) == 0
    assert {path: path.stat().st_mtime_ns for path in records} == before


def test_status_reports_every_stage_done(finished_run, capsys):
    config, _ = finished_run
    assert run_cli("status", config) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].split() == ["stage", "done", "stale", "failed", "pending", "total"]
    rows = {line.split()[0]: [int(value) for value in line.split()[1:]] for line in lines[1:]}
    assert rows["supervoxels"] == [8, 0, 0, 0, 8]
    assert rows["multicut"] == [1, 0, 0, 0, 1]
    assert len(rows) == 8


def test_evaluate_cli_prints_the_metrics_of_the_arrays(finished_run, inputs, tmp_path, capsys):
    _, output = finished_run
    expected = evaluate(read(output, "segmentation"), read(inputs, "neuron_ids"))
    # Today's keys, among the new ones (`emflow evaluate` adds skeleton metrics, errors and a judgement).
    assert run_cli("evaluate", f"{output}:segmentation", f"{inputs}:neuron_ids") == 0
    printed = json.loads(capsys.readouterr().out)
    assert {key: printed[key] for key in expected} == pytest.approx(expected)
    with h5py.File(tmp_path / "groundtruth.h5", "w") as groundtruth:
        groundtruth["labels/neuron_ids"] = read(inputs, "neuron_ids")
    assert run_cli("evaluate", f"{output}:segmentation", f"{tmp_path / 'groundtruth.h5'}:labels/neuron_ids") == 0
    printed = json.loads(capsys.readouterr().out)
    assert {key: printed[key] for key in expected} == pytest.approx(expected)
    assert run_cli("evaluate", f"{output}:segmentation", f"{tmp_path / 'groundtruth.h5'}:labels/missing") == 2


def test_quality_on_the_whole_dev_cube_with_several_blocks_per_axis(tmp_path, data_dir):
    """The issue's quality bar: adapted Rand error <= 0.05 on the FlyEM dev cube, 3 x 3 x 3 blocks."""
    with h5py.File(data_dir / "flyem_medulla_dev" / "volume.h5", "r") as volume:
        cube = {
            key: volume[path][...]
            for key, path in (("raw", "raw"), ("neuron_ids", "labels/neuron_ids"), ("oversegmentation", "labels/oversegmentation"))
        }
    inputs = write_inputs(tmp_path, cube, chunks=(64, 128, 128))
    config = write_config(tmp_path / "config.toml", inputs, tmp_path / "out.zarr", block_shape=(48, 96, 96), halo=(8, 16, 16))
    assert run_cli("run", config, "--workers", "2") == 0
    error, _, _ = adapted_rand_error(read(tmp_path / "out.zarr", "segmentation"), cube["neuron_ids"])
    assert error <= 0.05


def test_given_supervoxels_blockwise_equals_single_block(tmp_path, inputs):
    """With the same supervoxels, several blocks and one block give the same graph, costs and result."""
    outputs = {}
    for name, block_shape in (("blocks", (24, 48, 40)), ("single", (64, 128, 128))):
        config = write_config(
            tmp_path / f"{name}.toml",
            inputs,
            tmp_path / f"{name}.zarr",
            block_shape=block_shape,
            input={"supervoxels_key": "oversegmentation"},
        )
        assert run_cli("run", config) == 0
        outputs[name] = tmp_path / f"{name}.zarr"
    blocks, single = outputs["blocks"], outputs["single"]
    assert np.array_equal(read(blocks, "supervoxels"), read(single, "supervoxels"))
    assert np.array_equal(read(blocks, "graph/edges"), read(single, "graph/edges"))
    np.testing.assert_allclose(read(blocks, "graph/edge_features"), read(single, "graph/edge_features"), rtol=1e-12)
    np.testing.assert_allclose(read(blocks, "graph/edge_costs"), read(single, "graph/edge_costs"), rtol=1e-12)
    assert np.array_equal(read(blocks, "segmentation"), read(single, "segmentation"))
    # Isotropic data, 3D supervoxels: the default weighting "auto" is size weighting.
    features = read(single, "graph/edge_features")
    np.testing.assert_array_equal(read(single, "graph/edge_costs"), edge_costs_from_features(features, beta=0.5, weighting="size"))
    assert not np.array_equal(read(single, "graph/edge_costs"), edge_costs_from_features(features, beta=0.5, weighting="orientation"))


def test_invalidated_blocks_rerun_only_those_blocks(tmp_path, inputs):
    config = write_config(tmp_path / "config.toml", inputs, tmp_path / "out.zarr")
    assert run_cli("run", config) == 0
    reference = read(tmp_path / "out.zarr", "segmentation")
    config_path = str(config.resolve())
    run = load_run(config_path)
    # A finished stage's record keeps its blocks' costs: what every block's record sums up to.
    costs = stage_costs(run, "supervoxels")
    assert costs == stage_target(run, "supervoxels").totals() == task_costs(list(stage_results(run, "supervoxels").values()))
    assert costs["tasks"] == 8 and costs["seconds"] > 0 and costs["peak_rss_bytes"] > 0
    invalidate_records(run, "supervoxels", [3])
    invalidate_records(run, "block_graph", [5])
    assert stage_target(run, "supervoxels").totals() is None, "a stage with a block to run again keeps no totals"
    assert [status.pending for status in workflow_status(config_path) if status.pending] == [1, 1]
    invalidated = time.time()
    assert run_cli("run", config) == 0
    rerun_costs = stage_costs(run, "supervoxels")
    assert rerun_costs == task_costs(list(stage_results(run, "supervoxels").values())) != costs
    # The two blocks, and the records of their two stages as a whole (reopened by the invalidation).
    assert records_since(tmp_path / "out.zarr.work", invalidated) == {
        ("supervoxels", 3),
        ("block_graph", 5),
        ("supervoxels", None),
        ("block_graph", None),
    }
    assert np.array_equal(read(tmp_path / "out.zarr", "segmentation"), reference)


def test_changed_parameter_reprocesses_exactly_the_downstream_stages(tmp_path, inputs):
    config = write_config(tmp_path / "config.toml", inputs, tmp_path / "out.zarr")
    assert run_cli("run", config) == 0
    write_config(tmp_path / "config.toml", inputs, tmp_path / "out.zarr", multicut={"beta": 0.4})
    stale = {status.stage for status in workflow_status(str(config)) if status.stale}
    assert stale == {"edge_costs", "multicut", "write_segmentation"}
    assert all(status.pending == 0 for status in workflow_status(str(config)))

    updated = time.time()
    assert run_cli("run", config) == 0, "new parameters on the same input are reprocessing"
    rewritten = {stage for stage, _ in records_since(tmp_path / "out.zarr.work", updated)}
    assert rewritten == stale
    assert all(status.done == status.total for status in workflow_status(str(config)))
    fresh = write_config(tmp_path / "fresh.toml", inputs, tmp_path / "fresh.zarr", multicut={"beta": 0.4})
    assert run_cli("run", fresh) == 0
    assert np.array_equal(read(tmp_path / "out.zarr", "segmentation"), read(tmp_path / "fresh.zarr", "segmentation"))


def test_killed_run_resumes_to_the_identical_result(tmp_path, inputs):
    """SIGKILL a real `emflow run` mid-way, run again, and compare with an uninterrupted run."""
    reference_config = write_config(tmp_path / "reference.toml", inputs, tmp_path / "reference.zarr")
    assert run_cli("run", reference_config) == 0

    # Supervoxel blocks 0.25 s late (the default watershed otherwise): killed once 2 of the 8 blocks
    # have records, the run has at least 0.75 s of that stage left. Killed at block_graph's second
    # record instead (little work left after it), it had finished before the kill in a CI run.
    config = write_config(
        tmp_path / "config.toml",
        inputs,
        tmp_path / "out.zarr",
        supervoxels={"function": "plugin_functions:slow_supervoxels", "seconds": 0.25},
    )
    status_dir = tmp_path / "out.zarr.work" / "status"
    # Its own session, so that the kill reaches Luigi's worker processes too; tests/ on its path for the plugin.
    process = subprocess.Popen(
        [sys.executable, "-m", "emflow", "run", str(config), "--workers", "2"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [os.path.dirname(__file__), os.environ.get("PYTHONPATH")]))},
    )
    deadline = time.time() + 120
    while time.time() < deadline and len(JournalReader(status_dir / "supervoxels").refresh()) < 2:
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    statuses = {status.stage: status for status in workflow_status(str(config))}
    assert 0 < statuses["supervoxels"].done < statuses["supervoxels"].total, "killed mid-way through the supervoxels"
    assert run_cli("run", config) == 0
    for key in ("supervoxels", "graph/edges", "graph/edge_costs", "segmentation"):
        assert np.array_equal(read(tmp_path / "out.zarr", key), read(tmp_path / "reference.zarr", key)), key


def test_mask_keeps_background_out_of_supervoxels_graph_and_segmentation(tmp_path, flyem_crop):
    inputs = write_inputs(tmp_path, flyem_crop)
    mask = np.ones(flyem_crop["raw"].shape, dtype=np.uint8)
    mask[:, :, :40] = 0  # a region without data, as at the edge of a real acquisition
    write_volume(inputs, "mask", mask, chunks=(32, 64, 64))
    config = write_config(tmp_path / "config.toml", inputs, tmp_path / "out.zarr", input={"mask_key": "mask"})
    assert run_cli("run", config) == 0
    output = tmp_path / "out.zarr"
    supervoxels, segmentation = read(output, "supervoxels"), read(output, "segmentation")
    assert np.all((supervoxels == 0) == (mask == 0))
    assert np.all((segmentation == 0) == (mask == 0))
    assert read(output, "graph/edges")[:, 0].min() > 0, "no edge touches the background"
    nodes = np.unique(read_node_ids(output)[mask == 1])
    assert np.array_equal(nodes, np.arange(1, nodes.size + 1))


def test_anisotropic_voxels_choose_two_dimensional_supervoxels(tmp_path, data_dir):
    """The SOURCE.md's CREMI-like subsampling: every 4th slice, 10 x 10 x 40 nm."""
    with h5py.File(data_dir / "flyem_medulla_dev" / "volume.h5", "r") as volume:
        crop = {
            key: volume[path][::4, :128, :128]
            for key, path in (("raw", "raw"), ("neuron_ids", "labels/neuron_ids"), ("oversegmentation", "labels/oversegmentation"))
        }
    inputs = write_inputs(tmp_path, crop, chunks=(16, 64, 64))
    config = write_config(
        tmp_path / "config.toml",
        inputs,
        tmp_path / "out.zarr",
        block_shape=(16, 64, 64),
        halo=(2, 8, 8),
        input={"resolution": [40.0, 10.0, 10.0]},
    )
    assert run_cli("run", config) == 0
    supervoxels = read(tmp_path / "out.zarr", "supervoxels")
    for z in range(1, supervoxels.shape[0]):
        assert not np.intersect1d(supervoxels[z - 1], supervoxels[z]).size, f"a supervoxel spans slices {z - 1} and {z}"
    segmentation = read(tmp_path / "out.zarr", "segmentation")
    assert any(np.intersect1d(segmentation[z - 1], segmentation[z]).size for z in range(1, segmentation.shape[0])), (
        "the multicut links slices"
    )


def test_a_block_task_runs_on_its_own_as_a_luigi_task(tmp_path, inputs):
    config = write_config(tmp_path / "config.toml", inputs, tmp_path / "out.zarr", scheduling={"block_groups": 2})
    assert run_cli("run", config) == 0
    reference = read(tmp_path / "out.zarr", "segmentation")
    task = SEGMENTATION.block_task(str(config.resolve()), "write_segmentation", 3)
    invalidate_records(load_run(str(config.resolve())), "write_segmentation", [3])
    assert not task.complete()
    assert luigi.build([task], local_scheduler=True, log_level="WARNING")
    assert task.complete()
    assert (tmp_path / "out.zarr.work" / "status" / "write_segmentation" / "3-4.jsonl").exists(), "a lone block keeps its own journal"
    # Its stage was reopened by the invalidation; the next run only closes it again.
    invalidated = time.time()
    assert run_cli("run", config) == 0
    assert records_since(tmp_path / "out.zarr.work", invalidated) == {("write_segmentation", None)}
    assert np.array_equal(read(tmp_path / "out.zarr", "segmentation"), reference)


def test_linked_blocks_are_those_whose_write_regions_meet_the_read_region(tmp_path, inputs):
    # Blocks that do not divide the volume (clipped at its end), a halo, and pyramid levels: every kind of link.
    config = write_config(
        tmp_path / "config.toml", inputs, tmp_path / "out.zarr", block_shape=(12, 40, 48), halo=(2, 4, 4), output={"pyramid": True}
    )
    run = load_run(str(config.resolve()))
    links = 0
    for spec in run.stages:
        for spec_read in run.reads(spec):
            linked = run.linked_blocks(spec, spec_read)
            if linked is None:
                continue
            producer = run.producer(spec_read)
            write = next(write for write in producer.writes if write.kind == spec_read.kind and write.name == spec_read.name)
            written = run.regions(producer, write.region)
            parts = run.read_boxes(spec, spec_read)
            # A faces read (the block graph's) reads the block's box and the slabs beyond its upper
            # faces: blocks that only the region's edges and corners meet are not read.
            assert len(parts) == (4 if spec_read.faces else 1)
            for block_id in range(len(parts[0])):
                meets = np.zeros(len(written), dtype=bool)
                for boxes in parts:
                    region = boxes[block_id]
                    meets |= (
                        (written[:, 0] < region[1]).all(axis=1) & (region[0] < written[:, 1]).all(axis=1) & (region[1] > region[0]).all()
                    )
                assert np.array_equal(linked[block_id], np.flatnonzero(meets)), (spec.name, spec_read.name, block_id)
                assert not linked[block_id].flags.writeable
                links += 1
    # The block graph's first block reads the supervoxels of itself and of the blocks beyond its
    # three upper faces, not those beyond its upper edges and corner.
    grid = run.geometry.blocking.blocks_per_axis
    graph = run.stage("block_graph")
    faces = [int(np.ravel_multi_index(position, grid)) for position in ((0, 0, 0), (0, 0, 1), (0, 1, 0), (1, 0, 0))]
    assert run.linked_blocks(graph, next(read for read in graph.reads if read.name == "supervoxels"))[0].tolist() == sorted(faces)
    assert {spec.name for spec in run.stages if any(run.linked_blocks(spec, other) is not None for other in run.reads(spec))} >= {
        "block_graph",
        "write_segmentation",
        "pyramid_s1",
        "pyramid_s2",
    }
    assert links > 150


@pytest.mark.parametrize(
    ("resolution", "block_shape", "halo"),
    [((10.0, 10.0, 10.0), (32, 64, 64), (0, 0, 0)), ((40.0, 10.0, 10.0), (8, 64, 64), (0, 8, 8))],
    ids=["3d-supervoxels", "2d-supervoxels"],
)
def test_auto_halo_follows_the_supervoxels(tmp_path, inputs, resolution, block_shape, halo):
    # None with 3D supervoxels; with per-section ones none along z and an eighth of the block in y and x.
    config = write_config(
        tmp_path / "config.toml",
        inputs,
        tmp_path / "out.zarr",
        block_shape=block_shape,
        halo="auto",
        input={"resolution": list(resolution)},
    )
    assert load_run(str(config)).geometry.halo == halo
