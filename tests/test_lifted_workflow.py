"""Lifted multicut in the workflow: lifted edges from a label volume, solved globally or hierarchically."""

from __future__ import annotations

import numpy as np
import pytest
import zarr
from workflow_helpers import RESOLUTION, as_segment_ids, read, read_node_ids, run_cli, write_config, write_inputs

from emflow.blocking import Blocking
from emflow.boundaries import boundaries_from_labels
from emflow.evaluation import adapted_rand_error
from emflow.hierarchical_multicut import hierarchical_multicut, node_block_ids_from_counts
from emflow.labels import label_overlaps, majority_labels
from emflow.lifted_edges import lifted_edges_from_node_labels
from emflow.multicut import multicut_problem, multicut_solver, solve_lifted_multicut
from emflow.storage.volumes import write_volume
from emflow.tasks.adapter import stage_results
from emflow.workflows.segmentation import load_run

BLOCK_SHAPE = (32, 64, 64)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, flyem_crop):
    path = write_inputs(tmp_path_factory.mktemp("inputs"), flyem_crop)
    # A noisier boundary map than the other tests use, on which the plain multicut splits neurons.
    noisy = boundaries_from_labels(flyem_crop["neuron_ids"], sigma=1.0, noise=0.3, seed=0)
    write_volume(path, "noisy_boundaries", noisy, resolution=RESOLUTION, chunks=(32, 64, 64))
    # Sparse evidence, as from proofreading: the ground-truth ids of every other z-slab of 8 slices.
    sparse = flyem_crop["neuron_ids"].copy()
    for z in range(8, sparse.shape[0], 16):
        sparse[z : z + 8] = 0
    zarr.open_group(str(path), mode="a").create_array("sparse_labels", data=sparse.astype(np.uint32), chunks=(32, 64, 64))
    return path


@pytest.fixture(scope="module")
def runs(tmp_path_factory, inputs):
    folder = tmp_path_factory.mktemp("runs")
    outputs = {}
    for name, sections in {
        "plain": {},
        "lifted": {"input": {"lifted_labels_key": "sparse_labels"}},
        "lifted_s1": {"input": {"lifted_labels_key": "sparse_labels"}, "multicut": {"n_scales": 1}},
    }.items():
        sections.setdefault("input", {})["boundaries_key"] = "noisy_boundaries"
        config = write_config(folder / f"{name}.toml", inputs, folder / f"{name}.zarr", block_shape=BLOCK_SHAPE, **sections)
        assert run_cli("run", config, "--workers", "2") == 0
        outputs[name] = (config, folder / f"{name}.zarr")
    return outputs


def test_lifted_edges_equal_those_computed_on_the_whole_volume(runs, inputs):
    _, output = runs["lifted"]
    supervoxels = read_node_ids(output)
    edges = read(output, "graph/edges")
    number_of_nodes = int(supervoxels.max()) + 1
    node_labels = majority_labels(number_of_nodes, *label_overlaps(supervoxels, read(inputs, "sparse_labels")))
    lifted_edges, lifted_costs = lifted_edges_from_node_labels(number_of_nodes, edges, node_labels, graph_depth=3, weight=1.0)
    assert len(lifted_edges) > 0 and (lifted_costs < 0).any() and (lifted_costs > 0).any()
    assert np.array_equal(read(output, "graph/lifted_edges"), lifted_edges)
    assert np.array_equal(read(output, "graph/lifted_costs"), lifted_costs)


def test_global_lifted_solve_equals_the_in_memory_solver(runs):
    _, output = runs["lifted"]
    problem = [read(output, key) for key in ("graph/edges", "graph/edge_costs", "graph/lifted_edges", "graph/lifted_costs")]
    number_of_nodes = int(read_node_ids(output).max()) + 1
    expected = solve_lifted_multicut(number_of_nodes, *problem)
    assert np.array_equal(read(output, "graph/node_labels"), as_segment_ids(output, expected))
    energy = zarr.open_group(str(output), mode="r")["graph/node_labels"].attrs["energy"]
    assert energy == pytest.approx(multicut_problem(number_of_nodes, *problem).energy(expected))


def test_hierarchical_lifted_tasks_reproduce_the_in_memory_hierarchy(runs):
    config, output = runs["lifted_s1"]
    problem = [read(output, key) for key in ("graph/edges", "graph/edge_costs", "graph/lifted_edges", "graph/lifted_costs")]
    blocking = Blocking(read(output, "supervoxels").shape, BLOCK_SHAPE)
    results = stage_results(load_run(str(config.resolve())), "supervoxels")
    node_block_ids = node_block_ids_from_counts([results[block]["number_of_supervoxels"] for block in range(blocking.number_of_blocks)])
    expected = hierarchical_multicut(
        multicut_problem(len(node_block_ids), *problem), node_block_ids, blocking.blocks_per_axis, n_scales=1, solver=multicut_solver()
    )
    assert np.array_equal(read(output, "graph/node_labels"), as_segment_ids(output, expected))
    names = [spec.name for spec in load_run(str(config.resolve())).stages]
    assert names.index("lifted_edges") < names.index("multicut_problem_s0")


def test_lifted_evidence_repairs_splits_of_the_plain_multicut(runs, flyem_crop):
    scores = {name: adapted_rand_error(read(output, "segmentation"), flyem_crop["neuron_ids"]) for name, (_, output) in runs.items()}
    (plain_error, _, plain_recall), (lifted_error, _, lifted_recall) = scores["plain"], scores["lifted"]
    assert lifted_error < plain_error, scores
    assert lifted_recall > plain_recall, "fewer false splits"
