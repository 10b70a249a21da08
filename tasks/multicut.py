"""The multicut: each supervoxel (graph node) gets its segment id.

With `[multicut] n_scales` > 0 it solves the problem the hierarchy reduced the graph to
(`emflow.tasks.hierarchical_multicut`) and maps the labels back; plain and lifted problems alike.
"""

from __future__ import annotations

import numpy as np

from emflow.config import resolve_function
from emflow.hierarchical_multicut import project_node_labels
from emflow.multicut import Solver, multicut_solver, plugin_solver

from .context import GlobalContext
from .hierarchical_multicut import graph_problem, load_problem, problem_stage
from .spec import Read, StageSpec, Write
from .supervoxels import NODE_ID_READS, segment_labels


def solver(config) -> Solver:
    """The configured solver: a built-in one, or the `[multicut] function` plugin."""
    section = config.multicut
    if not section.uses_plugin:
        return multicut_solver(section.solver, seed=section.seed)
    return plugin_solver(resolve_function(section.function, "multicut.function"), section.parameters(), section.function)


def _multicut(stage: GlobalContext) -> dict:
    n_scales = stage.config.multicut.n_scales
    problem = graph_problem(stage)
    if n_scales:
        # The problem the hierarchy reduced the graph to, solved here and mapped back.
        reduced = load_problem(stage, n_scales)
        stage.log.info("solving the problem reduced to %d nodes, %d edges", reduced.number_of_nodes, len(reduced.edges))
        mappings = [stage.read_bundle(problem_stage(scale), "node_mapping") for scale in range(1, n_scales + 1)]
        node_labels = project_node_labels(solver(stage.config)(reduced), mappings)
    else:
        node_labels = solver(stage.config)(problem)
    energy = problem.energy(node_labels)
    node_labels = segment_labels(stage, node_labels)
    stage.write_table("graph/node_labels", node_labels, {"energy": energy})
    stage.save_bundle(node_labels=node_labels)
    number_of_segments = int(np.unique(node_labels[1:]).size)
    stage.log.info("%d segments, energy %.6g", number_of_segments, energy)
    return {"number_of_segments": number_of_segments, "energy": energy}


def multicut_stage(n_scales: int, *, lifted: bool) -> StageSpec:
    """The global multicut, of the graph or (n_scales > 0) of the problem reduced to the last scale."""
    reads = [Read.table("graph/edges"), Read.table("graph/edge_costs"), *NODE_ID_READS]
    reads += [Read.bundle("lifted_edges")] if lifted else []
    reads += [Read.bundle(problem_stage(scale)) for scale in range(1, n_scales + 1)]
    return StageSpec(
        name="multicut",
        blockwise=False,
        reads=tuple(reads),
        writes=(Write.table("graph/node_labels"), Write.bundle()),
        config=("multicut",),
        run=_multicut,
    )
