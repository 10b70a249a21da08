"""The hierarchical multicut of Pape et al. (2017), with `[multicut] n_scales` > 0, as stages.

For each scale s = 0 .. n_scales - 1, `multicut_problem_s<s>` holds the problem at scale s with the
edges inside each block (2**s base blocks per axis) grouped by block; `subproblems_s<s>` solves one
block's sub-problem per task and keeps the ids of the edges it cuts; `multicut_problem_s<s+1>`
contracts every inner edge no sub-problem cut (`emflow.hierarchical_multicut.next_scale`). The
multicut stage then solves the last, small problem and maps its labels back. These are the steps of
the in-memory `emflow.hierarchical_multicut.hierarchical_multicut`, which they reproduce exactly;
plain and lifted problems take the same path.

A block task memory-maps its problem and reads only its own block's rows, so its memory depends on
the block, not on the volume; the global tasks hold O(edges).
"""

from __future__ import annotations

import math

import numpy as np

from emflow.blocking import Blocking
from emflow.hierarchical_multicut import (
    Subproblem,
    coarse_blocks_per_axis,
    decompose,
    first_block_of_nodes,
    next_scale,
    node_block_ids_from_counts,
    solve_subproblem,
)
from emflow.multicut import MulticutProblem, multicut_problem, multicut_solver

from .context import BlockContext, GlobalContext, Run
from .spec import Read, StageSpec, Write


def problem_stage(scale: int) -> str:
    return f"multicut_problem_s{scale}"


def subproblem_stage(scale: int) -> str:
    return f"subproblems_s{scale}"


def load_problem(stage: GlobalContext, scale: int) -> MulticutProblem:
    """The (reduced) problem of scale `scale` from its stage's bundle."""
    name = problem_stage(scale)
    arrays = [stage.read_bundle(name, field) for field in ("edges", "edge_costs")]
    if stage.config.lifted_multicut:
        arrays += [stage.read_bundle(name, field) for field in ("lifted_edges", "lifted_costs")]
    return multicut_problem(len(stage.read_bundle(name, "node_block_ids")), *arrays)


def graph_problem(stage: GlobalContext) -> MulticutProblem:
    """The multicut problem of the region graph: local edges and costs, and lifted ones for a lifted run."""
    edges = stage.read_table("graph/edges")
    number_of_nodes = int(stage.table_attributes("graph/edges")["number_of_nodes"])
    lifted = (
        [stage.read_bundle("lifted_edges", field) for field in ("lifted_edges", "lifted_costs")] if stage.config.lifted_multicut else []
    )
    return multicut_problem(number_of_nodes, edges, stage.read_table("graph/edge_costs"), *lifted)


def _base_node_block_ids(stage: GlobalContext, number_of_nodes: int, given_supervoxels: bool) -> np.ndarray:
    if not given_supervoxels:
        results = stage.results("supervoxels")
        return node_block_ids_from_counts([results[block_id]["number_of_supervoxels"] for block_id in sorted(results)])
    # Given supervoxels may span blocks: each belongs to the first block that holds it.
    global_ids = stage.read_bundle("supervoxel_ids", "ids")
    return first_block_of_nodes(number_of_nodes, (np.searchsorted(global_ids, ids) + 1 for (ids,) in stage.partials("supervoxels", "ids")))


def _problem(scale: int, given_supervoxels: bool):
    def run(stage: GlobalContext) -> dict:
        grid = stage.geometry.blocking.blocks_per_axis
        arrays: dict[str, np.ndarray] = {}
        if scale == 0:
            problem = graph_problem(stage)
            node_block_ids = _base_node_block_ids(stage, problem.number_of_nodes, given_supervoxels)
        else:
            previous = load_problem(stage, scale - 1)
            cut_edge_ids = np.concatenate([cut for (cut,) in stage.partials(subproblem_stage(scale - 1), "cut_edge_ids")])
            previous_block_ids = stage.read_bundle(problem_stage(scale - 1), "node_block_ids")
            problem, arrays["node_mapping"], node_block_ids = next_scale(previous, cut_edge_ids, previous_block_ids, grid, scale - 1)
        decomposition = decompose(problem, node_block_ids, math.prod(coarse_blocks_per_axis(grid, scale)))
        if problem.lifted_edges is not None and problem.lifted_costs is not None:
            assert decomposition.lifted_edge_ids is not None and decomposition.lifted_offsets is not None
            arrays.update(
                lifted_edges=problem.lifted_edges,
                lifted_costs=problem.lifted_costs,
                lifted_block_offsets=decomposition.lifted_offsets,
                # Each block's rows side by side, so that a block task reads one contiguous slice.
                inner_lifted_edges=problem.lifted_edges[decomposition.lifted_edge_ids],
                inner_lifted_costs=problem.lifted_costs[decomposition.lifted_edge_ids],
            )
        arrays.update(
            edges=problem.edges,
            edge_costs=problem.edge_costs,
            node_block_ids=node_block_ids,
            inner_edge_ids=decomposition.edge_ids,
            block_offsets=decomposition.offsets,
            inner_edges=problem.edges[decomposition.edge_ids],
            inner_edge_costs=problem.edge_costs[decomposition.edge_ids],
        )
        stage.save_bundle(**arrays)
        stage.log.info(
            "scale %d: %d nodes, %d edges, %d of them inside blocks",
            scale,
            problem.number_of_nodes,
            len(problem.edges),
            len(decomposition.edge_ids),
        )
        return {
            "number_of_nodes": int(problem.number_of_nodes),
            "number_of_edges": int(len(problem.edges)),
            "inner_edges": int(len(decomposition.edge_ids)),
        }

    return run


def _subproblem(scale: int):
    def run(block: BlockContext) -> dict:
        name = problem_stage(scale)

        def rows(offsets_field: str, *fields: str) -> list[np.ndarray]:
            offsets = block.read_bundle(name, offsets_field, mmap=True)
            selection = slice(int(offsets[block.block_id]), int(offsets[block.block_id + 1]))
            return [np.asarray(block.read_bundle(name, field, mmap=True)[selection]) for field in fields]

        edges, edge_costs, edge_ids = rows("block_offsets", "inner_edges", "inner_edge_costs", "inner_edge_ids")
        lifted = rows("lifted_block_offsets", "inner_lifted_edges", "inner_lifted_costs") if block.config.lifted_multicut else []
        section = block.config.multicut
        cut = solve_subproblem(Subproblem(edges, edge_costs, *lifted), multicut_solver(section.solver, seed=section.seed))
        block.save_partial(cut_edge_ids=edge_ids[cut])
        return {"inner_edges": int(len(edges)), "cut_edges": int(len(cut))}

    return run


def _scale_blocking(scale: int):
    def blocking(run: Run) -> Blocking:
        base = run.geometry.blocking
        return Blocking(base.shape, tuple(min(size * 2**scale, extent) for size, extent in zip(base.block_shape, base.shape)))

    return blocking


def hierarchical_stages(n_scales: int, *, lifted: bool, given_supervoxels: bool) -> list[StageSpec]:
    """The problem and sub-problem stages of scales 0 .. n_scales - 1, and the problem of scale n_scales."""
    stages = []
    for scale in range(n_scales + 1):
        if scale == 0:
            reads = [Read.table("graph/edges"), Read.table("graph/edge_costs")]
            reads += [Read.bundle("lifted_edges")] if lifted else []
            reads += [Read.partials("supervoxels"), Read.bundle("supervoxel_ids")] if given_supervoxels else [Read.results("supervoxels")]
        else:
            reads = [Read.bundle(problem_stage(scale - 1)), Read.partials(subproblem_stage(scale - 1))]
        stages.append(
            StageSpec(
                name=problem_stage(scale),
                blockwise=False,
                reads=tuple(reads),
                writes=(Write.bundle(),),
                run=_problem(scale, given_supervoxels),
            )
        )
        if scale < n_scales:
            stages.append(
                StageSpec(
                    name=subproblem_stage(scale),
                    blockwise=True,
                    reads=(Read.bundle(problem_stage(scale)),),
                    writes=(Write.partials(None),),
                    config=("multicut.solver", "multicut.seed"),
                    blocking=_scale_blocking(scale),
                    run=_subproblem(scale),
                )
            )
    return stages
