"""The hierarchical multicut run as Luigi tasks: exactly the in-memory hierarchy, close to the global solve."""

from __future__ import annotations

import numpy as np
import pytest
import zarr
from workflow_helpers import as_segment_ids, read, read_node_ids, run_cli, write_config, write_inputs

from emflow.blocking import Blocking
from emflow.hierarchical_multicut import hierarchical_multicut, node_block_ids_from_counts
from emflow.multicut import multicut_energy, multicut_problem, multicut_solver
from emflow.tasks.adapter import stage_results
from emflow.workflows.segmentation import load_run
from emflow.workflows.status import workflow_status

BLOCK_SHAPE = (16, 32, 32)  # 4 x 4 x 4 blocks on the 64 x 128 x 128 crop, so that 2 scales mean something
HALO = (4, 8, 8)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, flyem_crop):
    return write_inputs(tmp_path_factory.mktemp("inputs"), flyem_crop)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, inputs):
    """The same input solved globally and with 1 and 2 scales; output path per n_scales."""
    folder = tmp_path_factory.mktemp("runs")
    outputs = {}
    for n_scales in (0, 1, 2):
        config = write_config(
            folder / f"s{n_scales}.toml",
            inputs,
            folder / f"s{n_scales}.zarr",
            block_shape=BLOCK_SHAPE,
            halo=HALO,
            multicut={"n_scales": n_scales},
        )
        assert run_cli("run", config, "--workers", "2") == 0
        outputs[n_scales] = (config, folder / f"s{n_scales}.zarr")
    return outputs


def _energy(output) -> float:
    return zarr.open_group(str(output), mode="r")["graph/node_labels"].attrs["energy"]


@pytest.mark.parametrize("n_scales", [1, 2])
def test_blockwise_tasks_reproduce_the_in_memory_hierarchy_exactly(runs, n_scales):
    config, output = runs[n_scales]
    edges, edge_costs = read(output, "graph/edges"), read(output, "graph/edge_costs")
    blocking = Blocking(read(output, "supervoxels").shape, BLOCK_SHAPE)
    results = stage_results(load_run(str(config.resolve())), "supervoxels")
    node_block_ids = node_block_ids_from_counts([results[block]["number_of_supervoxels"] for block in range(blocking.number_of_blocks)])
    expected = hierarchical_multicut(
        multicut_problem(len(node_block_ids), edges, edge_costs),
        node_block_ids,
        blocking.blocks_per_axis,
        n_scales=n_scales,
        solver=multicut_solver(),
    )
    expected = as_segment_ids(output, expected)
    assert np.array_equal(read(output, "graph/node_labels"), expected)
    assert np.array_equal(read(output, "segmentation"), expected[read_node_ids(output)])


@pytest.mark.parametrize("n_scales", [1, 2])
def test_hierarchical_energy_is_within_half_a_percent_of_the_global_solve(runs, n_scales):
    _, global_output = runs[0]
    _, output = runs[n_scales]
    assert np.array_equal(read(output, "graph/edges"), read(global_output, "graph/edges"))
    global_energy, energy = _energy(global_output), _energy(output)
    assert energy == pytest.approx(
        multicut_energy(read(output, "graph/edges"), read(output, "graph/edge_costs"), read(output, "graph/node_labels"))
    )
    assert (energy - global_energy) / abs(global_energy) <= 0.005


def test_each_scale_is_a_stage_with_a_task_per_block(runs):
    config, output = runs[2]
    names = [spec.name for spec in load_run(str(config.resolve())).stages]
    assert names[names.index("edge_costs") + 1 : names.index("multicut")] == [
        "multicut_problem_s0",
        "subproblems_s0",
        "multicut_problem_s1",
        "subproblems_s1",
        "multicut_problem_s2",
    ]
    totals = {status.stage: status.total for status in workflow_status(str(config.resolve()))}
    assert totals["subproblems_s0"] == 64 and totals["subproblems_s1"] == 8
    assert all(status.done == status.total for status in workflow_status(str(config.resolve())))
    # A sub-problem task cuts only edges inside its own block.
    problem = output.parent / f"{output.name}.work" / "global" / "multicut_problem_s0"
    node_block_ids = np.load(problem / "node_block_ids.npy")
    edges = np.load(problem / "edges.npy")
    for block_id in (0, 21, 63):
        partial = output.parent / f"{output.name}.work" / "blocks" / "subproblems_s0" / f"{block_id}.npz"
        cut = np.load(partial)["cut_edge_ids"]
        assert np.all(node_block_ids[edges[cut].astype(np.int64)] == block_id)


def test_changing_n_scales_makes_only_the_multicut_and_later_stale(tmp_path, inputs):
    config = write_config(tmp_path / "config.toml", inputs, tmp_path / "out.zarr", block_shape=BLOCK_SHAPE, halo=HALO)
    assert run_cli("run", config) == 0
    write_config(tmp_path / "config.toml", inputs, tmp_path / "out.zarr", block_shape=BLOCK_SHAPE, halo=HALO, multicut={"n_scales": 1})
    statuses = {status.stage: status for status in workflow_status(str(config.resolve()))}
    assert {stage for stage, status in statuses.items() if status.stale} == {"multicut", "write_segmentation"}
    assert {stage for stage, status in statuses.items() if status.pending} == {
        "multicut_problem_s0",
        "subproblems_s0",
        "multicut_problem_s1",
    }
    assert run_cli("run", config) == 0
    assert all(status.done == status.total for status in workflow_status(str(config.resolve())))
